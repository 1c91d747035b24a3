/**
 * The load engine of client.ts and bench.ts: N connections (or UDP senders)
 * that each send a SIZE-byte request and wait for its whole echo, M times or
 * for a duration, checking every byte and timing every round trip. What a
 * server does wrong (refused connects, resets, early closes, silence, wrong
 * bytes, lost datagrams) is counted by cause, never thrown.
 *
 * This module is the run and its books: the options, the counters, the
 * latency histogram (fixed-size), the one interval timer per run (only when
 * asked for) that handles timeouts and progress, and the report. What each
 * connection does, the hot path, is lanes.ts. docs/client.md has the
 * measurements.
 *
 * @module
 */
import process from "node:process";
import { unbracket } from "../cli.ts";
import {
  datagramLane,
  Lane,
  type LaneRun,
  RECEIVE_BUDGET,
  receiveSize,
  requestPool,
  streamLane,
} from "./lanes.ts";

/** Where to send load. */
export interface Target {
  /**
   * Server address: an IP address (IPv6 with or without brackets). A host name
   * works over TCP but is looked up at every connect: client.ts resolves it
   * once first.
   */
  host: string;
  /** Server port. */
  port: number;
  /** Unix socket path; when set, `host` and `port` are unused. */
  unix?: string;
  /** Send datagrams instead of using a TCP stream. */
  udp?: boolean;
}

/** What {@linkcode runLoad} does. */
export interface LoadOptions extends Target {
  /** Parallel connections (or UDP senders). */
  connections: number;
  /** Requests per connection; ignored when `duration` is set. */
  requests?: number;
  /** Seconds; no new request starts after this. */
  duration?: number;
  /** Bytes per request: the message the echo must return exactly. */
  size: number;
  /** Open a fresh connection per request (measures per-client cost). */
  newConnection?: boolean;
  /**
   * Milliseconds a request may wait for its echo; TCP: then it fails; UDP:
   * the datagram counts as lost (default 1000 ms, as a lost one never answers).
   */
  timeoutMs?: number;
  /** Stop early: no new requests, the ones in flight are abandoned. */
  signal?: AbortSignal;
  /** Called with the completed requests, at most ~10 times per second. */
  onProgress?: (requestsDone: number) => void;
}

/**
 * The failed requests of a run by cause: connects `refused`; connections
 * `reset` by the server after connecting, or `closed` by it before the whole
 * echo came back; no echo within the timeout (`timedOut`); no socket to be
 * had, this process being at its open file limit (`tooManyFiles`, EMFILE, or
 * the system's, ENFILE); `other`.
 */
export type Failures = Record<
  "refused" | "reset" | "closed" | "timedOut" | "tooManyFiles" | "other",
  number
>;

/** What a load run measured. */
export interface LoadReport {
  /** Parallel connections (or UDP senders). */
  connections: number;
  /** Bytes per request. */
  size: number;
  /** Completed requests: echoes received in full and byte-checked. */
  requests: number;
  /** Payload bytes echoed back and checked. */
  bytes: number;
  /** Wall time of the run. */
  seconds: number;
  /** `requests / seconds`. */
  requestsPerSecond: number;
  /** Payload MB (1e6 bytes) per second, one way. */
  mbPerSecond: number;
  /** Round-trip time percentiles of the completed requests. */
  latencyMs: { p50: number; p90: number; p99: number; max: number };
  /** Failed requests: the sum of `failures`. */
  errors: number;
  /** The failed requests by cause. */
  failures: Failures;
  /** Completed requests whose echo differed from what was sent. */
  mismatches: number;
  /** UDP only: datagrams not answered within the timeout. */
  lost?: number;
  /** CPU time this process spent during the run. */
  cpuMs: number;
}

/** The largest UDP payload over IPv4 (65,535 - 8 UDP - 20 IP header bytes). */
export const MAX_DATAGRAM = 65_507;
/** How long a datagram may go unanswered in load mode when not told. */
export const DEFAULT_UDP_TIMEOUT_MS = 1000;
// In duration mode, requests still in flight this long after the deadline
// (a wedged server) are abandoned and counted as timed out.
const DRAIN_MS = 5000;

/**
 * Runs a load against an echo server and reports what it measured. Rejects
 * only for bad options (RangeError).
 */
