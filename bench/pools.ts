/**
 * The pools' scenarios, what users of a pool ask first: how evenly does it
 * spread the clients over its workers (S8), and how long does a new client
 * wait while one worker is busy (S9)? Both run on the servers with a fixed
 * set of workers: the pools, and evented.ts, a pool of one.
 *
 * @module
 */
import { type LoadOptions, runLoad } from "../lib/load/load.ts";
import { within } from "../lib/time.ts";
import {
  connectTo,
  exchange,
  loadOn,
  type Scenario,
  type Settings,
  type Status,
} from "./scenarios.ts";
import { type RunningServer, startServer } from "./servers.ts";

/** What a scenario measured on one server: a row without its name. */
type Numbers = Awaited<ReturnType<Scenario["run"]>>;

/**
 * A per-client log line: `[pid P worker K thread T] #ID CLIENT connected`,
 * or `... closed (REASON): ...`. A server without workers names none: it is
 * worker 1 of 1.
 */
const CLIENT_LINE =
  /^\[pid \d+(?: worker (\d+))?(?: thread \d+)?\] #\d+ \S+ (connected$|closed \()/;

/** Counts the clients each worker took, from a verbose server's log lines. */
class WorkerTally {
  #clients = new Map<number, number>(); // connected, by worker number
  #connected = 0;
  #closed = 0;
  #changed = () => {};

  /** Counts the lines `server` prints from now on. */
  constructor(server: RunningServer) {
    server.onLine = (line) => {
      const match = line.match(CLIENT_LINE);
      if (!match) return;
      if (match[2] === "connected") {
        const worker = Number(match[1] ?? 1);
        this.#clients.set(worker, (this.#clients.get(worker) ?? 0) + 1);
        this.#connected++;
      } else this.#closed++;
      this.#changed();
    };
  }

