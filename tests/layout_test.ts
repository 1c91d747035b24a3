/**
 * The layout the collection promises (README, "Layout"): the root holds only
 * the runnable scripts, each with its shebang and its run bit in git; each
 * model script shows its own model (where it listens, its accept loop, where
 * its process or thread is made, and the echo) in its own file; lib/ is split
 * into small modules.
 *
 * @module
 */
import assert from "node:assert/strict";
import { ROOT, SCRIPTS } from "./harness.ts";

/** What each model must call itself, in its code (comments aside). */
const PRIMITIVES: Record<string, [string, RegExp][]> = {
  "iterative.ts": [
    ["Deno.listen", /Deno\.listen\(/],
    ["accept", /\.accept\(\)/],
    ["an awaited serve", /\bawait server\.serve\(/],
    ["echo", /\becho\(/],
  ],
  "evented.ts": [
    ["Deno.listen", /Deno\.listen\(/],
    ["accept", /\.accept\(\)/],
    ["a serve not awaited", /^\s+server\.serve\(/m],
    ["echo", /\becho\(/],
  ],
  "forked.ts": [
    ["Deno.listen", /Deno\.listen\(/],
    ["accept", /\.accept\(\)/],
    ["new Deno.Command", /new Deno\.Command\(/],
    ["echo", /\becho\(/],
  ],
  "threaded.ts": [
    ["Deno.listen", /Deno\.listen\(at\)/],
    [
      "Deno.listen with reusePort",
      /Deno\.listen\(\{ \.\.\.at, reusePort: true \}\)/,
    ],
    ["accept", /\.accept\(\)/],
    ["new Worker", /new Worker\(/],
    ["echo", /\becho\(/],
  ],
  "prefork.ts": [
    ["new Deno.Command", /new Deno\.Command\(/],
    [
      "Deno.listen with reusePort",
      /Deno\.listen\(\{ \.\.\.at, reusePort: true \}\)/,
    ],
    ["accept", /\.accept\(\)/],
    ["echo", /\becho\(/],
  ],
  "cluster.ts": [
    ["cluster.fork", /cluster\.fork\(/],
    ["net.createServer", /net\.createServer\(/],
  ],
  "udp_echo.ts": [
    ["Deno.listenDatagram", /Deno\.listenDatagram\(/],
    ["receive", /\.receive\(/],
    ["send", /\.send\(/],
  ],
};

/** `source` without its comments: what runs. */
function code(source: string): string {
  return source.replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/.*$/gm, "");
}

async function git(...args: string[]): Promise<string> {
  const output = await new Deno.Command("git", {
    args,
    cwd: ROOT,
    stdout: "piped",
  }).output();
  return new TextDecoder().decode(output.stdout);
}

Deno.test("the root holds only the runnable scripts, each with a shebang and its run bit in git", async () => {
  const tracked = (await git("ls-files", "-s", "--", "*.ts")).split("\n")
    .filter(Boolean).map((line) => line.split(/\s+/))
    .filter(([, , , path]) => !path.includes("/"));
  assert.deepEqual(
    tracked.map(([, , , path]) => path).filter((p) => !SCRIPTS.includes(p)),
    [],
    "modules at the root belong in lib/",
  );
  for (const [mode, , , path] of tracked) {
    assert.equal(mode, "100755", `${path} has no run bit in git`);
    const source = await Deno.readTextFile(`${ROOT}${path}`);
    assert.ok(source.startsWith("#!/usr/bin/env -S deno run"), path);
  }
});

for (const [model, calls] of Object.entries(PRIMITIVES)) {
  const names = calls.map(([name]) => name).join(", ");
  Deno.test(`${model} shows its model: it calls ${names} itself`, async () => {
    const source = code(await Deno.readTextFile(`${ROOT}${model}`));
    for (const [name, call] of calls) assert.match(source, call, name);
  });
}

Deno.test("no script line is over 100 columns, no lib/ module over 400 lines", async () => {
  for (const script of SCRIPTS) {
    let source: string;
    try {
      source = await Deno.readTextFile(`${ROOT}${script}`);
    } catch {
      continue; // not written yet
    }
    // The shebang aside: it carries the flags a copy runs with.
    source.split("\n").slice(1).forEach((line, i) =>
      assert.ok(line.length <= 100, `${script}:${i + 2} has ${line.length}`)
    );
  }
  for (const path of (await git("ls-files", "lib/")).split("\n")) {
    if (!path.endsWith(".ts")) continue;
    const lines = (await Deno.readTextFile(`${ROOT}${path}`)).split("\n");
    assert.ok(lines.length <= 400, `${path} has ${lines.length} lines`);
  }
});

Deno.test("docs/models point at the right lines: each [`call`](../../SCRIPT.ts#LN) is on line N", async () => {
  let links = 0;
  for await (const entry of Deno.readDir(`${ROOT}docs/models`)) {
    const page = await Deno.readTextFile(`${ROOT}docs/models/${entry.name}`);
    const link = /\[`([^`]+)`[^\]]*\]\(\.\.\/\.\.\/([\w.]+\.ts)#L(\d+)\)/g;
    for (const [, call, script, line] of page.matchAll(link)) {
      const lines = (await Deno.readTextFile(`${ROOT}${script}`)).split("\n");
      const text = lines[Number(line) - 1] ?? "";
      const comment = /^\s*(\/\/|\*|\/\*)/.test(text);
      assert.ok(
        text.includes(call) && !comment,
        `${entry.name}: ${script}:${line} is "${text.trim()}", not ${call}`,
      );
      links++;
    }
  }
  assert.ok(links >= 20, `only ${links} links to the scripts' lines`);
});
