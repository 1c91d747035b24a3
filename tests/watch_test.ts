/**
 * watch.ts against the real servers: each model started on port 0 (or a Unix
 * socket), real clients connected, and `watch.ts --once --json` run until
 * the picture it reads from /proc is the expected one (bounded); then the
 * error cases, each with its exit code and one line.
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  assertNoStackTrace,
  eventually,
  ROOT,
  roundTripText,
  runScript,
  Script,
  type Server,
  serverTest,
  startServer,
} from "./harness.ts";
import type { Snapshot } from "../lib/watch/snapshot.ts";

/** One snapshot of `target` (`["PORT"]`, `["--unix", PATH]`...). */
async function watchOnce(target: string[]): Promise<Snapshot> {
  const run = await runScript("watch.ts", [...target, "--once", "--json"]);
  assert.equal(run.code, 0, run.stderr);
  assert.equal(run.stdout.split("\n").length, 1, "one JSON line");
  return JSON.parse(run.stdout);
}

/** Snapshots until `expected` holds of one (at most `ms`); that snapshot. */
async function watchUntil(
  target: string[],
  what: string,
  expected: (s: Snapshot) => boolean,
  ms = 20_000,
): Promise<Snapshot> {
  let last: Snapshot | undefined;
  try {
    // eventually() returns the check's first truthy result: a snapshot.
    return await eventually<Snapshot | false>(
      async () => {
        last = await watchOnce(target);
        return expected(last) ? last : false;
      },
      ms,
      what,
    ) as Snapshot;
  } catch (error) {
    throw new Error(
      `${(error as Error).message}; last: ${JSON.stringify(last)}`,
    );
  }
}

/** `count` clients, each served (one echo) before the next connects. */
async function servedClients(server: Server, count: number) {
  const clients: Deno.Conn[] = [];
  for (let i = 0; i < count; i++) {
    const conn = await server.connect();
    clients.push(conn);
    assert.equal(await roundTripText(conn, `hi ${i}\n`), `hi ${i}\n`);
  }
  return clients;
}

