import assert from "node:assert/strict";
import { echoServerConformance } from "./conformance.ts";
import {
  assertCtrlCDrains,
  assertOrphansDrain,
  assertPoolStopsOn,
  assertServedBeyondFdLimit,
  childrenOf,
  eventually,
  processState,
  refuses,
  replacementOf,
  roundTripText,
  Script,
  servedBy,
  serverTest,
  settlesWithin,
  startServer,
  talkAtOnce,
} from "./harness.ts";

const TWO = ["--workers", "2"];

/** Live processes (not zombies) running as a prefork.ts worker on `port`. */
async function workersOnPort(port: number): Promise<number[]> {
  const found: number[] = [];
  for await (const entry of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    const args = (await Deno.readTextFile(`/proc/${entry.name}/cmdline`)
      .catch(() => "")).split("\0");
    const role = args.indexOf("--role");
    if (
      role > 0 && args[role - 1].endsWith("prefork.ts") &&
      args[role + 1] === "worker" && args[role + 3] === String(port)
    ) found.push(Number(entry.name));
  }
  return found;
}

/**
 * Asserts that no prefork.ts worker runs on `port`; any found is killed
 * first (by pid), so that a failing test leaves nothing behind either.
 */
async function assertNoWorkerOn(port: number, when = ""): Promise<void> {
  const left = await workersOnPort(port);
  left.forEach((pid) => Deno.kill(pid, "SIGKILL"));
  assert.deepEqual(left, [], `workers left on port ${port} ${when}`);
}

/** The worker pids a supervisor logged as listening. */
function loggedWorkers(server: Script): number[] {
  return server.lines.flatMap((line) => {
    const match = line.match(/worker \d+ \(pid (\d+)\) listening/);
    return match ? [Number(match[1])] : [];
  });
}

function freePort(): number {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  return listener.addr.port;
}

echoServerConformance("prefork.ts", {
  args: TWO,
  concurrent: true,
  unix: false,
  serverPids: async (pid) => [pid, ...await childrenOf(pid)],
  badArgs: [
    ["--workers", "0"],
    ["--workers", "two"],
    ["--workers", "1.5"],
    ["--workers", "-1"],
    ["--unix", "/tmp/prefork-test.sock"],
    ["--workers", "4", "--max-conns", "3"],
  ],
});