export async function runLoad(options: LoadOptions): Promise<LoadReport> {
  checkLoadOptions(options);
  const run = new LoadRun({ ...options, host: unbracket(options.host) });
  const stop = () => run.stop();
  options.signal?.addEventListener("abort", stop);
  if (options.signal?.aborted) run.stop();
  const cpuBefore = process.cpuUsage();
  const watchdog = run.watch();
  const lane = options.udp ? datagramLane : streamLane;
  await Promise.all(run.lanes.map((each) => lane(run, each)));
  const seconds = (performance.now() - run.started) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  clearInterval(watchdog);
  options.signal?.removeEventListener("abort", stop);
  const { requests, latency, failures } = run;
  const ms = (us: number) => round(Math.min(us, latency.maxUs) / 1000, 3);
  return {
    connections: options.connections,
    size: options.size,
    requests,
    bytes: requests * options.size,
    seconds: round(seconds, 6),
    requestsPerSecond: round(requests / seconds || 0, 1),
    mbPerSecond: round(requests * options.size / 1e6 / seconds || 0, 3),
    latencyMs: {
      p50: ms(latency.percentile(50)),
      p90: ms(latency.percentile(90)),
      p99: ms(latency.percentile(99)),
      max: ms(latency.maxUs),
    },
    errors: Object.values(failures).reduce((sum, n) => sum + n, 0),
    failures,
    mismatches: run.mismatches,
    ...(options.udp ? { lost: run.lost } : {}),
    cpuMs: round((cpu.user + cpu.system) / 1000, 1),
  };
}

/**
 * Bytes the receive buffers of a run take together: bounded by
 * RECEIVE_BUDGET over TCP (they shrink), not over UDP (a datagram is
 * received whole, so runLoad refuses more than the budget).
 */
export function receiveBytes(
  connections: number,
  size: number,
  udp: boolean,
): number {
  return connections * receiveSize(size, connections, udp);
}

function checkLoadOptions(options: LoadOptions): void {
  const { connections, requests, duration, size, udp, timeoutMs } = options;
  const whole = (value = NaN, min = 1) =>
    Number.isInteger(value) && value >= min;
  const minSize = udp ? 0 : 1; // an empty TCP request has no echo
  const problem = !whole(connections)
    ? "connections must be a whole number >= 1"
    : duration === undefined && !whole(requests)
    ? "requests must be a whole number >= 1"
    : duration !== undefined && !(duration > 0 && duration < Infinity)
    ? "duration must be a number of seconds > 0"
    : !whole(size, minSize) || (udp && size > MAX_DATAGRAM)
    ? `size must be a whole number >= ${minSize} (<= ${MAX_DATAGRAM} with udp)`
    : timeoutMs !== undefined && !(timeoutMs > 0)
    ? "timeoutMs must be > 0"
    : udp && receiveBytes(connections, size, true) > RECEIVE_BUDGET
    ? `udp: ${connections} senders x ${
      size + 1
    } B of receive buffer exceed ${RECEIVE_BUDGET} B`
    : udp && !/^[\d.]+$|:/.test(options.host)
    ? "udp needs an IP address as host"
    : undefined;
  if (problem) throw new RangeError(problem);
}

/** One load run: the counters every lane adds to, and the lanes. */
class LoadRun implements LaneRun {
  requests = 0;
  mismatches = 0;
  lost = 0;
  stopped = false;
  readonly failures: Failures = {
    refused: 0,
    reset: 0,
    closed: 0,
    timedOut: 0,
    tooManyFiles: 0,
    other: 0,
  };
  readonly latency: Latencies = new Latencies();
  readonly lanes: Lane[];
  /** Requests per lane (Infinity in duration mode). */
  readonly perLane: number;
  readonly started = performance.now();
  /** No request starts at or after this performance.now() time. */
  readonly deadline: number;
  readonly timeoutMs: number;

  constructor(readonly options: LoadOptions) {
    const { duration, udp, size } = options;
    this.perLane = duration === undefined ? options.requests! : Infinity;
    this.deadline = this.started + (duration ?? Infinity) * 1000;
    this.timeoutMs = options.timeoutMs ?? (udp ? DEFAULT_UDP_TIMEOUT_MS : 0);
    const { connections } = options;
    const pool = requestPool(size, connections);
    const replySize = receiveSize(size, connections, udp === true);
    this.lanes = Array.from(
      { length: connections },
      (_, i) => new Lane(pool, i, size, replySize),
    );
  }

