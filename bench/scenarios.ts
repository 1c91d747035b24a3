/**
 * The bench's scenarios and how each one is measured on one running server:
 * a steady load through load.ts (S1-S5), idle clients held open (S6), and a
 * second client's wait behind a first one (S7). The pools' own scenarios
 * (S8, S9) are in pools.ts.
 *
 * @module
 */
import { type LoadOptions, runLoad } from "../lib/load/load.ts";
import { writeAll } from "../lib/echo.ts";
import { sleep } from "../lib/time.ts";
import {
  cpuMs,
  meminfoBytes,
  settledRss,
  treeCpuMs,
  treeMemory,
} from "./procfs.ts";
import type { RunningServer } from "./servers.ts";

/** How long and how big the runs are. */
export interface Settings {
  /** Seconds of load per timed run. */
  duration: number;
  /** Seconds of unmeasured load before each timed run. */
  warmup: number;
  /** Idle clients S6 tries to hold. */
  idleClients: number;

  /** Seconds the first client of S7 stays idle. */
  holdSeconds: number;
  /** Times each scenario runs on each server (the median row is kept). */
  rounds: number;
  /** S7 repetitions (the median is reported). */
  waitRepeats: number;
  /** S9's new clients, one after the other, beside the busy one. */
  busyProbes: number;
  /** N of `threaded --pool N` and `prefork --workers N`. */
  workers: number;
  /** A smoke run (`--quick`), not a measurement. */
  quick: boolean;
}

/** One server's numbers in one scenario. Absent numbers are null. */
export interface Row {
  server: string;
  label: string;
  reference: boolean;
  /** Why there are no numbers (the server failed to start, ...). */
  note?: string;
  [metric: string]: unknown;
}

/** What a scenario measured on one server: a row without its name. */
type Numbers = Omit<Row, "server" | "label" | "reference">;

/** Shows what is running now (the progress line). */
export type Status = (text: string) => void;

/** One column of the bench's table: a load, and how it is measured. */
export interface Scenario {
  id: string;
  title: string;
  /** What the load is, for the table heading. */
  load: string;
  /** The headline number: what the chart shows, and the median picks. */
  metric: string;
  /** The headline number's unit. */
  unit: string;
  /** Less of the headline number is better (memory, waiting). */
  lowerIsBetter?: boolean;
  /** Charted on a log scale: the rows span orders of magnitude. */
  log?: boolean;
  /** The `--cpu-ms` the servers run with (S5): only those that take it. */
  cpuMs?: number;
  /** Runs only on the servers with a fixed set of workers (S8, S9). */
  workersOnly?: boolean;
  /** Starts the servers logging every client (not `--quiet`), to count them. */
  verbose?: boolean;
  /** Measures `server`, saying what it does through `status`. */
  run(
    server: RunningServer,
    settings: Settings,
    status: Status,
  ): Promise<Numbers>;
}

const UNITS: Record<string, string> = {
  requestsPerSecond: "requests/s",
  mbPerSecond: "MB/s",
  connectionsPerSecond: "connections/s",
};

/**
 * load.ts's options for `options` on `server`: 64 B messages on one
 * connection for the run's duration, unless `options` say otherwise.
 */
export function loadOn(
  server: RunningServer,
  settings: Settings,
  options: Partial<LoadOptions>,
): LoadOptions {
  return {
    host: server.host,
    port: server.port,
    connections: 1,
    size: 64,
    duration: settings.duration,
    // A client that waits (iterative) shows up as latency, not as an error.
    timeoutMs: settings.duration * 1000 + 10_000,
    ...options,
  };
}

/**
 * A steady load (load.ts) of `options` on the server, started with
 * `--cpu-ms` when `serverCpuMs` is set, with `metric` as its headline: a
 * short unmeasured warm-up (so that neither side's code runs cold), then
 * the measured run, with the CPU time both processes spent on it.
 */
