import assert from "node:assert/strict";
import { echoServerConformance } from "./conformance.ts";
import {
  assertNoStackTrace,
  assertThirdClientWaits,
  childrenOf,
  eventually,
  pattern,
  processState,
  processTree,
  readToEnd,
  ROOT,
  roundTripText,
  runScript,
  serverTest,
  startServer,
  streamAndCheck,
  withTimeout,
  writeAll,
} from "./harness.ts";

/** User + system CPU time of a process, in ms (Linux /proc, 10 ms ticks). */
async function cpuTimeMs(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10; // utime, stime
}

/** The child pids the server's log names, in order of spawning. */
function spawnedPids(lines: string[]): number[] {
  return lines.flatMap((line) => {
    const match = line.match(/#\d+ spawned child (\d+)$/);
    return match ? [Number(match[1])] : [];
  });
}

/** The server's watchdog (lifeline.ts): one of its children, started with it. */
async function watchdogOf(server: number): Promise<number> {
  let watchdog = watchdogs.get(server);
  if (watchdog !== undefined) return watchdog;
  const found: number[] = [];
  for (const pid of await childrenOf(server)) {
    const argv = await Deno.readTextFile(`/proc/${pid}/cmdline`).catch(() =>
      ""
    );
    if (argv.includes("lifeline.ts\0--role\0watchdog")) found.push(pid);
  }
  assert.equal(found.length, 1, `watchdogs: ${found}`);
  watchdogs.set(server, watchdog = found[0]);
  return watchdog;
}
const watchdogs = new Map<number, number>();

/** The server's children that serve clients: all but its watchdog. */
async function clientChildren(server: number): Promise<number[]> {
  const watchdog = await watchdogOf(server);
  return (await childrenOf(server)).filter((pid) => pid !== watchdog);
}

/** True once `pid` has ended (a zombie is its new parent's to reap). */
async function ended(pid: number): Promise<boolean> {
  return /^(Z|undefined)$/.test(String(await processState(pid)));
}

/** Runs `start` with TMPDIR set to `dir` for the processes it starts. */
async function withTmpdir<T>(dir: string, start: () => Promise<T>): Promise<T> {
  const before = Deno.env.get("TMPDIR");
  Deno.env.set("TMPDIR", dir);
  try {
    return await start();
  } finally {
    if (before === undefined) Deno.env.delete("TMPDIR");
    else Deno.env.set("TMPDIR", before);
  }
}

/** The open file descriptors of a process (Linux /proc). */
async function openFds(pid: number): Promise<number> {
  let count = 0;
  for await (const _ of Deno.readDir(`/proc/${pid}/fd`)) count++;
  return count;
}

/** True when `program` is on the PATH. */
function onPath(program: string): boolean {
  return (Deno.env.get("PATH") ?? "").split(":").some((dir) => {
    try {
      return Deno.statSync(`${dir}/${program}`).isFile;
    } catch {
      return false;
    }
  });
}

const encode = (text: string) => new TextEncoder().encode(text);
const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
const MiB = 1024 * 1024;

echoServerConformance("forked.ts", {
  concurrent: true,
  serverPids: processTree,
  badArgs: [
    ["--exec", ""],
    ["--exec", "   "],
    ["--exec", "tr 'a-z"],
    ["--exec", 'sh -c "cat'],
    ["--exec", "cat | tr a-z A-Z"],
    ["--exec", "cat", "--cpu-ms", "10"],
    ["--exec"],
    ["--sh-exec", ""],
    ["--sh-exec", " \t\n "],
    ["--sh-exec", "cat", "--cpu-ms", "10"],
    ["--sh-exec"],
    ["--exec", "cat", "--sh-exec", "cat"],
  ],
});

serverTest(
  "forked.ts: a 256 MiB stream through a child comes back byte-exact to its last byte",
  async () => {
    await using server = await startServer("forked.ts");
    using conn = await server.connect();
    // 64 KiB blocks of random bytes, each stamped with its number, so that a
    // lost, repeated or reordered block shows, not only a short end.
    const block = crypto.getRandomValues(new Uint8Array(MiB / 16));
    const blocks = 256 * 16;
    const stamped = (i: number) => {
      new DataView(block.buffer).setUint32(0, i);
      return block;
    };
    const writing = (async () => {
      for (let i = 0; i < blocks; i++) await writeAll(conn, stamped(i));
      await conn.closeWrite();
    })();
    const buffer = new Uint8Array(256 * 1024);
    const expected = new Uint8Array(block.length);
    expected.set(block);
    let received = 0;
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      for (let j = 0; j < n; j++, received++) {
        const at = received % block.length;
        if (at === 0) {
          new DataView(expected.buffer).setUint32(0, received / block.length);
        }
        if (buffer[j] !== expected[at]) {
          assert.fail(`byte ${received} differs`);
        }
      }
    }
    await writing;
    assert.equal(received, blocks * block.length);
  },
  { ms: 60_000 },
);