  /**
   * Records one completed round trip that started at `started`; returns the
   * time it ended (performance.now()), which is when the next one starts.
   */
  record(started: number, same: boolean): number {
    const now = performance.now();
    this.latency.record(now - started);
    this.requests++;
    if (!same) this.mismatches++;
    return now;
  }

  /** Counts a failed request of `lane` by its cause, unless the run ended it. */
  fault(lane: Lane, error: unknown): void {
    const { timedOut } = lane;
    lane.timedOut = false;
    lane.sentAt = 0;
    lane.close();
    if (this.stopped) return;
    if (timedOut && this.options.udp) this.lost++;
    else {
      this.failures[timedOut ? "timedOut" : causeOf(error)]++;
    }
  }

  /** Ends the run: no new requests, in-flight ones abandoned. */
  stop(): void {
    this.stopped = true;
    for (const lane of this.lanes) lane.close();
  }

  /**
   * Starts the one timer of the run, if timeouts, a duration's drain or
   * progress need it: it closes the lanes whose request is late (their read
   * rejects: see fault()), abandons a wedged run, and reports progress.
   */
  watch(): ReturnType<typeof setInterval> | undefined {
    const { onProgress } = this.options;
    const drains = this.deadline !== Infinity;
    if (!onProgress && !this.timeoutMs && !drains) return undefined;
    let lastProgress = 0;
    return setInterval(() => {
      const now = performance.now();
      const late = now - (this.timeoutMs || Infinity);
      for (const lane of this.lanes) {
        if (lane.sentAt > 0 && lane.sentAt <= late) {
          lane.timedOut = true;
          lane.sentAt = 0;
          lane.close();
        }
      }
      if (drains && !this.stopped && now > this.deadline + DRAIN_MS) {
        this.failures.timedOut += this.lanes.filter((l) => l.sentAt).length;
        this.stop();
      }
      if (onProgress && now - lastProgress >= 95) {
        lastProgress = now;
        onProgress(this.requests);
      }
    }, this.timeoutMs ? Math.max(5, Math.min(100, this.timeoutMs / 4)) : 100);
  }
}

/**
 * Round-trip times in a log-linear histogram (as HdrHistogram keeps them):
 * exact to the microsecond below 1,024 µs, then within 0.1 %, in fixed memory
 * however long the run. Recording is a few integer operations; node's HDR
 * histogram (`createHistogram`) costs the client more CPU per request.
 */
class Latencies {
  // 1,024 one-microsecond buckets, then 512 per power of two up to 2^31 µs.
  #counts = new Float64Array(23 << 9);
  count = 0;
  maxUs = 0;

  /** Adds a round trip of `ms` milliseconds. */
  record(ms: number): void {
    const us = Math.min(2 ** 31 - 1, Math.round(ms * 1000));
    const shift = 22 - Math.clz32(us); // > 0 from 1,024 µs on
    this.#counts[shift > 0 ? (shift << 9) + (us >>> shift) : us]++;
    this.count++;
    if (us > this.maxUs) this.maxUs = us;
  }

  /** The `p`th percentile in µs: the middle of its bucket (0 when empty). */
  percentile(p: number): number {
    let rank = Math.ceil(p / 100 * this.count);
    for (let i = 0; i < this.#counts.length; i++) {
      if ((rank -= this.#counts[i]) > 0 || this.#counts[i] === 0) continue;
      const shift = (i >> 9) - 1;
      return shift > 0 ? ((512 | (i & 511)) << shift) + (1 << shift) / 2 : i;
    }
    return 0;
  }
}

/** What a failed request's error (by its name) says that the server did. */
const FAILURES: Record<string, keyof Failures> = {
  ConnectionRefused: "refused",
  ConnectionReset: "reset",
  ConnectionAborted: "reset",
  BrokenPipe: "reset",
  UnexpectedEof: "closed",
};

/** What a failed request's error says went wrong. */
function causeOf(error: unknown): keyof Failures {
  // The open file limits have no error class of their own: only a code.
  const code = (error as { code?: string })?.code;
  if (code === "EMFILE" || code === "ENFILE") return "tooManyFiles";
  return FAILURES[(error as Error)?.name] ?? "other";
}

function round(value: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}