export function steadyLoad(
  id: string,
  title: string,
  load: string,
  options: Partial<LoadOptions>,
  metric = "requestsPerSecond",
  serverCpuMs?: number,
): Scenario {
  return {
    id,
    title,
    load,
    metric,
    unit: UNITS[metric],
    cpuMs: serverCpuMs,
    async run(server, settings, status) {
      const base = loadOn(server, settings, options);
      if (settings.warmup > 0) {
        status("warming up");
        await runLoad({ ...base, duration: settings.warmup });
      }
      const loadBefore = cpuMs("self");
      const serverBefore = treeCpuMs(server.pid);
      const report = await runLoad({
        ...base,
        onProgress: (done) => status(`${done} requests`),
      });
      const loadCpu = cpuMs("self") - loadBefore;
      const serverCpu = treeCpuMs(server.pid) - serverBefore;
      const { requests, seconds, latencyMs } = report;
      const perRequest = (ms: number) => requests ? ms * 1000 / requests : null;
      return {
        requestsPerSecond: report.requestsPerSecond,
        mbPerSecond: report.mbPerSecond,
        ...(options.newConnection
          ? { connectionsPerSecond: report.requestsPerSecond }
          : {}),
        p50Ms: requests ? latencyMs.p50 : null,
        p99Ms: requests ? latencyMs.p99 : null,
        requests,
        errors: report.errors,
        failures: report.failures,
        mismatches: report.mismatches,
        seconds,
        // CPU of the load process and of the server (all its processes) over
        // the same run: the load engine must not be what limits the rate, and
        // a model can use more than one core only if the load leaves it some.
        loadCpuMs: loadCpu,
        serverCpuMs: serverCpu,
        loadCpuUsPerRequest: perRequest(loadCpu),
        serverCpuUsPerRequest: perRequest(serverCpu),
        loadCores: loadCpu / 1000 / seconds,
        serverCores: serverCpu / 1000 / seconds,
      };
    },
  };
}

/**
 * S6: opens idle clients in batches, each proven served by one echoed byte,
 * until `idleClients` are held, a batch is not fully served (the server holds
 * no more: `--max-conns`, or one client at a time), or the server's memory
 * passes a quarter of what the machine has free. Then one active client runs:
 * served at once by the models that multiplex, left waiting by those whose
 * every slot an idle client holds. Headline: RSS per idle client. Then, with
 * the idle clients gone, the memory a served client leaves behind (see
 * {@linkcode servedMemory}): what a server that runs for days grows by.
 */
export function idleClients(id: string, title: string, load: string): Scenario {
  return {
    id,
    title,
    load,
    metric: "kbPerIdleClient",
    unit: "KB of RSS per idle client",
    lowerIsBetter: true,
    // Kilobytes against tens of megabytes: on a linear scale the models
    // that matter would be invisible.
    log: true,
    async run(server, settings, status) {
      const idle = await idleMemory(server, settings, status);
      const served = servedClients(settings.quick);
      return { ...idle, ...await servedMemory(server, served, status) };
    },
  };
}