serverTest(
  "forked.ts: two clients are served at once by two child processes, on two cores",
  async () => {
    const cpuMs = 400;
    await using server = await startServer("forked.ts", [
      "--cpu-ms",
      String(cpuMs),
    ]);
    using first = await server.connect();
    using second = await server.connect();
    // Both children are up once each has echoed.
    await Promise.all([
      roundTripText(first, "1"),
      roundTripText(second, "2"),
    ]);
    const pids = spawnedPids(server.lines);
    assert.equal(pids.length, 2, server.lines.join("\n"));
    assert.notEqual(pids[0], pids[1]);
    assert.deepEqual(
      await clientChildren(server.pid),
      [...pids].sort((a, b) => a - b),
      "the logged pids are the server's children",
    );
    const cpuBefore = await Promise.all(
      [server.pid, ...pids].map(cpuTimeMs),
    );
    // One process for both takes 2 x cpuMs or more, every time (the burn
    // counts only running time); best of a few tries, as other work may share
    // the cores.
    let elapsed = Infinity;
    for (let i = 0; i < 3 && elapsed >= cpuMs * 1.75; i++) {
      const started = performance.now();
      const echoes = await Promise.all([
        roundTripText(first, "first"),
        roundTripText(second, "second"),
      ]);
      elapsed = Math.min(elapsed, performance.now() - started);
      assert.deepEqual(echoes, ["first", "second"]);
    }
    const [parentCpu, ...childCpu] = (await Promise.all(
      [server.pid, ...pids].map(cpuTimeMs),
    )).map((ms, i) => ms - cpuBefore[i]);
    // The CPU work is done by the children, not by the parent...
    childCpu.forEach((ms) => assert.ok(ms >= cpuMs * 0.9, `child: ${ms} ms`));
    assert.ok(parentCpu < cpuMs / 4, `parent burnt ${parentCpu} ms`);
    // ...and at the same time.
    assert.ok(elapsed >= cpuMs, `${elapsed} ms`);
    assert.ok(elapsed < cpuMs * 1.75, `${elapsed} ms: not in parallel`);
  },
);

serverTest(
  "forked.ts: --max-conns 2 bounds the live children; the third client waits",
  async () => {
    await using server = await startServer("forked.ts", ["--max-conns", "2"]);
    // The children are counted while all three clients are connected, and
    // again once the third is served: the first one's child was reaped.
    const twoChildren = async () =>
      assert.equal((await clientChildren(server.pid)).length, 2);
    await assertThirdClientWaits(server, twoChildren, twoChildren);
  },
);

serverTest(
  'forked.ts: --exec "tr a-z A-Z" runs tr per client on the connection',
  async () => {
    await using server = await startServer("forked.ts", [
      "--exec",
      "tr a-z A-Z",
    ]);
    assert.match(server.banner, /exec tr a-z A-Z/);
    const letters = "abcdefghijklmnopqrstuvwxyz";
    const text = "hello, World\n" +
      Array.from({ length: 300_000 }, (_, i) => letters[(i * 7) % 26]).join(
        "",
      );
    for (let client = 1; client <= 2; client++) {
      using conn = await server.connect();
      const [echoed] = await Promise.all([
        readToEnd(conn),
        writeAll(conn, encode(text)).then(() => conn.closeWrite()),
      ]);
      assert.equal(decode(echoed), text.toUpperCase());
      await server.waitForLine(
        new RegExp(`#${client} reaped child \\d+: exited with code 0`),
      );
    }
    assert.equal(new Set(spawnedPids(server.lines)).size, 2);
  },
);

