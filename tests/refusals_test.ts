/**
 * Refusals that name their real cause (issue #21): a --unix path where
 * something other than a socket stands says what stands there and leaves it
 * as it was, and "address in use" is kept for a live server; a pool that
 * `ulimit -n` cannot hold says so, and how many would fit.
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  assertNoStackTrace,
  runScript,
  Script,
  serverTest,
  startServer,
} from "./harness.ts";

/** What a test compares to show a path was left untouched. */
async function snapshot(path: string): Promise<string> {
  const info = await Deno.lstat(path);
  const kind = info.isSymlink
    ? `symlink to ${await Deno.readLink(path)}`
    : info.isFile
    ? `file: ${await Deno.readTextFile(path)}`
    : info.isFifo
    ? "fifo"
    : info.isDirectory
    ? `directory: ${[...Deno.readDirSync(path)].map((e) => e.name)}`
    : "other";
  return JSON.stringify([kind, info.ino, info.mode, info.size, info.mtime]);
}

/**
 * A temp directory holding one of each thing a --unix path may find that is
 * not a socket, with the words a server must use for it.
 */
async function notSockets(dir: string): Promise<[string, string][]> {
  await Deno.mkdir(`${dir}/directory`);
  await Deno.mkdir(`${dir}/directory/inside`);
  await Deno.writeTextFile(`${dir}/file`, "user data\n");
  const mkfifo = await new Deno.Command("mkfifo", { args: [`${dir}/fifo`] })
    .output();
  assert.ok(mkfifo.success, new TextDecoder().decode(mkfifo.stderr));
  await Deno.symlink("file", `${dir}/link`);
  await Deno.symlink("nowhere", `${dir}/dangling`);
  return [
    [`${dir}/directory`, "is a directory"],
    [`${dir}/file`, "is a regular file"],
    [`${dir}/fifo`, "is a FIFO"],
    [`${dir}/link`, "is a symlink to file"],
    [`${dir}/dangling`, "is a dangling symlink to nowhere"],
  ];
}

/** Runs `script --unix path` and checks its one line; the path untouched. */
async function assertRefusedUnix(
  script: string,
  args: string[],
  path: string,
  what: string,
): Promise<void> {
  const before = await snapshot(path);
  const run = await runScript(script, [...args, "--unix", path]);
  assert.equal(run.code, 1, `${script} ${path}: ${run.stderr}`);
  assert.equal(
    run.stderr,
    `${script}: cannot listen on unix:${path}: ${what} (not a socket; left as it is)\n`,
  );
  assert.equal(run.stdout, "");
  assert.equal(await snapshot(path), before, `${path} was changed`);
}

serverTest(
  "evented.ts --unix on a directory, a file, a FIFO, a symlink, a dangling symlink: one line saying which, the path untouched",
  async () => {
    const dir = await Deno.makeTempDir();
    try {
      for (const [path, what] of await notSockets(dir)) {
        await assertRefusedUnix("evented.ts", [], path, what);
      }
      // The link's target too is as it was.
      assert.equal(await Deno.readTextFile(`${dir}/file`), "user data\n");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

serverTest(
  "every --unix model says what stands at the path (iterative, forked, threaded, threaded --pool, cluster)",
  async () => {
    const dir = await Deno.makeTempDir();
    try {
      const cases = await notSockets(dir);
      const models: [string, string[]][] = [
        ["iterative.ts", []],
        ["forked.ts", []],
        ["threaded.ts", []],
        ["threaded.ts", ["--pool", "2"]],
        ["cluster.ts", ["--workers", "1"]],
      ];
      // One kind of path per model, in turn: every model goes through it.
      for (const [i, [script, args]] of models.entries()) {
        const [path, what] = cases[i % cases.length];
        await assertRefusedUnix(script, args, path, what);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

serverTest(
  "--unix on a socket a live server answers on: address in use, and that server goes on serving",
  async () => {
    const dir = await Deno.makeTempDir();
    try {
      const path = `${dir}/echo.sock`;
      await using live = await startServer("evented.ts", ["--unix", path]);
      const run = await runScript("iterative.ts", ["--unix", path]);
      assert.equal(run.code, 1, run.stderr);
      assert.equal(
        run.stderr,
        `iterative.ts: cannot listen on unix:${path}: address in use\n`,
      );
      using conn = await live.connect();
      await conn.write(new TextEncoder().encode("still here"));
      const answer = new Uint8Array(10);
      for (let got = 0; got < 10;) {
        const n = await conn.read(answer.subarray(got));
        assert.ok(n !== null, "the live server closed");
        got += n;
      }
      assert.equal(new TextDecoder().decode(answer), "still here");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

serverTest(
  "threaded.ts --pool 16 under ulimit -n 64: one line naming the limit and how many workers fit, and that many start",
  async () => {
    const refused = new Script("threaded.ts", ["0", "--pool", "16"], {
      fdLimit: 64,
    });
    const exit = await refused.waitForExit(15_000);
    assert.equal(exit.code, 1, exit.stderr);
    const match = exit.stderr.match(
      /^threaded\.ts: ulimit -n 64 leaves room for (\d+) pool workers?, not 16 \(\d+ file descriptors each with a client, \d+ for the runtime\)\n$/,
    );
    assert.ok(match, exit.stderr);
    assertNoStackTrace(exit.stderr);
    const fit = Number(match[1]);
    assert.ok(fit >= 1 && fit < 16, `${fit} fit`);
    // As many as it says fit do start; one more is refused the same way.
    await using pool = await startServer("threaded.ts", [
      "--pool",
      String(fit),
    ], { fdLimit: 64 });
    assert.match(pool.banner, new RegExp(`pool of ${fit} worker`));
    const more = await new Script("threaded.ts", [
      "0",
      "--pool",
      String(fit + 1),
    ], { fdLimit: 64 }).waitForExit(15_000);
    assert.equal(more.code, 1, more.stderr);
    assert.match(
      more.stderr,
      new RegExp(`leaves room for ${fit} pool workers?, not ${fit + 1} `),
    );
  },
);

serverTest(
  "prefork.ts and cluster.ts --workers 8 under ulimit -n 48: one line naming the limit and how many worker processes fit",
  async () => {
    for (const script of ["prefork.ts", "cluster.ts"]) {
      const exit = await new Script(script, ["0", "--workers", "8"], {
        fdLimit: 48,
      }).waitForExit(15_000);
      assert.equal(exit.code, 1, exit.stderr);
      assert.match(
        exit.stderr,
        new RegExp(
          `^${script}: ulimit -n 48 leaves room for \\d worker processes, not 8 \\(.+\\)\\n$`,
        ),
      );
    }
  },
);