async function idleMemory(
  server: RunningServer,
  settings: Settings,
  status: Status,
): Promise<Numbers> {
  const before = treeMemory(server.pid);
  const memoryCap = (meminfoBytes("MemAvailable") ?? 4 * 1024 ** 3) / 4;
  const conns: Deno.Conn[] = [];
  const pending: Promise<void>[] = [];
  let served = 0;
  let stoppedBy = "";
  let closing = false;
  // Longer than TCP's first SYN retransmission (1 s): a full backlog delays
  // connects by that much without the server being full.
  const stallMs = 1500;
  try {
    while (conns.length < settings.idleClients) {
      const batch = Math.min(50, settings.idleClients - conns.length);
      let answered = 0;
      let settled = 0;
      let lastEvent = performance.now();
      let wake = () => {};
      const idleClient = async () => {
        try {
          const conn = await connectTo(server, 5000);
          conns.push(conn);
          // A connect the kernel completed after the scenario ended.
          if (closing) conn.close();
          await conn.write(new Uint8Array([42]));
          lastEvent = performance.now();
          if ((await conn.read(new Uint8Array(1))) === 1) {
            answered++;
            served++;
          }
        } catch { /* refused, reset or closed by us: not served */ }
        settled++;
        lastEvent = performance.now();
        wake();
      };
      for (let i = 0; i < batch; i++) pending.push(idleClient());
      // Wait while clients keep being served; a batch that stops making
      // progress for stallMs means the server holds no more. The first echo
      // of a batch may take longer: a Worker or process per client starts
      // fifty at once.
      const batchStarted = performance.now();
      while (
        settled < batch &&
        (performance.now() - lastEvent < stallMs ||
          (answered === 0 && performance.now() - batchStarted < 10_000))
      ) {
        const woken = new Promise<void>((resolve) => wake = resolve);
        await Promise.race([woken, sleep(50)]);
      }
      status(`${served} idle clients held`);
      if (answered < batch) {
        stoppedBy = "no more served";
        break;
      }
      if (treeMemory(server.pid).rss > memoryCap) {
        stoppedBy = "memory cap";
        break;
      }
    }
    const held = treeMemory(server.pid);
    status("active client");
    const report = await runLoad({
      host: server.host,
      port: server.port,
      connections: 1,
      size: 64,
      duration: settings.duration,
      timeoutMs: Math.min(2000, settings.duration * 1000),
    });
    // Below ten clients the difference is noise, not a cost per client.
    const perClient = (grown: number) =>
      served >= 10 ? grown / served / 1000 : null;
    return {
      idleClients: conns.length,
      idleServed: served,
      stoppedBy: stoppedBy || null,
      rssBeforeBytes: before.rss,
      rssHeldBytes: held.rss,
      pssBeforeBytes: before.pss,
      pssHeldBytes: held.pss,
      kbPerIdleClient: perClient(held.rss - before.rss),
      pssKbPerIdleClient: perClient(held.pss - before.pss),
      activeRequests: report.requests,
      activeP99Ms: report.requests ? report.latencyMs.p99 : null,
      activeErrors: report.errors,
      mismatches: report.mismatches,
    };
  } finally {
    closing = true;
    for (const conn of conns) {
      try {
        conn.close();
      } catch { /* reset, or closed above */ }
    }
    await Promise.all(pending);
  }
}

/**
 * S6's served clients: `warm` first, then `count` more, each sending `bytes`
 * and reading them back; memory is read once it has settled after each batch
 * (no lower reading for `quietMs`).
 */
export interface ServedClients {
  warm: number;
  count: number;
  bytes: number;
  quietMs: number;
}

/**
 * How many, how big: enough that 20 KB kept per client shows above the
 * noise of a settled reading (a few MB), in about half a minute a server.
 */
export function servedClients(quick: boolean): ServedClients {
  return quick
    ? { warm: 10, count: 40, bytes: 16 * 1024, quietMs: 500 }
    : { warm: 100, count: 500, bytes: 256 * 1024, quietMs: 9000 };
}

/** Clients streaming at once in S6's served-clients part. */
const SERVED_AT_ONCE = 8;

/**
 * S6's second part: `warm` clients stream `bytes` each and leave (what any
 * busy server grows to: allocator arenas, heaps at their working size), the
 * memory settles, `count` more do the same, it settles again. The growth per
 * client of the second batch is what the server keeps per client served:
 * near 0 for a server that gives back what each client took. Returns the
 * row's fields (null where the server did not serve every client).
 */