  /**
   * Resolves once at least `clients` connected and every one of them closed
   * (their lines have all arrived), or after `ms`: true when they did.
   */
  async settled(clients: number, ms: number): Promise<boolean> {
    const deadline = performance.now() + ms;
    while (this.#connected < clients || this.#closed < this.#connected) {
      const left = deadline - performance.now();
      if (left <= 0) return false;
      await within(new Promise<void>((wake) => this.#changed = wake), left);
    }
    return true;
  }

  /** Each worker's share of the clients in percent, workers 1 to `workers`. */
  shares(workers: number): number[] {
    const count = Math.max(workers, ...this.#clients.keys());
    const total = this.#connected || 1;
    return Array.from(
      { length: count },
      (_, i) => (this.#clients.get(i + 1) ?? 0) * 100 / total,
    );
  }

  /** Clients connected so far. */
  get connected(): number {
    return this.#connected;
  }
}

/**
 * Pairs of clients that connect at the same moment to `server` (started
 * with `--cpu-ms`, logging every client), each sending one byte: how many
 * of `pairs` pairs went to two different workers, with `restMs` between the
 * pairs, or (0) each pair as soon as the last one's echoes are back.
 */
export async function splitPairs(
  server: RunningServer,
  pairs: number,
  restMs: number,
): Promise<number> {
  const workerOf = new Map<number, number>(); // client port -> worker
  const seen = new Set<() => void>();
  server.onLine = (line) => {
    const match = line.match(PAIR_LINE);
    if (!match) return;
    workerOf.set(Number(match[2]), Number(match[1] ?? 1));
    seen.forEach((wake) => wake());
  };
  const served = async (conn: Deno.Conn) => {
    const port = (conn.localAddr as Deno.NetAddr).port;
    while (!workerOf.has(port)) {
      const line = Promise.withResolvers<void>();
      seen.add(line.resolve);
      if (!(await within(line.promise, 10_000))) throw new Error("no log line");
      seen.delete(line.resolve);
    }
    return workerOf.get(port);
  };
  let split = 0;
  for (let i = 0; i < pairs; i++) {
    if (restMs) await new Promise((rest) => setTimeout(rest, restMs));
    const pair = await Promise.all([
      connectTo(server, 10_000),
      connectTo(server, 10_000),
    ]);
    try {
      const byte = new Uint8Array([i & 0xff]);
      const echoed = await Promise.all(
        pair.map((conn) => exchange(conn, byte, 30_000)),
      );
      if (echoed.includes(false)) throw new Error("a pair's echo differs");
      const [a, b] = await Promise.all(pair.map(served));
      if (a !== b) split++;
    } finally {
      pair.forEach((conn) => conn.close());
    }
  }
  server.onLine = undefined;
  return split;
}

/** A client's `connected` line: its worker (none: 1 of 1) and its port. */
const PAIR_LINE =
  /^\[pid \d+(?: worker (\d+))?(?: thread \d+)?\] #\d+ \S+:(\d+) connected$/;

/** S8's pairs: how many, each byte's `--cpu-ms`, the rest between pairs. */
const PAIRS = { pairs: 40, cpuMs: 100, restMs: 200 };
const QUICK_PAIRS = { pairs: 8, cpuMs: 20, restMs: 50 };

/**
 * S8: the loads of other scenarios (`loads`, by scenario id: S2's 50
 * connections, S4's new connection per request) on a server that logs every
 * client, and the share of the clients each worker took, from those lines.
 * Logging costs the server time, so these are not runs to take rates from:
 * the rates are S2's and S4's own, measured `--quiet`. Then pairs of clients
 * that connect at the same moment, on the server with `--cpu-ms`: how many
 * pairs two workers share, rested and back to back. Headline: the share of
 * the busiest worker in the last load (even: 100 % / workers).
 */
export function spread(
  id: string,
  title: string,
  load: string,
  loads: Record<string, Partial<LoadOptions>>,
): Scenario {
  const last = Object.keys(loads).at(-1)!.toLowerCase();
  return {
    id,
    title,
    load,
    metric: `${last}MaxSharePercent`,
    unit: `% of ${last.toUpperCase()}'s clients on the busiest worker`,
    lowerIsBetter: true,
    workersOnly: true,
    verbose: true,
    async run(server, settings, status) {
      const workers = server.spec.workers ?? 1;
      const row: Numbers = { workers };
      for (const [source, options] of Object.entries(loads)) {
        status(`${source}'s load`);
        const tally = new WorkerTally(server);
        const report = await runLoad(loadOn(server, settings, options));
        // Every connection the load opened and was answered on is logged,
        // and closed by now: wait for the last lines to come through.
        const opened = options.newConnection
          ? report.requests
          : options.connections ?? 1;
        const complete = await tally.settled(opened, 5000);
        const shares = tally.shares(workers);
        const key = source.toLowerCase();
        Object.assign(row, {
          [`${key}Clients`]: tally.connected,
          [`${key}SharesPercent`]: shares,
          [`${key}MinSharePercent`]: tally.connected
            ? Math.min(...shares)
            : null,
          [`${key}MaxSharePercent`]: tally.connected
            ? Math.max(...shares)
            : null,
          [`${key}Errors`]: report.errors,
          [`${key}LogComplete`]: complete,
        });
        row.mismatches = Number(row.mismatches ?? 0) + report.mismatches;
      }
      server.onLine = undefined;
      // Pairs of simultaneous clients, on the same server with --cpu-ms:
      // after a rest, and back to back (after the work of the last pair).
      const { pairs, cpuMs, restMs } = settings.quick ? QUICK_PAIRS : PAIRS;
      status("pairs of clients at once");
      const busy = await startServer(server.spec, cpuMs, true);
      try {
        Object.assign(row, {
          pairs,
          pairCpuMs: cpuMs,
          restedPairsSplit: await splitPairs(busy, pairs, restMs),
          backToBackPairsSplit: await splitPairs(busy, pairs, 0),
        });
      } finally {
        await busy.stop();
      }
      return row;
    },
  };
}

/**
 * S9: the server runs with `--cpu-ms cpuMs`; one client keeps its worker
 * busy (it sends a byte, waits for the echo, sends the next: its worker
 * burns the CPU nearly all the time), and new clients connect one after the
 * other and time their first echo. Each new client's own echo costs `cpuMs`
 * too, on whichever worker took it: what it waited beyond that is the time
 * it spent queued behind the busy client. Headline: the median wait.
 */
export function busyWorker(
  id: string,
  title: string,
  load: string,
  cpuMs: number,
): Scenario {
  return {
    id,
    title,
    load,
    metric: "medianWaitMs",
    unit: "ms a new client waits beyond its own CPU time",
    lowerIsBetter: true,
    log: true, // a fraction of a millisecond against the busy client's burn
    cpuMs,
    workersOnly: true,
    run: (server, settings, status) =>
      busyWorkerWait(server, settings, status, cpuMs),
  };
}

async function busyWorkerWait(
  server: RunningServer,
  settings: Settings,
  status: Status,
  cpuMs: number,
): Promise<Numbers> {
  // Enough for any wait behind one busy client, short of a server that hangs.
  const timeoutMs = cpuMs * 4 + 5000;
  const busy = await connectTo(server, 10_000);
  let errors = 0;
  let mismatches = 0;
  const samples: number[] = [];
  let stopped = false;
  let busyLoop: Promise<void> = Promise.resolve();
  try {
    // The busy client: served once before the clock starts, then kept busy;
    // each byte is on its way to the worker a moment after the last echo.
    const byte = new Uint8Array([42]);
    if (!(await exchange(busy, byte, timeoutMs))) mismatches++;
    busyLoop = (async () => {
      while (!stopped) await exchange(busy, byte, timeoutMs);
    })().catch(() => {}); // closed under it at the end
    for (let i = 0; i < settings.busyProbes; i++) {
      status(`new client ${i + 1} of ${settings.busyProbes}`);
      const message = new Uint8Array(8).map((_, j) => j * 31 + i);
      const started = performance.now();
      let conn: Deno.Conn | undefined;
      try {
        conn = await connectTo(server, timeoutMs);
        if (!(await exchange(conn, message, timeoutMs))) mismatches++;
        samples.push(Math.max(0, performance.now() - started - cpuMs));
      } catch {
        errors++;
      } finally {
        try {
          conn?.close();
        } catch { /* closed by exchange's timeout */ }
      }
    }
  } finally {
    stopped = true;
    await within(busyLoop, timeoutMs);
    try {
      busy.close();
    } catch { /* closed by exchange's timeout */ }
    await busyLoop;
  }
  const sorted = samples.toSorted((a, b) => a - b);
  return {
    busyCpuMs: cpuMs,
    probes: samples.length,
    // Queued behind the busy client: at least half of its burn.
    probesWaited: samples.filter((ms) => ms >= cpuMs / 2).length,
    medianWaitMs: sorted.length ? sorted[sorted.length >> 1] : null,
    maxWaitMs: sorted.length ? sorted[sorted.length - 1] : null,
    samplesMs: samples,
    errors,
    mismatches,
  };
}