serverTest(
  "forked.ts: --exec splits on any whitespace and runs no shell: its words reach CMD as they are",
  async () => {
    await using server = await startServer("forked.ts", [
      "--exec",
      " \t echo  *\t~ {a,b}\n x ",
    ]);
    assert.match(server.banner, /exec echo \* ~ \{a,b\} x per client/);
    using conn = await server.connect();
    await conn.closeWrite();
    assert.equal(decode(await readToEnd(conn)), "* ~ {a,b} x\n");
  },
);

serverTest(
  "forked.ts: --exec refuses what only a shell means, and names --sh-exec",
  async () => {
    for (
      const [command, what] of [["cat | tr a-z A-Z", "|"], ["tr 'a-z", "'"]]
    ) {
      const run = await runScript("forked.ts", ["0", "--exec", command]);
      assert.equal(run.code, 2, run.stderr);
      assert.equal(
        run.stderr.split("\n")[0],
        `forked.ts: --exec runs no shell: for ${what}, use --sh-exec`,
      );
    }
  },
);

serverTest(
  "forked.ts: --sh-exec runs COMMAND with /bin/sh -c (quotes, variables, pipes) and logs its stderr under its pid",
  async () => {
    await using server = await startServer("forked.ts", [
      "--sh-exec",
      `name="my name"; echo "oops: $name" >&2; tr a-z A-Z | tr -d X`,
    ]);
    using conn = await server.connect();
    await writeAll(conn, encode("sh executes\n"));
    await conn.closeWrite();
    assert.equal(decode(await readToEnd(conn)), "SH EECUTES\n");
    const stderrLine = await server.waitForLine(/child \d+: oops/);
    const [pid] = spawnedPids(server.lines);
    assert.ok(
      stderrLine.endsWith(`#1 child ${pid}: oops: my name`),
      stderrLine,
    );
  },
);

