#!/usr/bin/env -S deno run -A --unstable-net --unstable-worker-options --v8-flags=--no-memory-pool-share-memory-on-teardown
/**
 * Threaded echo server: a Web Worker per client, or a pool of N workers.
 *
 * Thread per client (CS:APP's `echoservert.c`): the main thread accepts, and
 * every client gets a thread of its own running the echo service, so a client
 * that burns CPU (`--cpu-ms`) slows nobody else down until the cores run out.
 * In Deno a thread is a Web Worker, a whole isolate (~20 ms and ~10 MiB to
 * start), and a socket cannot move to one: the main thread relays each
 * client's bytes over a MessagePort, with credits for backpressure. `--pool N`
 * (`echoservert-pre.c`) starts N workers once, each accepting on the shared
 * port (SO_REUSEPORT, Linux): no start per client and no relay, but clients on
 * one worker share its thread. More in docs/models/threaded.md.
 *
 * Run:  deno run -A threaded.ts 8080            (a worker per client)
 *       deno run -A threaded.ts 8080 --pool 4   (four workers, started once)
 * Try:  `--cpu-ms 200` and type in two `nc -N 127.0.0.1 8080` at once: both echo
 *       after 200 ms. `top -H -p PID` shows the log's "worker N" as worker-N.
 *       With `--pool 2`, `kill -USR2 PID` makes the first worker throw: its
 *       clients are cut, a new worker takes its place, the others go on.
 *
 * Copy with: lib/ (the folder, as it is)
 * Flags without deno.json: the shebang's (-A: /proc tells thread ids and
 * `ulimit -n` only then). MIT licensed; see LICENSE.
 */
import * as cli from "./lib/cli.ts";
import { echo } from "./lib/echo.ts";
import { listenAt, listenOrExit } from "./lib/listen.ts";
import { formatAddr, Logger } from "./lib/log.ts";
import * as pool from "./lib/pool/supervisor.ts";
import { role } from "./lib/role.ts";
import { EchoServer } from "./lib/serve.ts";
import type { PortStream } from "./lib/thread/port_stream.ts";
import * as threads from "./lib/thread/thread.ts";

// A worker that only echoes needs no permission but to load this module.
const ECHO_ONLY: Deno.PermissionOptionsObject = { import: "inherit" };

if (role() === "thread") threads.serveInWorker(echoOnPort, acceptInWorker);
else await main();

/** pthread_create: a Worker thread running this module with `permissions`. */
function startThread(permissions = ECHO_ONLY): threads.Thread {
  const worker = new Worker(import.meta.url, {
    type: "module",
    deno: { permissions },
  });
  return new threads.Thread(worker);
}

/** echoservert.c: the main thread accepts; every client gets a new thread. */
async function threadPerClient(options: cli.ServerOptions): Promise<void> {
  await threads.tryOut(startThread(), spec().script); // before the banner
  const listener = await listenOrExit(options, (at) => Deno.listen(at));
  const banner = ["a worker per client"];
  const server = new EchoServer(options, listener, { banner });
  const live = new Set<threads.Thread>();
  threads.Thread.onFaultSignal(() => live.values().next().value); // the oldest
  for (;;) {
    const conn = await server.accept(); // null once a stop signal came
    if (!conn) break;
    server.serve(conn, async (session) => {
      const thread = startThread();
      live.add(thread);
      thread.logServing(server.log, session, true);
      try {
        await threads.relayToThread(session, thread, options.cpuMs); // echoOnPort
      } finally {
        live.delete(thread);
        session.close();
        await thread.terminate(); // its fds are free before the next starts
      }
    });
  }
}

/** The thread routine: echo over the worker's end of a client's port. */
function echoOnPort(stream: PortStream, cpuMs: number): Promise<void> {
  return echo(stream, stream, { bytesIn: 0, bytesOut: 0 }, cpuMs);
}