export async function servedMemory(
  server: RunningServer,
  served: ServedClients,
  status: Status,
): Promise<Numbers> {
  const message = new Uint8Array(served.bytes).map((_, i) => i * 31 + 7);
  let failures = 0;
  const batch = async (count: number, what: string) => {
    let started = 0;
    let done = 0;
    await Promise.all(
      Array.from({ length: SERVED_AT_ONCE }, async () => {
        while (started < count) {
          started++;
          let conn: Deno.Conn | undefined;
          try {
            conn = await connectTo(server, 10_000);
            if (!(await exchange(conn, message, 30_000))) failures++;
          } catch {
            failures++;
          } finally {
            try {
              conn?.close();
            } catch { /* closed by the timeout */ }
          }
          status(`${what}: ${++done} of ${count} served`);
        }
      }),
    );
  };
  await batch(served.warm, "served clients, warm-up");
  const warmed = await settledRss(server.pid, served.quietMs);
  await batch(served.count, "served clients");
  const after = await settledRss(server.pid, served.quietMs);
  return {
    servedClients: served.count,
    servedBytes: served.bytes,
    servedFailures: failures,
    rssWarmBytes: warmed,
    rssServedBytes: after,
    kbPerServedClient: failures ? null : (after - warmed) / served.count / 1000,
  };
}

/**
 * S7: the first client is served (one echo), then stays idle for the hold
 * time; a second client connects right then and times its first echo. The
 * median over the repetitions is the headline.
 */
export function secondClient(
  id: string,
  title: string,
  load: string,
): Scenario {
  return {
    id,
    title,
    load,
    metric: "firstEchoMs",
    unit: "ms to the second client's echo",
    lowerIsBetter: true,
    log: true, // a millisecond against a second
    run: secondClientWait,
  };
}

async function secondClientWait(
  server: RunningServer,
  settings: Settings,
  status: Status,
): Promise<Numbers> {
  const holdMs = settings.holdSeconds * 1000;
  const samples: number[] = [];
  let errors = 0;
  let mismatches = 0;
  for (let i = 0; i < settings.waitRepeats; i++) {
    status(`round ${i + 1} of ${settings.waitRepeats}`);
    const conns: Deno.Conn[] = [];
    try {
      const first = await connectTo(server, 10_000);
      conns.push(first);
      await exchange(first, new Uint8Array([1]), 10_000);
      const released = sleep(holdMs).then(() => first.close());
      const started = performance.now();
      const second = await connectTo(server, 10_000);
      conns.push(second);
      const message = new Uint8Array(64).map((_, j) => j * 7 + i);
      if (!(await exchange(second, message, holdMs + 10_000))) mismatches++;
      samples.push(performance.now() - started);
      await released;
    } catch {
      errors++;
    } finally {
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* closed already */ }
      }
    }
  }
  samples.sort((a, b) => a - b);
  return {
    holdSeconds: settings.holdSeconds,
    firstEchoMs: samples.length ? samples[samples.length >> 1] : null,
    samplesMs: samples,
    errors,
    mismatches,
  };
}

/** Connects to `server`, or rejects after `ms`. */
export function connectTo(
  server: RunningServer,
  ms: number,
): Promise<Deno.Conn> {
  return Deno.connect({
    hostname: server.host,
    port: server.port,
    signal: AbortSignal.timeout(ms),
  });
}

/** Sends `message`, reads its echo within `ms`; true when it matches. */
export async function exchange(
  conn: Deno.Conn,
  message: Uint8Array,
  ms: number,
): Promise<boolean> {
  const timer = setTimeout(() => conn.close(), ms);
  try {
    const reply = new Uint8Array(message.length);
    const [, ok] = await Promise.all([
      writeAll(conn, message),
      (async () => {
        for (let got = 0; got < reply.length;) {
          const n = await conn.read(reply.subarray(got));
          if (n === null) throw new Error("closed before the echo");
          got += n;
        }
        return reply.every((byte, i) => byte === message[i]);
      })(),
    ]);
    return ok;
  } finally {
    clearTimeout(timer);
  }
}