serverTest(
  "forked.ts: --exec with a missing command closes that client; the next is served",
  async () => {
    const dir = await Deno.makeTempDir();
    try {
      const program = `${dir}/echo-program`;
      await using server = await startServer("forked.ts", [
        "--exec",
        program,
      ]);
      using failed = await server.connect();
      assert.equal(
        (await withTimeout(readToEnd(failed), 10_000, "close")).length,
        0,
      );
      await server.waitForLine(/#1 .* closed \(cannot start child\)/);
      // The program exists from now on: the server has kept serving.
      await Deno.writeTextFile(program, "#!/bin/sh\nexec cat\n", {
        mode: 0o755,
      });
      using served = await server.connect();
      assert.equal(await roundTripText(served, "next\n"), "next\n");
      served.close();
      server.kill("SIGTERM");
      const exit = await server.waitForExit();
      assert.equal(exit.code, 0);
      assert.match(
        exit.stderr,
        new RegExp(`#1 cannot start ${program}: command not found`),
      );
      assertNoStackTrace(exit.stderr);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

serverTest(
  "forked.ts: a child that exits early gives its client all its output and a clean end",
  async () => {
    await using server = await startServer("forked.ts", [
      "--exec",
      "head -c 100000",
    ]);
    using conn = await server.connect();
    // The client goes on sending after head has exited. Closing on those
    // unread bytes would reset the connection, and a reset discards what the
    // client has not read yet; so the server drains them until the client's
    // EOF. The client reads only once the server is done with it.
    const sending = writeAll(conn, new Uint8Array(32 * MiB).fill(97))
      .then(() => conn.closeWrite()).then(() => "sent", (error) => error);
    await server.waitForLine(/#1 reaped child \d+: exited with code 0/);
    assert.equal(await sending, "sent");
    const output = await readToEnd(conn);
    assert.equal(output.length, 100_000);
    assert.ok(output.every((byte) => byte === 97));
    await server.waitForLine(
      /#1 .* closed \(eof\): 32\.0 MiB in, 97\.7 KiB out/,
    );
  },
);

serverTest(
  "forked.ts: a child killed with SIGKILL mid-stream ends only its own client",
  async () => {
    await using server = await startServer("forked.ts");
    using victim = await server.connect();
    using bystander = await server.connect();
    assert.equal(await roundTripText(victim, "v"), "v");
    assert.equal(await roundTripText(bystander, "b"), "b");
    const victimChild = Number(
      (await server.waitForLine(/#1 spawned child/)).match(/(\d+)$/)![1],
    );
    const sending = writeAll(victim, new Uint8Array(64 * MiB)).catch(
      (error) => error,
    );
    const reading = readToEnd(victim).catch((error) => error);
    Deno.kill(victimChild, "SIGKILL");
    const echoed = await withTimeout(reading, 10_000, "the victim's end");
    assert.ok(
      !(echoed instanceof Uint8Array) || echoed.length < 64 * MiB,
      "the stream went on",
    );
    await withTimeout(sending, 10_000, "the victim's writes to end");
    await server.waitForLine(/#1 reaped child \d+: killed by SIGKILL/);
    assert.equal(await roundTripText(bystander, "still"), "still");
    using next = await server.connect();
    assert.equal(await roundTripText(next, "next"), "next");
  },
);

serverTest(
  "forked.ts: a child killed before it connects back ends only its client",
  async () => {
    await using server = await startServer("forked.ts");
    using conn = await server.connect();
    // The log names the child as soon as it is spawned, long before a new
    // Deno runtime can connect back (~20 ms).
    const spawned = await server.waitForLine(/#1 spawned child (\d+)$/);
    Deno.kill(Number(spawned.match(/(\d+)$/)![1]), "SIGKILL");
    assert.equal(
      (await withTimeout(readToEnd(conn), 10_000, "close")).length,
      0,
    );
    await server.waitForLine(
      /#1 .* closed \(error: the child ended before it connected\)/,
    );
    using next = await server.connect();
    assert.equal(await roundTripText(next, "next"), "next");
  },
);

serverTest(
  "forked.ts: 50 clients one after another leave no zombie and no live child",
  async () => {
    await using server = await startServer("forked.ts");
    for (let i = 1; i <= 50; i++) {
      using conn = await server.connect();
      assert.equal(await roundTripText(conn, `client ${i}`), `client ${i}`);
    }
    // Every client's "closed" line, not just #50's: a child whose client has
    // gone may still be reaped while the next client is served.
    await server.waitForLines(/#\d+ .* closed/, 50);
    assert.equal(
      server.lines.filter((line) =>
        / reaped child \d+: exited with code 0/.test(line)
      )
        .length,
      50,
    );
    assert.equal(new Set(spawnedPids(server.lines)).size, 50);
    assert.deepEqual(await clientChildren(server.pid), []);
  },
  { ms: 60_000 },
);

for (const signal of ["SIGTERM", "SIGHUP"] as const) {
  serverTest(
    `forked.ts: ${signal} with a client connected exits 0 and leaves no process and no file behind`,
    async () => {
      await using server = await startServer("forked.ts", ["--grace", "0.3"]);
      using conn = await server.connect();
      assert.equal(await roundTripText(conn, "x"), "x");
      const [child] = spawnedPids(server.lines);
      const watchdog = await watchdogOf(server.pid);
      const tree = await processTree(server.pid);
      assert.deepEqual(
        tree.toSorted((a, b) => a - b),
        [server.pid, watchdog, child].sort((a, b) => a - b),
        "the server, its watchdog and the client's child",
      );
      const socket = (await Deno.readTextFile(`/proc/${child}/cmdline`))
        .split("\0").at(-2)!;
      // The server's private directory holds a child's socket only until the
      // child has connected: the listener goes, and its file with it.
      const socketDir = socket.slice(0, socket.lastIndexOf("/"));
      assert.match(socketDir, new RegExp(`/forked-${server.pid}-[^/]+$`));
      assert.equal((await Deno.stat(socketDir)).mode! & 0o777, 0o700);
      assert.deepEqual(await Array.fromAsync(Deno.readDir(socketDir)), []);
      server.kill(signal);
      const exit = await server.waitForExit();
      assert.equal(exit.code, 0, exit.stderr);
      await server.waitForLine(new RegExp(`stopping \\(${signal}\\)`));
      await assert.rejects(Deno.stat(socketDir), Deno.errors.NotFound);
      assert.match(
        server.lines.join("\n"),
        new RegExp(`#1 reaped child ${child}: killed by SIGTERM`),
      );
      for (const pid of tree) assert.equal(await processState(pid), undefined);
    },
  );
}

serverTest(
  "forked.ts: a child that ignores SIGTERM is killed with SIGKILL, with its own children; exit 0",
  async () => {
    await using server = await startServer("forked.ts", [
      "--grace",
      "0.1",
      "--sh-exec",
      `trap "" TERM; sleep 30 & echo ready >&2; exec sleep 31`,
    ]);
    using _conn = await server.connect();
    await server.waitForLine(/#1 child \d+: ready/); // SIGTERM is ignored now
    const [child] = spawnedPids(server.lines);
    const grandchildren = await childrenOf(child);
    assert.equal(grandchildren.length, 1);
    try {
      server.kill("SIGTERM");
      const exit = await server.waitForExit();
      assert.equal(exit.code, 0, exit.stderr);
      assert.match(
        server.lines.join("\n"),
        /#1 reaped child \d+: killed by SIGKILL/,
      );
      assert.equal(await processState(child), undefined);
      // The grandchild was the child's to reap, then init's: at most a zombie.
      assert.match(
        String(await processState(grandchildren[0])),
        /^(Z|undefined)$/,
      );
    } finally {
      // sleep outlives a server killed by the harness: end it, by pid.
      for (const pid of [child, ...grandchildren]) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch { /* gone, as it should be */ }
      }
    }
  },
);

serverTest(
  "forked.ts: children end when the parent is killed with SIGKILL",
  async () => {
    await using server = await startServer("forked.ts", ["--cpu-ms", "50"]);
    using idle = await server.connect();
    using busy = await server.connect();
    assert.equal(await roundTripText(idle, "i"), "i");
    assert.equal(await roundTripText(busy, "b"), "b");
    const children = await clientChildren(server.pid);
    assert.equal(children.length, 2);
    const sending = writeAll(busy, new Uint8Array(MiB)).catch(() => {});
    server.kill("SIGKILL");
    await server.exited;
    // No event tells when another process's orphan ends: poll, bounded.
    const deadline = performance.now() + 10_000;
    for (const pid of children) {
      for (;;) {
        const state = await processState(pid);
        if (state === undefined || state === "Z") break; // a zombie is init's
        assert.ok(performance.now() < deadline, `child ${pid} lives on`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
    await sending;
  },
);

serverTest(
  "forked.ts: the child role, run by hand as the server runs it, can reach its own socket and nothing else",
  async () => {
    await using server = await startServer("forked.ts");
    using conn = await server.connect();
    assert.equal(await roundTripText(conn, "x"), "x");
    const [child] = spawnedPids(server.lines);
    const argv = (await Deno.readTextFile(`/proc/${child}/cmdline`))
      .split("\0").slice(0, -1);
    assert.equal(argv[1], "run");
    assert.ok(argv.includes("--no-prompt"), argv.join(" "));
    // Its permissions name one path: the socket it connects back to, in a
    // directory only the server's user can enter.
    const socket = argv.at(-1)!;
    assert.deepEqual(
      argv.filter((arg) => /^(-A|--allow-|-[RWNESP]$|--permission)/.test(arg)),
      [
        `--allow-net=unix:${socket}`,
        `--allow-read=${socket}`,
        `--allow-write=${socket}`,
      ],
    );
    // The same command line, with a socket of ours instead, and a probe
    // module run first, in the same sandbox, that tries the network and more.
    const dir = await Deno.makeTempDir();
    const ours = `${dir}/child.sock`;
    const other = `${dir}/other.sock`;
    using listener = Deno.listen({ transport: "unix", path: ours });
    using _other = Deno.listen({ transport: "unix", path: other });
    const probe = `${dir}/probe.ts`;
    await Deno.writeTextFile(
      probe,
      `const tries = {
        connect: () => Deno.connect({ hostname: "127.0.0.1", port: ${server.port} }),
        unix: () => Deno.connect({ transport: "unix", path: ${
        JSON.stringify(other)
      } }),
        listen: () => Deno.listen({ hostname: "127.0.0.1", port: 0 }),
        read: () => Deno.readTextFile(${JSON.stringify(`${ROOT}forked.ts`)}),
        run: () => new Deno.Command("true").output(),
        env: () => Deno.env.get("HOME"),
      };
      const results = [];
      for (const [name, attempt] of Object.entries(tries)) {
        try { await attempt(); results.push(name + ": allowed"); }
        catch (error) { results.push(name + ": " + error.name); }
      }
      console.error(results.join(", "));`,
    );
    const byHand = new Deno.Command(argv[0], {
      args: [
        argv[1],
        "--preload",
        probe,
        ...argv.slice(2).map((arg) => arg.replace(socket, ours)),
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    try {
      using link = await withTimeout(listener.accept(), 15_000, "connect");
      await writeAll(link, encode("by hand\n"));
      await link.closeWrite();
      assert.equal(decode(await readToEnd(link)), "by hand\n");
      const output = await withTimeout(byHand.output(), 15_000, "the child");
      const stderr = decode(output.stderr);
      assert.equal(output.code, 0, stderr);
      assert.equal(
        stderr.trim(),
        "connect: NotCapable, unix: NotCapable, listen: NotCapable, read: NotCapable, run: NotCapable, env: NotCapable",
      );
    } finally {
      try {
        byHand.kill("SIGKILL");
      } catch { /* exited */ }
      await byHand.status;
      await Deno.remove(dir, { recursive: true });
    }
  },
);

for (const args of [[], ["--exec", "cat"]]) {
  serverTest(
    `forked.ts${
      args.map((arg) => ` ${arg}`).join("")
    }: a client costs the server no more file descriptors than its ModelSpec says, while its child starts and after`,
    async () => {
      await using server = await startServer(
        "forked.ts",
        [...args, "--max-conns", "1000"],
        { fdLimit: 1024 },
      );
      const note = await server.waitForLine(/lowered to \d+/);
      const declared = Number(note.match(/at (\d+) file descriptor/)![1]);
      {
        // One client first, so that what the runtime opens once is counted
        // in the baseline, not per client.
        using first = await server.connect();
        assert.equal(await roundTripText(first, "warm"), "warm");
      }
      await server.waitForLine(/#1 .* closed/);
      const before = await openFds(server.pid);
      let peak = before;
      const sampler = setInterval(async () => {
        peak = Math.max(peak, await openFds(server.pid).catch(() => 0));
      }, 1);
      const count = 10;
      const clients = await Promise.all(
        Array.from({ length: count }, () => server.connect()),
      );
      try {
        await Promise.all(clients.map((conn) => roundTripText(conn, "up")));
        clearInterval(sampler);
        const served = ((await openFds(server.pid)) - before) / count;
        assert.ok(served >= 1 && served <= declared, `${served} per client`);
        // A spawn holds a few more for an instant (the other ends of the
        // child's pipes, /dev/null, the exec-error pipe): one spawn at a
        // time, so once for all, in the reserve cli.ts keeps.
        const oneSpawn = 5;
        assert.ok(
          peak - before <= declared * count + oneSpawn,
          `${peak - before} for ${count} clients starting at once`,
        );
      } finally {
        clearInterval(sampler);
        clients.forEach((conn) => conn.close());
      }
    },
  );
}

serverTest(
  "forked.ts under ulimit -n 256: --max-conns is capped with one log line, 3x more clients than fit are all served byte-exact, every child reaped",
  async () => {
    await using server = await startServer("forked.ts", [], { fdLimit: 256 });
    const note = await server.waitForLine(/--max-conns 64 lowered to \d+/);
    const fits = Number(note.match(/lowered to (\d+)/)![1]);
    assert.ok(fits >= 10 && fits < 64, note);
    const clients = 3 * fits;
    await Promise.all(
      Array.from({ length: clients }, async (_, i) => {
        using conn = await server.connect();
        await streamAndCheck(conn, pattern(8 * 1024, i + 1));
      }),
    );
    // A client's "closed" line comes after its child's "reaped" line.
    await server.waitForLines(/ closed \(eof\)/, clients);
    const spawned = spawnedPids(server.lines);
    assert.equal(new Set(spawned).size, clients);
    const log = server.lines.join("\n");
    for (const pid of spawned) {
      assert.match(log, new RegExp(`reaped child ${pid}: exited with code 0`));
    }
    assert.doesNotMatch(log, /cannot start|closed \((?!eof)/);
    using last = await server.connect();
    assert.equal(await roundTripText(last, "alive\n"), "alive\n");
    assert.doesNotMatch(server.stderr, /panic|Too many open files/i);
    last.close();
    server.kill("SIGTERM");
    assert.equal((await server.waitForExit()).code, 0);
  },
  { ms: 120_000 },
);

serverTest(
  "forked.ts out of file descriptors beyond its cap (prlimit while it runs): starts and accepts wait and retry, every client is served",
  async () => {
    await using server = await startServer("forked.ts", ["--max-conns", "20"]);
    // Room for the 20 clients' sockets and about two children at a time.
    const limit = (await openFds(server.pid)) + 20 + 12;
    const prlimit = await new Deno.Command("prlimit", {
      args: [`--pid=${server.pid}`, `--nofile=${limit}:${limit}`],
    }).output();
    assert.ok(prlimit.success, new TextDecoder().decode(prlimit.stderr));
    const clients = 60;
    await Promise.all(
      Array.from({ length: clients }, async (_, i) => {
        using conn = await server.connect();
        await streamAndCheck(conn, pattern(8 * 1024, i + 1));
      }),
    );
    await server.waitForLines(/ closed \(eof\)/, clients);
    const log = server.lines.join("\n");
    assert.doesNotMatch(log, /cannot start|closed \((?!eof)/);
    assert.equal(spawnedPids(server.lines).length, clients);
    assertNoStackTrace(server.stderr);
    using last = await server.connect();
    assert.equal(await roundTripText(last, "alive\n"), "alive\n");
  },
  {
    ms: 60_000,
    ignore: !onPath("prlimit"),
  },
);

/** forked.ts with TMPDIR `tmp`, once 16 clients at once have their children. */
async function startedMidBurst(tmp: string) {
  const server = await withTmpdir(tmp, () => startServer("forked.ts"));
  const conns = await Promise.all(
    Array.from({ length: 16 }, () => server.connect()),
  );
  await server.waitForLines(/#\d+ spawned child/, 16);
  return { server, conns };
}

serverTest(
  "forked.ts killed with SIGKILL during a burst of connects: its watchdog removes its socket directory and ends its children",
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "forked-test-" });
    try {
      const { server, conns } = await startedMidBurst(tmp);
      const [dir] = await Array.fromAsync(Deno.readDir(tmp));
      assert.match(dir.name, new RegExp(`^forked-${server.pid}-`));
      // Children still starting: their sockets wait for them to connect.
      const sockets = await Array.fromAsync(Deno.readDir(`${tmp}/${dir.name}`));
      assert.ok(sockets.length > 0, "every child had connected already");
      const watchdog = await watchdogOf(server.pid);
      server.kill("SIGKILL");
      await server.exited; // and the watchdog, which writes to its stderr
      assert.deepEqual(await Array.fromAsync(Deno.readDir(tmp)), []);
      for (const pid of [watchdog, ...spawnedPids(server.lines)]) {
        await eventually(() => ended(pid), 5000, `pid ${pid} to end`);
      }
      conns.forEach((conn) => conn.close());
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
);

serverTest(
  "forked.ts and its watchdog killed together during a burst of connects: the next start removes what they left",
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "forked-test-" });
    try {
      const { server: dead, conns } = await startedMidBurst(tmp);
      Deno.kill(await watchdogOf(dead.pid), "SIGKILL");
      dead.kill("SIGKILL");
      await dead.exited;
      const [left] = await Array.fromAsync(Deno.readDir(tmp));
      assert.match(left.name, new RegExp(`^forked-${dead.pid}-`));
      // Its children end by themselves: their link is gone, or never came.
      for (const pid of spawnedPids(dead.lines)) {
        await eventually(() => ended(pid), 10_000, `child ${pid} to end`);
      }
      conns.forEach((conn) => conn.close());

      await using next = await withTmpdir(tmp, () => startServer("forked.ts"));
      const names = async () =>
        (await Array.fromAsync(Deno.readDir(tmp))).map((entry) => entry.name);
      await eventually(
        async () => !(await names()).includes(left.name),
        10_000,
        "the dead server's directory to go",
      );
      const [ours] = await names();
      assert.match(ours, new RegExp(`^forked-${next.pid}-`));
      using conn = await next.connect();
      assert.equal(await roundTripText(conn, "next\n"), "next\n");
      conn.close();
      next.kill("SIGTERM");
      assert.equal((await next.waitForExit()).code, 0);
      assert.deepEqual(await names(), []);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
);

for (
  const args of [
    ["--exec", "sleep 20"],
    // A grandchild in a session of its own, deaf to SIGTERM: still ended.
    ["--sh-exec", `trap "" TERM; setsid sleep 21 & echo "$!" >&2; sleep 20`],
  ]
) {
  serverTest(
    `forked.ts ${
      args.join(" ")
    }: its children are gone a few seconds after the server is killed with SIGKILL`,
    async () => {
      await using server = await startServer("forked.ts", args);
      const conns = await Promise.all([1, 2, 3].map(() => server.connect()));
      await server.waitForLines(/#\d+ spawned child/, 3);
      const processes = spawnedPids(server.lines);
      if (args[0] === "--sh-exec") {
        for (const line of await server.waitForLines(/child \d+: \d+$/, 3)) {
          processes.push(Number(line.match(/(\d+)$/)![1]));
        }
      }
      try {
        server.kill("SIGKILL");
        await server.exited;
        for (const pid of processes) {
          await eventually(() => ended(pid), 5000, `pid ${pid} to end`);
        }
      } finally {
        for (const pid of processes) {
          for (const target of [-pid, pid]) { // its group, then itself
            try {
              Deno.kill(target, "SIGKILL"); // what outlived the test, by pid
            } catch { /* ended, as it should have */ }
          }
        }
        conns.forEach((conn) => conn.close());
      }
    },
  );
}

serverTest(
  "forked.ts with an unusable TMPDIR exits 1 at start with one line, before any banner; --exec needs none",
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "forked-test-" });
    try {
      const file = `${tmp}/file`;
      await Deno.writeTextFile(file, "");
      for (
        const [dir, why] of [
          [`${tmp}/missing`, "no such directory"],
          [file, "not a directory"],
        ]
      ) {
        const run = await withTmpdir(dir, () => runScript("forked.ts", ["0"]));
        assert.equal(run.code, 1, run.stderr);
        assert.equal(run.stdout, "");
        assert.equal(
          run.stderr,
          `forked.ts: cannot make a directory for the children's sockets in ${dir}: ${why}\n`,
        );
      }
      await using server = await withTmpdir(
        `${tmp}/missing`,
        () => startServer("forked.ts", ["--exec", "cat"]),
      );
      using conn = await server.connect();
      assert.equal(await roundTripText(conn, "cat\n"), "cat\n");
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
);