/** echoservert-pre.c, the kernel as the shared buffer: N workers accept. */
async function listeningPool(options: cli.ServerOptions, size: number) {
  const ids = new SharedArrayBuffer(4); // one `#id` count for every worker
  const workers = await pool.supervise({
    options,
    size,
    banner: [`pool of ${pool.workerCount(size)}`],
    fields: { pool: size },
    start(slot, addr) {
      const net = [formatAddr(addr)]; // its one permission besides loading
      const thread = startThread({ ...ECHO_ONLY, net });
      const { hostname: host, port } = addr;
      const maxConns = pool.shareOf(options.maxConns, size, slot);
      thread.listen({ ...options, host, port, maxConns }, ids);
      return thread;
    },
  });
  threads.Thread.onFaultSignal(() => workers.workers[0]);
}

/** A pool worker's thread: accepts on the shared port itself, and echoes. */
async function acceptInWorker({ options, start, obey }: threads.PoolStart) {
  const at = listenAt(options);
  const listener = Deno.listen({ ...at, reusePort: true }); // the kernel picks
  const server = new EchoServer(options, listener, start);
  await obey(server); // until the banner is out
  for (;;) {
    const conn = await server.accept(); // null once told to stop
    if (!conn) break;
    server.serve(conn, (client) => echo(conn, conn, client, options.cpuMs));
  }
}

/** echoservert-pre.c on a Unix socket: the main thread hands out clients. */
async function relayPool(options: cli.ServerOptions, size: number) {
  const echoThread = () => {
    const thread = startThread();
    thread.ready.then(() => thread.answer("listening"), () => {}); // for ports
    return thread;
  };
  const giveUp = (why: string) => cli.fail(spec().script, why);
  const workers = new pool.Pool(size, echoThread, new Logger(options), giveUp);
  await workers.ready;
  const listener = await listenOrExit(options, (at) => Deno.listen(at));
  const server = new EchoServer(options, listener, {
    banner: [`pool of ${pool.workerCount(size)}`, "fed by the main thread"],
    onStop: () => workers.end(),
  });
  workers.accept();
  threads.Thread.onFaultSignal(() => workers.workers[0]);
  for (;;) {
    const conn = await server.accept();
    if (!conn) break;
    server.serve(conn, (session) => {
      const idle = workers.workers.sort((a, b) => a.clients - b.clients)[0];
      if (!idle) throw new Error("no pool worker is running");
      idle.logServing(server.log, session);
      return threads.relayToThread(session, idle, options.cpuMs); // echoOnPort
    });
  }
}

async function main(): Promise<void> {
  const options = await cli.parseServerArgs(Deno.args, spec());
  const size = options.extra.pool as number | undefined;
  if (size) cli.refuseFewerConns(spec(), options, `--pool ${size}`, size);
  if (size === undefined) await threadPerClient(options);
  else if (options.unix === undefined) await listeningPool(options, size);
  else await relayPool(options, size);
}

function spec(): cli.ModelSpec {
  const each = threads.Thread.FDS + 1; // a Worker's own, and a client's socket
  return {
    script: "threaded.ts",
    summary: "Threaded echo server: a Web Worker per client, " +
      "or a pool of N workers that each accept (--pool N).",
    // A worker per client is ~10 MiB: 64 are 0.7 GiB. A pool's: a few KiB.
    defaultMaxConns: (extra) => extra.pool === undefined ? 64 : 10_000,
    fds: ({ pool }) =>
      pool ? { fixed: Number(pool) * each } : { perClient: each },
    options: {
      pool: {
        type: "count",
        min: 1,
        max: 256,
        usage:
          `N                workers started up front (1 to 256), each accepting
                          on the port; --max-conns (default 10000) is split
                          among them. Default: a worker per client (--max-conns
                          default 64)`,
      },
    },
    denoFlags: "-A --unstable-net --unstable-worker-options " +
      "--v8-flags=--no-memory-pool-share-memory-on-teardown",
  };
}