function closeAll(clients: Deno.Conn[]): void {
  for (const conn of clients) {
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

const byClients = (s: Snapshot) =>
  s.processes.reduce((n, p) => n + p.clients.length, 0);

serverTest(
  "watch.ts: iterative.ts, 1 client served and 2 in the backlog",
  async () => {
    await using server = await startServer("iterative.ts");
    const clients = await servedClients(server, 1);
    clients.push(await server.connect(), await server.connect());
    try {
      const s = await watchUntil(
        [`${server.port}`],
        "clients 1, waiting 2",
        (s) => s.clients === 1 && s.waiting === 2,
      );
      assert.equal(s.port, server.port);
      assert.equal(s.pid, server.pid);
      assert.equal(s.listeners.length, 1);
      assert.deepEqual(s.listeners[0].pids, [server.pid]);
      assert.equal(s.listeners[0].waiting, 2);
      assert.equal(s.waitingPeers.length, 2);
      assert.equal(s.processes[0].clients.length, 1);
      assert.match(s.notice ?? "", /2 clients wait in the kernel's backlog/);
    } finally {
      closeAll(clients);
    }
  },
);

serverTest(
  "watch.ts: evented.ts, 5 clients held by one process; every JSON field",
  async () => {
    await using server = await startServer("evented.ts");
    const clients = await servedClients(server, 5);
    try {
      const s = await watchUntil(
        [`${server.port}`],
        "5 clients",
        (s) => s.clients === 5,
      );
      assert.equal(s.processes.length, 1);
      const [main] = s.processes;
      assert.equal(main.pid, server.pid);
      assert.equal(main.role, "main");
      assert.equal(main.clients.length, 5);
      assert.equal(s.waiting, 0);
      const ports = clients.map((c) => (c.localAddr as Deno.NetAddr).port)
        .sort();
      const peers = main.clients.map((c) => Number(c.peer.split(":").pop()));
      assert.deepEqual(peers.sort(), ports);
      for (const c of main.clients) {
        assert.equal(typeof c.recvQ, "number");
        assert.equal(typeof c.sendQ, "number");
      }
      assert.ok(main.rssKiB > 1000, `rss ${main.rssKiB} KiB`);
      assert.ok(main.threads >= 1);
      assert.equal(typeof main.cpuPercent, "number");
      assert.equal(typeof main.ppid, "number");
      assert.match(main.command, /evented\.ts/);
      for (const key of ["address", "waiting", "backlog", "pids"]) {
        assert.ok(key in s.listeners[0], key);
      }
    } finally {
      closeAll(clients);
    }
  },
);

serverTest(
  "watch.ts: forked.ts, 2 clients: 2 children below the parent, its watchdog a helper",
  async () => {
    await using server = await startServer("forked.ts");
    const clients = await servedClients(server, 2);
    try {
      const s = await watchUntil(
        [`${server.port}`],
        "2 children",
        (s) =>
          s.clients === 2 &&
          s.processes.filter((p) => p.role === "child").length === 2,
      );
      const [parent, ...below] = s.processes;
      assert.equal(parent.pid, server.pid);
      assert.equal(parent.role, "parent");
      assert.equal(parent.clients.length, 2); // it accepts, and relays
      for (const p of below) assert.equal(p.ppid, server.pid);
      const helpers = below.filter((p) => p.role === "helper");
      assert.equal(helpers.length, 1, JSON.stringify(below));
      assert.match(helpers[0].command, /lifeline\.ts/);
      assert.equal(below.length, 3);
    } finally {
      closeAll(clients);
    }
  },
);

serverTest(
  "watch.ts: threaded.ts, 2 clients: at least 2 more threads than with none",
  async () => {
    await using server = await startServer("threaded.ts");
    const idle = await watchOnce([`${server.port}`]);
    assert.equal(idle.clients, 0);
    const clients = await servedClients(server, 2);
    try {
      const s = await watchUntil(
        [`${server.port}`],
        "2 more threads",
        (s) =>
          s.clients === 2 &&
          s.processes[0].threads >= idle.processes[0].threads + 2,
      );
      const named = s.processes[0].namedThreads.map((t) => t.name);
      assert.equal(named.filter((name) => /^worker-\d+$/.test(name)).length, 2);
    } finally {
      closeAll(clients);
    }
  },
);

serverTest(
  "watch.ts: prefork.ts --workers 2: two listeners with different pids, 6 clients add up",
  async () => {
    await using server = await startServer("prefork.ts", ["--workers", "2"]);
    const clients = await servedClients(server, 6);
    try {
      const s = await watchUntil(
        [`${server.port}`],
        "6 clients",
        (s) => s.clients === 6 && s.listeners.length === 2,
      );
      const [a, b] = s.listeners.map((l) => l.pids);
      assert.equal(a.length, 1);
      assert.equal(b.length, 1);
      assert.notEqual(a[0], b[0]);
      const workers = s.processes.filter((p) => p.role === "worker");
      assert.deepEqual(workers.map((w) => w.pid).sort(), [a[0], b[0]].sort());
      assert.equal(byClients(s), 6);
      assert.equal(s.processes[0].role, "parent");
    } finally {
      closeAll(clients);
    }
  },
);

serverTest(
  "watch.ts: cluster.ts --workers 2 (shared): one listener held by both workers, 6 clients add up",
  async () => {
    await using server = await startServer("cluster.ts", ["--workers", "2"]);
    const clients = await servedClients(server, 6);
    try {
      const s = await watchUntil(
        [`${server.port}`],
        "6 clients",
        (s) =>
          s.clients === 6 &&
          s.processes.filter((p) => p.role === "worker").length === 2,
      );
      assert.equal(s.listeners.length, 1);
      const workers = s.processes.filter((p) => p.role === "worker");
      for (const worker of workers) {
        assert.ok(s.listeners[0].pids.includes(worker.pid), `${worker.pid}`);
        assert.equal(worker.ppid, server.pid);
      }
      assert.equal(byClients(s), 6);
    } finally {
      closeAll(clients);
    }
  },
);

serverTest("watch.ts: a Unix-socket server, through --unix PATH", async () => {
  const dir = await Deno.makeTempDir({ prefix: "watch-test-" });
  const path = `${dir}/echo.sock`;
  try {
    await using server = await startServer("iterative.ts", ["--unix", path]);
    const clients = await servedClients(server, 1);
    clients.push(await server.connect());
    try {
      const s = await watchUntil(
        ["--unix", path],
        "clients 1, waiting 1",
        (s) => s.clients === 1 && s.waiting === 1,
      );
      assert.equal(s.path, path);
      assert.equal(s.port, null);
      assert.equal(s.pid, server.pid);
      assert.equal(s.listeners[0].address, `unix:${path}`);
      assert.deepEqual(s.listeners[0].pids, [server.pid]);
      assert.equal(s.processes[0].clients[0].recvQ, null); // not in /proc
      // The same server through its pid.
      const byPid = await watchOnce(["--pid", `${server.pid}`]);
      assert.equal(byPid.path, path);
      assert.equal(byPid.clients, 1);
    } finally {
      closeAll(clients);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

serverTest(
  "watch.ts: text when stdout is not a terminal: no control codes",
  async () => {
    await using server = await startServer("evented.ts");
    const run = await runScript("watch.ts", [`${server.port}`, "--once"]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(
      run.stdout,
      new RegExp(`listening 127\\.0\\.0\\.1:${server.port} `),
    );
    assert.match(run.stdout, new RegExp(`^  ${server.pid} .* main `, "m"));
    assert.ok(!run.stdout.includes("\x1b"), "an escape code"); // ESC
  },
);

serverTest("watch.ts: nothing listening: exit 1, one line", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close(); // a port nobody listens on, now
  const run = await runScript("watch.ts", [`${port}`, "--once"]);
  assert.equal(run.code, 1);
  assert.equal(run.stderr, `watch.ts: nothing is listening on port ${port}\n`);
  assert.equal(run.stdout, "");
  const unix = await runScript("watch.ts", ["--unix", "/nonexistent/x.sock"]);
  assert.equal(unix.code, 1);
  assert.equal(unix.stderr.trim().split("\n").length, 1, unix.stderr);
});

serverTest(
  "watch.ts: the server exits while watched: it says so, exit 0",
  async () => {
    await using server = await startServer("evented.ts");
    await using watch = new Script("watch.ts", [
      `${server.port}`,
      "--interval",
      "0.2",
    ]);
    await watch.waitForLine(/^watch\.ts: port \d+, server pid/, 15_000);
    server.kill("SIGTERM");
    const line = await watch.waitForLine(/has exited/, 15_000);
    assert.equal(
      line,
      `the server (pid ${server.pid}) has exited: nothing left to watch`,
    );
    const exit = await watch.waitForExit(5000);
    assert.equal(exit.code, 0, exit.stderr);
    assert.equal(exit.stderr, "");
  },
);

serverTest(
  "watch.ts: bad arguments: exit 2, the reason and the usage",
  async () => {
    for (
      const [args, reason] of [
        [[], /name one of PORT, --unix PATH or --pid PID/],
        [["8080", "--pid", "1"], /name one of/],
        [["0x50"], /PORT must be a whole number from 1 to 65535, not "0x50"/],
        [["8080", "--interval", "0"], /--interval must be a number from 0.1/],
        [["8080", "--bogus"], /unknown option '--bogus'/],
        [["8080", "9090"], /expected one PORT/],
        [["--unix", ""], /--unix needs a path/],
      ] as const
    ) {
      const run = await runScript("watch.ts", [...args]);
      assert.equal(run.code, 2, `${args}: ${run.stderr}`);
      const [first, second] = run.stderr.split("\n");
      assert.match(first, /^watch\.ts: /);
      assert.match(first, reason);
      assert.match(second, /^usage: deno run -A watch\.ts/);
      assertNoStackTrace(run.stderr);
    }
    const help = await runScript("watch.ts", ["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /^usage: deno run -A watch\.ts/);
  },
);

/** Runs `watch.ts ARGS` as the user nobody, its cache in `home`. */
async function asNobody(home: string, args: string[]) {
  const output = await new Deno.Command("/usr/bin/setpriv", {
    args: [
      ...["--reuid=65534", "--regid=65534", "--clear-groups"],
      ...[Deno.execPath(), "run", "-A", "watch.ts", ...args, "--once"],
    ],
    cwd: ROOT,
    env: { DENO_DIR: home, HOME: home, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(20_000),
  }).output();
  return { code: output.code, stderr: new TextDecoder().decode(output.stderr) };
}

/** True when this test can run a command as another user (as root can). */
function canSwitchUser(): boolean {
  if (Deno.uid() !== 0) return false;
  try {
    return Deno.statSync("/usr/bin/setpriv").isFile;
  } catch {
    return false;
  }
}

serverTest(
  "watch.ts: another user's server, without the rights: exit 1 saying whose",
  async () => {
    await using server = await startServer("evented.ts");
    // Deno as `nobody` needs a cache directory it may write.
    const home = await Deno.makeTempDir({ prefix: "watch-nobody-" });
    try {
      await Deno.chmod(home, 0o777);
      const { code, stderr } = await asNobody(home, [`${server.port}`]);
      assert.equal(code, 1, stderr);
      assert.equal(
        stderr,
        `watch.ts: port ${server.port} is held by root's server, whose /proc ` +
          "entries you may not read: run watch.ts as root, or with sudo\n",
      );
      const byPid = await asNobody(home, ["--pid", `${server.pid}`]);
      assert.equal(byPid.code, 1, byPid.stderr);
      assert.equal(
        byPid.stderr,
        `watch.ts: pid ${server.pid} is root's, whose /proc entries you may ` +
          "not read: run watch.ts as root, or with sudo\n",
      );
    } finally {
      await Deno.remove(home, { recursive: true });
    }
  },
  { ignore: !canSwitchUser() },
);

serverTest(
  "watch.ts: watching on, a client that takes a gone client's descriptor is seen at once",
  async () => {
    await using server = await startServer("evented.ts");
    await using watch = new Script("watch.ts", [
      `${server.port}`,
      ...["--json", "--interval", "0.1"],
    ]);
    const peers = (line: string): string[] =>
      (JSON.parse(line) as Snapshot).processes.flatMap((p) =>
        p.clients.map((c) => c.peer)
      );
    const portOf = (conn: Deno.Conn) => (conn.localAddr as Deno.NetAddr).port;
    const [first] = await servedClients(server, 1);
    const firstPeer = `127.0.0.1:${portOf(first)}`;
    await eventually(
      () => watch.lines.some((line) => peers(line).includes(firstPeer)),
      10_000,
      "the first client on screen",
    );
    // Snapshots since the last full read of every descriptor's link, so that
    // the next ones would reuse them.
    const from = watch.lines.length;
    await watch.waitForLine(/./, 5000, from + 2);
    first.close();
    const [second] = await servedClients(server, 1); // takes its descriptor
    const secondPeer = `127.0.0.1:${portOf(second)}`;
    try {
      const seenAt = watch.lines.length;
      const line = await watch.waitForLine(
        new RegExp(`"peer":"${secondPeer}"`),
        10_000,
        seenAt,
      );
      // A stale cache would show it only at the next full read (10 snapshots).
      const after = watch.lines.indexOf(line, seenAt) - seenAt;
      assert.ok(after < 4, `seen ${after} snapshots late`);
      assert.ok(!peers(line).includes(firstPeer));
    } finally {
      second.close();
    }
  },
);

serverTest(
  "watch.ts: a reader that goes (watch.ts | head) ends it: exit 0, nothing on stderr",
  async () => {
    await using server = await startServer("evented.ts");
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "watch.ts", `${server.port}`, "--interval", "0.1"],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(15_000),
    }).spawn();
    const reader = child.stdout.getReader();
    await reader.read(); // the first screen, or part of it
    await reader.cancel(); // as head does once it has its lines
    const [status, stderr] = await Promise.all([
      child.status,
      new Response(child.stderr).text(),
    ]);
    assert.equal(status.code, 0, stderr);
    assert.equal(stderr, "");
  },
);
