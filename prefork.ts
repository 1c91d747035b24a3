#!/usr/bin/env -S deno run --allow-net --allow-run --unstable-net
/**
 * Pre-forked echo server: a supervising parent and N worker processes that
 * all accept on the same port.
 *
 * The pre-forked pool (the seeds' "constrained multitasking", Apache's
 * prefork, nginx's master and workers): start N server processes once, up
 * front, so that no client waits for a process to start, clients run on every
 * core, and a crash is confined to one worker's clients. The price is N
 * processes' memory whether clients come or not, and a fixed pool: each worker
 * is an event loop, so a client that burns CPU stalls the clients of its
 * worker, and only those.
 *
 * How it differs from C. There the parent listens, then fork()s: every child
 * inherits the one listening socket and blocks in accept() on it, and the
 * kernel gives each connection to a child that is free. Deno can neither fork
 * nor hand a socket to a child, so each worker opens its own listener on the
 * same port with SO_REUSEPORT (`Deno.listen({ reusePort: true })`, Linux), as
 * nginx's workers do with `listen ... reuseport`. Each listener then has its
 * own accept queue, and the kernel hashes every new connection (by its
 * addresses and ports) to one of them: the load spreads without a shared lock
 * or a thundering herd, but blindly. A connection hashed to a busy worker
 * waits for that worker while another one idles (the tests show it with
 * --cpu-ms), and connections still queued on a worker that dies are reset.
 *
 * The parent serves nobody. It finds the port (binds it once without
 * reusePort, which also fails if anybody holds it, and closes it: a listener
 * kept open would get its share of connections and never accept them),
 * starts the workers as `deno run --allow-net=HOST:PORT --unstable-net
 * prefork.ts --as-worker N PORT ...` (the hidden worker role: the network
 * permission for its own address and nothing else), forwards their log lines
 * (each names the worker's pid), and prints the banner once all of them
 * listen. It restarts a worker that exits (after 0.1 s, doubling up to 5 s
 * while it keeps failing), and gives up, exit 1, when one fails to start 5
 * times in a row (the port was taken). On SIGINT/SIGTERM it closes the
 * workers' stdin: each stops accepting, lets its clients finish for --grace
 * seconds and exits; the parent reaps them all and exits 0 (a second signal
 * ends the clients at once). A worker whose stdin ends because the parent
 * died, even of SIGKILL, stops the same way: no orphan keeps the port.
 *
 * Why a parent can die of the SIGINT it listens for. A first prototype was
 * killed by SIGINT in 1 run of 4 to 10, leaving its workers serving. Until
 * `Deno.addSignalListener` has run, SIGINT and SIGTERM have their default
 * action, death; and the first call sets up Deno's signal machinery lazily,
 * taking ~0.4 ms (the next one 0.02 ms) before it installs the handler. The
 * prototype printed its banner, then added its listener: a test (or a
 * script) that signals on seeing the banner wins that race often. Measured
 * with 40 runs each: banner then listener, 15 deaths (4 of 30 in another
 * series); an await in between, 26; the workers' own banners forwarded before
 * the parent had a listener, 38; listener first, 0, as for this script. So
 * the listeners come before anything is started or printed. And a worker
 * runs in a session of its own (setsid): a Ctrl-C at the terminal signals
 * the whole foreground process group, which would kill workers of the same
 * group under their clients while the parent drains (their clients were
 * reset); now it reaches only the parent, which stops them in order.
 *
 * Run:  deno run -A prefork.ts 8080 --workers 4
 * Try:  `nc 127.0.0.1 8080` a few times: the log names the worker (and its
 *       pid) serving each. `kill -9` a worker: its clients are cut, the others
 *       go on, a new worker listens 0.14 s later. With `--cpu-ms 200`, two
 *       clients typing at once are answered together when they landed on two
 *       workers, one after the other when on the same one.
 *
 * Measured here (2 cores shared with other work, Deno 2.9.6, client.ts load):
 * the banner comes 65-110 ms after start with 2 workers (evented.ts: ~30);
 * idle, the parent holds ~41 MB RSS and each worker ~38 MB (~54 MB after
 * load). With --cpu-ms 5 and 8 connections, 2 workers answer ~260 requests/s
 * against evented.ts's ~160 (one core's ceiling: 200). Plain echo is no
 * faster (~30k requests/s of 64 B, ~400 MB/s of 64 KiB, ~4k new
 * connections/s, all within noise of evented.ts), as the load generator
 * needs a core of the two itself; the p99 latency is higher (2-3 ms, against
 * 0.6-0.8 ms).
 */
