/**
 * Every model reads like a textbook listing, and runs when copied: its
 * header names exactly the modules to copy with it, and a directory holding
 * only those files (no deno.json) runs it by its shebang line.
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  ROOT,
  roundTripText,
  SCRIPTS,
  serverTest,
  startServer,
  withTimeout,
} from "./harness.ts";

const MODELS = SCRIPTS.slice(0, 7).filter((model) => exists(`${ROOT}${model}`));

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** The files and folders (`lib/`) a script's header says to copy with it. */
function copyWith(source: string): string[] {
  const line = source.match(/^ \* Copy with: (.+)$/m);
  assert.ok(line, "the header has no 'Copy with:' line");
  return line[1].match(/[\w.\/-]+(\.ts|\/)(?=[\s,]|$)/g) ?? [];
}

/** The files git tracks under each of `named` (a file, or a folder `dir/`). */
async function trackedUnder(named: string[]): Promise<string[]> {
  const output = await new Deno.Command("git", {
    args: ["ls-files", "--", ...named],
    cwd: ROOT,
    stdout: "piped",
  }).output();
  return new TextDecoder().decode(output.stdout).split("\n").filter(Boolean);
}

/** The project's own modules that `script` imports, directly or not. */
async function localImports(script: string): Promise<string[]> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", script],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(output.success, new TextDecoder().decode(output.stderr));
  const graph = JSON.parse(new TextDecoder().decode(output.stdout));
  const root = new URL(".", `file://${ROOT}`).href;
  return graph.modules
    .map((module: { specifier: string }) => module.specifier)
    .filter((specifier: string) => specifier.startsWith(root))
    .map((specifier: string) => specifier.slice(root.length))
    .filter((path: string) => path !== script);
}

for (const model of MODELS) {
  serverTest(
    `${model} fits a screen or two: at most ~180 lines, a header of at most ~25`,
    async () => {
      const source = await Deno.readTextFile(`${ROOT}${model}`);
      const lines = source.trimEnd().split("\n");
      const header = lines.findIndex((line) => line === " */") - 1;
      assert.ok(lines.length <= 180, `${lines.length} lines`);
      assert.ok(header <= 27, `a header of ${header} lines`);
    },
  );

  serverTest(
    `${model}: what its header says to copy (lib/) is all it imports, and a copy made as git has the files, run bit included, runs by its shebang and echoes`,
    async () => {
      const source = await Deno.readTextFile(`${ROOT}${model}`);
      const named = copyWith(source);
      const imports = await localImports(model);
      const isNamed = (path: string) =>
        named.some((name) =>
          name.endsWith("/") ? path.startsWith(name) : path === name
        );
      // Everything it imports is named, and everything named is imported from.
      assert.deepEqual(imports.filter((path) => !isNamed(path)), []);
      for (const name of named) {
        assert.ok(
          imports.some((path) => path.startsWith(name)),
          `${name} unused`,
        );
      }
      const files = (await trackedUnder(named)).filter((path) =>
        path.endsWith(".ts")
      );
      const dir = await Deno.makeTempDir({ prefix: "copy-test-" });
      try {
        // Copied as git has them: the script's run bit included, no chmod.
        for (const file of [model, ...files]) {
          await Deno.mkdir(`${dir}/${file}`.replace(/\/[^/]+$/, ""), {
            recursive: true,
          });
          await Deno.copyFile(`${ROOT}${file}`, `${dir}/${file}`);
        }
        await using server = await startServer(model, ["0"], { copyIn: dir });
        if (model === "udp_echo.ts") {
          const socket = Deno.listenDatagram({
            transport: "udp",
            hostname: "127.0.0.1",
            port: 0,
          });
          try {
            await socket.send(new TextEncoder().encode("copied"), {
              transport: "udp",
              hostname: server.host,
              port: server.port,
            });
            const [answer] = await withTimeout(
              socket.receive(),
              10_000,
              "the echo",
            );
            assert.equal(new TextDecoder().decode(answer), "copied");
          } finally {
            socket.close();
          }
        } else {
          using conn = await server.connect();
          assert.equal(await roundTripText(conn, "copied\n"), "copied\n");
        }
        server.kill("SIGTERM");
        const exit = await server.waitForExit(15_000);
        assert.equal(exit.code, 0, exit.stderr);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  );
}
