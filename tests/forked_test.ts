import assert from "node:assert/strict";
import { echoServerConformance } from "./conformance.ts";
import {
  assertNoStackTrace,
  assertThirdClientWaits,
  childrenOf,
  processState,
  processTree,
  readToEnd,
  ROOT,
  roundTripText,
  serverTest,
  startServer,
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
      (await childrenOf(server.pid)).sort(),
      [...pids].sort(),
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
    await assertThirdClientWaits(server, async () => {
      assert.equal((await childrenOf(server.pid)).length, 2);
    });
    assert.equal((await childrenOf(server.pid)).length, 2);
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
  "forked.ts: --exec honours quotes and logs the command's stderr under its pid",
  async () => {
    await using server = await startServer("forked.ts", [
      "--exec",
      `sh -c 'echo "oops: $0" >&2; exec cat' "my name" \\;`,
    ]);
    using conn = await server.connect();
    assert.equal(await roundTripText(conn, "cat echoes\n"), "cat echoes\n");
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
    await server.waitForLine(/#50 .* closed/);
    assert.equal(
      server.lines.filter((line) =>
        / reaped child \d+: exited with code 0/.test(line)
      )
        .length,
      50,
    );
    assert.equal(new Set(spawnedPids(server.lines)).size, 50);
    assert.deepEqual(await childrenOf(server.pid), []);
  },
  { ms: 60_000 },
);

serverTest(
  "forked.ts: SIGTERM with a client connected exits 0 and leaves no process behind",
  async () => {
    await using server = await startServer("forked.ts", ["--grace", "0.3"]);
    using conn = await server.connect();
    assert.equal(await roundTripText(conn, "x"), "x");
    const tree = await processTree(server.pid);
    assert.equal(tree.length, 2, `server and child: ${tree}`);
    const socket = (await Deno.readTextFile(`/proc/${tree[1]}/cmdline`))
      .split("\0").at(-2)!;
    // The socket's directory went with the last child that connected: a
    // server killed now would leave nothing on disk.
    const socketDir = socket.slice(0, socket.lastIndexOf("/"));
    assert.match(socketDir, /\/forked-[^/]+$/);
    await assert.rejects(Deno.stat(socketDir), Deno.errors.NotFound);
    server.kill("SIGTERM");
    const exit = await server.waitForExit();
    assert.equal(exit.code, 0, exit.stderr);
    await assert.rejects(Deno.stat(socketDir), Deno.errors.NotFound);
    assert.match(
      server.lines.join("\n"),
      new RegExp(`#1 reaped child ${tree[1]}: killed by SIGTERM`),
    );
    for (const pid of tree) assert.equal(await processState(pid), undefined);
  },
);

serverTest(
  "forked.ts: a child that ignores SIGTERM is killed with SIGKILL, with its own children; exit 0",
  async () => {
    await using server = await startServer("forked.ts", [
      "--grace",
      "0.1",
      "--exec",
      `sh -c 'trap "" TERM; sleep 30 & echo ready >&2; exec sleep 31'`,
    ]);
    using _conn = await server.connect();
    await server.waitForLine(/#1 child \d+: ready/); // SIGTERM is ignored now
    const [child] = await childrenOf(server.pid);
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
    const children = await childrenOf(server.pid);
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
    const [child] = await childrenOf(server.pid);
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