serverTest(
  "prefork.ts: 20 clients at once are served, by both workers, each line naming its pid",
  async () => {
    await using server = await startServer("prefork.ts", TWO);
    const workers = await childrenOf(server.pid);
    assert.equal(workers.length, 2);
    await talkAtOnce(server, 20);
    // The kernel hashes each connection to a worker: all 20 on one has a
    // chance of 2 in 2^20.
    const closed = await server.waitForLines(/ closed \(/, 20);
    const pids = new Set(
      closed.map((line) => Number(line.match(/^\[pid (\d+) worker \d\] /)![1])),
    );
    assert.deepEqual([...pids].sort((a, b) => a - b), workers);
    for (const line of server.lines.slice(1)) {
      assert.match(line, /^\[pid \d+( worker \d+)?\] /);
    }
  },
);

serverTest(
  "prefork.ts: --cpu-ms 200 runs two clients in parallel on two workers, in turn on one",
  async () => {
    await using server = await startServer("prefork.ts", [
      ...TWO,
      "--cpu-ms",
      "200",
    ]);
    // Connect until each worker has two clients: where a connection goes is
    // the kernel's hash, not our choice.
    const byWorker = new Map<number, Deno.Conn[]>();
    const conns: Deno.Conn[] = [];
    try {
      while (
        byWorker.size < 2 ||
        [...byWorker.values()].some((list) => list.length < 2)
      ) {
        assert.ok(conns.length < 30, "30 connections, all on one worker");
        const conn = await server.connect();
        conns.push(conn);
        const pid = await servedBy(server, conn);
        byWorker.set(pid, [...byWorker.get(pid) ?? [], conn]);
      }
      const [first, second] = [...byWorker.values()];
      const pair = async (a: Deno.Conn, b: Deno.Conn) => {
        const started = performance.now();
        const echoes = await Promise.all([
          roundTripText(a, "a"),
          roundTripText(b, "b"),
        ]);
        assert.deepEqual(echoes, ["a", "b"]);
        return performance.now() - started;
      };
      // Two workers, two processes: both 200 ms burns at once (best of a
      // few tries, as other work may share the cores).
      let apart = Infinity;
      for (let i = 0; i < 5 && apart >= 300; i++) {
        apart = Math.min(apart, await pair(first[0], second[0]));
      }
      assert.ok(apart < 300, `two workers took ${apart.toFixed(0)} ms`);
      // One worker: the second client waits for the first one's 200 ms, even
      // though the other worker is idle. That is reusePort's hashing.
      const together = await pair(first[0], first[1]);
      assert.ok(together >= 400, `one worker took ${together.toFixed(0)} ms`);
    } finally {
      conns.forEach((conn) => conn.close());
    }
  },
);

serverTest(
  "prefork.ts: SIGINT or SIGTERM the moment the banner shows, 10 times in a row: exit 0, every worker reaped",
  async () => {
    for (let i = 0; i < 10; i++) {
      const signal = i % 2 ? "SIGINT" : "SIGTERM";
      await using server = await startServer("prefork.ts", TWO);
      server.kill(signal); // where the prototype's parent sometimes died
      const exit = await server.waitForExit();
      assert.equal(exit.signal, null, `run ${i + 1}: killed by ${exit.signal}`);
      assert.equal(exit.code, 0, exit.stderr);
      const workers = loggedWorkers(server);
      assert.equal(workers.length, 2, server.lines.join("\n"));
      for (const pid of workers) {
        assert.equal(await processState(pid), undefined, `worker ${pid} left`);
      }
      await assertNoWorkerOn(server.port);
    }
  },
  { ms: 60_000 },
);

serverTest(
  "prefork.ts: SIGTERM, SIGINT and SIGHUP with clients connected, 3 times each: the clients finish, exit 0, nothing left",
  async () => {
    for (let i = 0; i < 9; i++) {
      const signal = (["SIGTERM", "SIGINT", "SIGHUP"] as const)[i % 3];
      await using server = await startServer("prefork.ts", [
        ...TWO,
        "--grace",
        "20",
      ]);
      await assertPoolStopsOn(server, signal);
      for (const pid of loggedWorkers(server)) {
        assert.equal(await processState(pid), undefined, `worker ${pid} left`);
      }
      await assertNoWorkerOn(server.port);
    }
  },
  { ms: 60_000 },
);

serverTest(
  "prefork.ts: a signal at any moment of start-up leaves no worker behind",
  async () => {
    // Signals from "as soon as it runs" to "after the banner", so that every
    // step of start-up is hit on some machine: before the parent listens for
    // signals (death by default is fine then: no worker exists yet), while it
    // spawns workers, while they start.
    for (const [i, delay] of [0, 40, 80, 120, 160, 200, 300, 500].entries()) {
      const signal = i % 2 ? "SIGINT" : "SIGTERM";
      const port = freePort();
      await using server = new Script("prefork.ts", [String(port), ...TWO]);
      await new Promise((resolve) => setTimeout(resolve, delay));
      server.kill(signal);
      const exit = await server.waitForExit();
      if (exit.signal !== null) {
        assert.equal(exit.signal, signal);
        assert.deepEqual(server.lines, [], "killed after it printed");
      } else {
        assert.equal(exit.code, 0, exit.stderr);
      }
      await assertNoWorkerOn(port, `after a signal at ${delay} ms`);
      assert.ok(await refuses(port), `port still served after ${delay} ms`);
    }
  },
  { ms: 60_000 },
);

serverTest(
  "prefork.ts: a Ctrl-C at the terminal (SIGINT to the process group) drains like SIGINT to the parent",
  () => assertCtrlCDrains("prefork.ts", TWO, /killed by/),
);

serverTest(
  "prefork.ts: a worker killed with SIGKILL is reaped and replaced within seconds",
  async () => {
    await using server = await startServer("prefork.ts", TWO);
    const [victim, survivor] = await childrenOf(server.pid);
    Deno.kill(victim, "SIGKILL");
    const replacement = await replacementOf(server, victim, survivor, 5000);
    // Both serve: enough connections that each worker gets some.
    const served = new Set<number>();
    for (let i = 0; i < 20; i++) {
      using conn = await server.connect();
      assert.equal(await roundTripText(conn, `${i}`), `${i}`);
      served.add(await servedBy(server, conn));
    }
    assert.deepEqual(
      [...served].sort((a, b) => a - b),
      [survivor, replacement].sort((a, b) => a - b),
    );
  },
);

serverTest(
  "prefork.ts: workers that keep failing to start make it give up: exit 1, one line",
  async () => {
    await using server = await startServer("prefork.ts", TWO);
    for (const pid of await childrenOf(server.pid)) Deno.kill(pid, "SIGKILL");
    // Take the port the moment the dead workers free it, before the restarts
    // (0.1 s later) come: a listener without reusePort, which they cannot join.
    using _taken = await eventually(
      () => {
        try {
          return Deno.listen({ hostname: "127.0.0.1", port: server.port });
        } catch {
          return undefined;
        }
      },
      5000,
      "the port to be free",
    );
    const exit = await server.waitForExit(20_000);
    assert.equal(exit.code, 1);
    assert.equal(
      exit.stderr.trim(),
      `prefork.ts: cannot listen on 127.0.0.1:${server.port}: address in use`,
    );
    assert.match(
      server.lines.join("\n"),
      /exited with code 1 .*before listening \(prefork\.ts: cannot listen on .*address in use\); restarting in/,
    );
  },
);

serverTest(
  "prefork.ts: after a SIGKILL of the parent, no worker listens within seconds; its clients finish",
  async () => {
    const server = await startServer("prefork.ts", TWO);
    const workers = await childrenOf(server.pid);
    await using _ = {
      [Symbol.asyncDispose]: () => assertNoWorkerOn(server.port),
    };
    using client = await server.connect();
    assert.equal(await roundTripText(client, "before"), "before");
    server.kill("SIGKILL");
    await server.exited;
    // The workers read EOF on stdin: they stop accepting, serve their
    // clients until done, and exit.
    await assertOrphansDrain(server.port, client, workers);
  },
);

serverTest(
  "prefork.ts: without --workers, one worker per CPU",
  async () => {
    await using server = await startServer("prefork.ts");
    const cpus = navigator.hardwareConcurrency;
    assert.match(server.banner, new RegExp(`\\(prefork, ${cpus} workers, `));
    assert.equal((await childrenOf(server.pid)).length, cpus);
  },
  { ignore: navigator.hardwareConcurrency > 8 },
);

serverTest(
  "prefork.ts: --json lines carry each worker's pid and number",
  async () => {
    await using server = await startServer("prefork.ts", [...TWO, "--json"]);
    const banner = JSON.parse(server.banner);
    assert.equal(banner.workers, 2);
    assert.equal(banner.pid, server.pid);
    using conn = await server.connect();
    assert.equal(await roundTripText(conn, "j"), "j");
    const connected = JSON.parse(
      await server.waitForLine(/"event":"connected"/),
    );
    assert.ok((await childrenOf(server.pid)).includes(connected.pid));
    assert.ok(connected.worker === 1 || connected.worker === 2);
    await server.waitForLine(/"event":"worker-listening"/);
  },
);

serverTest(
  'prefork.ts --workers 1: the banner says "1 worker"',
  async () => {
    await using server = await startServer("prefork.ts", ["--workers", "1"]);
    assert.match(server.banner, /\(prefork, 1 worker, pid \d+\)$/);
  },
);

serverTest(
  "prefork.ts --workers 2 --max-conns 2: at most 2 clients served in all, the rest wait and are served in turn",
  async () => {
    await using server = await startServer("prefork.ts", [
      ...TWO,
      "--max-conns",
      "2",
    ]);
    // Each worker serves 1. Eight clients at once, each sending a byte: the
    // kernel hashes them to the workers, where the unserved ones wait.
    const clients = await Promise.all(
      Array.from({ length: 8 }, () => server.connect()),
    );
    const echoes = clients.map((conn) => roundTripText(conn, "x"));
    const served = new Set<number>();
    echoes.forEach((echo, i) => echo.then(() => served.add(i)));
    const left = new Set<number>();
    while (left.size < clients.length) {
      const waiting = echoes.filter((_, i) => !left.has(i));
      await Promise.any(waiting); // somebody still here is served
      // Whoever else could be served now echoes within this time.
      await settlesWithin(Promise.all(waiting), 300);
      const open = [...served].filter((i) => !left.has(i));
      assert.ok(open.length <= 2, `${open.length} clients served at once`);
      clients[open[0]].close(); // it leaves: the next one is served
      left.add(open[0]);
    }
  },
);

serverTest(
  "prefork.ts --workers 2 under ulimit -n 64: 3x more clients than fit are all served, byte-exact",
  async () => {
    // 24 clients fit in each worker (40 descriptors are the runtime's).
    const fits = await assertServedBeyondFdLimit("prefork.ts", TWO, 64);
    assert.equal(fits, 48);
  },
  { ms: 60_000 },
);