import { parseServerArgs, type ServerOptions } from "./cli.ts";
import {
  forEachLine,
  spawnChildRole,
  spawnErrorText,
  terminateChild,
  untilStdinCloses,
} from "./children.ts";
import { describeExit, formatAddr, Logger } from "./log.ts";
import { listenOrExit, onShutdownSignal, startServer } from "./server.ts";
import { sleep } from "./time.ts";

/** The hidden first argument that makes this script a worker: `--as-worker N`. */
const WORKER_ROLE = "--as-worker";
/** Restart delay after a worker's first exit; doubles while it keeps failing. */
const FIRST_RESTART_MS = 100;
const MAX_RESTART_MS = 5_000;
/** A worker that served this long is healthy again: the delay starts over. */
const HEALTHY_AFTER_MS = 10_000;
/** A worker that fails to start this many times in a row: give up. */
const START_ATTEMPTS = 5;
/** How long a stopping worker may overrun its grace period before SIGTERM. */
const OVERRUN_MS = 5_000;
/** A worker's "stopping" line, text or JSON: it has closed its listener. */
const STOPPING_LINE =
  /^\[pid \d+ worker \d+\] stopping \(|^\{"event":"stopping"/;

const spec = {
  script: "prefork.ts",
  summary:
    "Pre-forked echo server: a supervisor and N worker processes sharing the port.",
  defaultMaxConns: 1000,
  noUnix: "workers share a TCP port with SO_REUSEPORT, which Unix sockets lack",
  denoFlags: "--allow-net --allow-run --unstable-net",
  options: {
    workers: {
      type: "count",
      min: 1,
      max: 1024,
      usage:
        `N             worker processes (default: number of CPUs, here ${navigator.hardwareConcurrency});
                          --max-conns applies to each worker, like nginx's
                          worker_connections`,
    },
  },
} as const;

if (Deno.args[0] === WORKER_ROLE) {
  await serveAsWorker(
    Number(Deno.args[1]),
    await parseServerArgs(Deno.args.slice(2), spec),
  );
} else {
  await supervise(await parseServerArgs(Deno.args, spec));
}

// ---------------------------------------------------------------------------
// The worker: an event-loop echo server on the shared port
// ---------------------------------------------------------------------------

async function serveAsWorker(n: number, options: ServerOptions): Promise<void> {
  // Before our banner, as in every server: until we listen, a stop request
  // finds nobody to drain.
  let stop = (_why: string): void => Deno.exit(0);
  onShutdownSignal((signal) => stop(signal));
  const server = await startServer(options, {
    who: { pid: Deno.pid, worker: n },
    reusePort: true,
    signals: false,
  });
  // The first request drains; a signal after it ends the clients at once
  // (the parent's second SIGINT/SIGTERM arrives as our SIGTERM).
  let draining = false;
  stop = (why) => {
    const drained = server.shutdown(why);
    if (!draining) drained.then(() => Deno.exit(0));
    draining = true;
  };
  // EOF: the parent closed our stdin, or died.
  untilStdinCloses().then(() => draining || stop("supervisor"));

  for await (const conn of server.clients()) {
    server.serve(conn); // not awaited: a worker serves its clients together
  }
}

// ---------------------------------------------------------------------------
// The supervisor
// ---------------------------------------------------------------------------

async function supervise(options: ServerOptions): Promise<void> {
  const count = (options.extra.workers as number | undefined) ??
    navigator.hardwareConcurrency;
  const log = new Logger(options);
  const output = heldOutput();
  const workers = new Map<number, Worker>();
  const restarts = new AbortController();
  let stopping = false;
  let exitCode = 0;

  // First of all, before any worker exists or anything is printed: from now
  // on no SIGINT/SIGTERM can kill us and leave workers behind.
  onShutdownSignal((signal, count) =>
    count === 1 ? stopPool(signal) : hurryPool()
  );

  // The port: 0 becomes a free one, and a port anybody holds (even another
  // reusePort group) fails here with one line. Closed again at once.
  const probe = await listenOrExit(options);
  const addr = probe.addr as Deno.NetAddr;
  probe.close();
  const workerArgs = [
    String(addr.port),
    ...["--host", addr.hostname, "--max-conns", String(options.maxConns)],
    ...["--idle-timeout", String(options.idleTimeout)],
    ...["--cpu-ms", String(options.cpuMs), "--grace", String(options.grace)],
    ...(options.nodelay ? ["--nodelay"] : []),
    ...(options.keepalive ? ["--keepalive"] : []),
    ...(options.json ? ["--json"] : []),
    ...(options.quiet ? ["--quiet"] : []),
  ];
  const prefix = `${spec.script}: `;
  const workerFlags = [`--allow-net=${formatAddr(addr)}`, "--unstable-net"];

  let listening = 0;
  for (let n = 1; n <= count; n++) keepWorker(n);

  /** Runs worker `n`, and runs it again whenever it exits, until we stop. */
  async function keepWorker(n: number): Promise<void> {
    let delay = FIRST_RESTART_MS;
    let failedStarts = 0;
    let listenedOnce = false;
    while (!stopping) {
      let worker: Worker;
      try {
        worker = spawnWorker(
          [WORKER_ROLE, String(n), ...workerArgs],
          workerFlags,
          output,
        );
      } catch (error) {
        return giveUp(`cannot start worker ${n}: ${spawnErrorText(error)}`);
      }
      workers.set(n, worker);
      const { pid } = worker.process;
      if (await worker.ready) {
        failedStarts = 0;
        output.emit(() =>
          log.event("worker-listening", `worker ${n} (pid ${pid}) listening`, {
            worker: n,
            workerPid: pid,
          })
        );
        if (!listenedOnce) {
          listenedOnce = true;
          if (++listening === count) printBanner(); // the last one is up
        }
      }
      const status = await worker.exited;
      workers.delete(n);
      if (stopping) return;
      const ran = performance.now() - worker.started;
      const { text, fields } = describeExit(status, ran);
      if (!worker.listening && ++failedStarts === START_ATTEMPTS) {
        // Its own words ("cannot listen on ...: address in use"), if any.
        return giveUp(
          worker.startErrors.findLast((line) => line.startsWith(prefix))
            ?.slice(prefix.length) ??
            `worker ${n} ${text} before listening, ${START_ATTEMPTS} times in a row`,
        );
      }
      if (worker.listening && ran >= HEALTHY_AFTER_MS) delay = FIRST_RESTART_MS;
      const why = worker.listening
        ? ""
        : ` before listening${
          worker.startErrors.length ? ` (${worker.startErrors.at(-1)})` : ""
        }`;
      output.emit(() =>
        log.event(
          "worker-exited",
          `worker ${n} (pid ${pid}) ${text}${why}; restarting in ${delay} ms`,
          { worker: n, workerPid: pid, ...fields, restartMs: delay },
          true,
        )
      );
      await sleep(delay, restarts.signal);
      delay = Math.min(MAX_RESTART_MS, delay * 2);
    }
  }

  function printBanner(): void {
    if (stopping) return;
    log.listening(addr, ["prefork", `${count} workers`, `pid ${Deno.pid}`], {
      model: "prefork",
      workers: count,
      maxConns: options.maxConns,
    });
    output.release();
  }

  /**
   * Tells every worker to stop (EOF on its stdin), says "stopping" once none
   * of them accepts any more, waits until all have drained and exited, exits.
   */
  async function stopPool(why: string): Promise<void> {
    if (stopping) return;
    stopping = true;
    restarts.abort();
    output.hold(); // the workers' "stopping" lines come after ours
    const running = [...workers.values()];
    const reaped = running.map((worker) => {
      worker.process.stdin.close().catch(() => {}); // it exited already
      // One that overruns its grace period gets SIGTERM, then SIGKILL.
      return terminateChild(worker.process, {
        termAfterMs: options.grace * 1000 + OVERRUN_MS,
      }).then(() => worker.exited);
    });
    await Promise.all(running.map((worker) => worker.stoppedAccepting));
    log.event(
      "stopping",
      `stopping (${why}): ${running.length} worker(s) no longer accept; their clients get ${options.grace} s to finish`,
      { reason: why, workers: running.length, grace: options.grace },
      true,
    );
    output.release();
    await Promise.all(reaped);
    log.event("stopped", "stopped", {}, true);
    Deno.exit(exitCode);
  }

  /** A second signal: every worker ends its clients now. */
  function hurryPool(): void {
    for (const worker of workers.values()) {
      try {
        worker.process.kill("SIGTERM");
      } catch { /* exited meanwhile */ }
    }
  }

  /** One line on stderr; the pool stops and we exit 1. */
  function giveUp(reason: string): void {
    if (stopping) return;
    printError(`${spec.script}: ${reason}`);
    exitCode = 1;
    stopPool("giving up");
  }
}

/**
 * The supervisor's stdout: its own lines and its workers', whole lines only,
 * held back while the pool changes state (until the banner; while stopping).
 */
interface Output {
  /** Writes now, or when released. */
  emit(write: () => void): void;
  hold(): void;
  release(): void;
}

function heldOutput(): Output {
  let held: (() => void)[] | undefined = [];
  return {
    emit: (write) => held ? held.push(write) : write(),
    hold: () => held ??= [],
    release() {
      const writes = held ?? [];
      held = undefined;
      writes.forEach((write) => write());
    },
  };
}

/** One worker process, its output forwarded line by line. */
interface Worker {
  process: Deno.ChildProcess;
  started: number;
  /** True once it printed its banner. */
  listening: boolean;
  /** What it wrote on stderr before it listened: why it could not start. */
  startErrors: string[];
  /** Resolves true when it listens, false if it exits first. */
  ready: Promise<boolean>;
  /** Resolves once it no longer accepts: its "stopping" line, or its exit. */
  stoppedAccepting: Promise<void>;
  /** Resolves once it has exited and is reaped, its output all forwarded. */
  exited: Promise<Deno.CommandStatus>;
}

/** Spawns this script in the worker role; throws if it cannot be started. */
function spawnWorker(
  args: string[],
  denoFlags: string[],
  output: Output,
): Worker {
  const child = spawnChildRole(import.meta.filename ?? import.meta.url, args, {
    denoFlags,
  });
  const ready = Promise.withResolvers<boolean>();
  const stoppedAccepting = Promise.withResolvers<void>();
  const worker: Worker = {
    process: child,
    started: performance.now(),
    listening: false,
    startErrors: [],
    ready: ready.promise,
    stoppedAccepting: stoppedAccepting.promise,
    exited: reap(),
  };
  async function reap(): Promise<Deno.CommandStatus> {
    const stdout = forEachLine(child.stdout, (line) => {
      if (!worker.listening) {
        worker.listening = true; // its banner: ours speaks for all of them
        ready.resolve(true);
        return;
      }
      if (STOPPING_LINE.test(line)) stoppedAccepting.resolve();
      output.emit(() => print(line));
    });
    const stderr = forEachLine(child.stderr, (line) => {
      if (worker.listening) output.emit(() => printError(line));
      else worker.startErrors.push(line);
    });
    const status = await child.status;
    await Promise.all([stdout, stderr]);
    ready.resolve(false);
    stoppedAccepting.resolve();
    return status;
  }
  return worker;
}

function print(line: string): void {
  try {
    console.log(line);
  } catch { /* stdout closed: keep supervising */ }
}

function printError(line: string): void {
  try {
    console.error(line);
  } catch { /* stderr closed */ }
}
