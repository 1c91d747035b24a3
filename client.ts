#!/usr/bin/env -S deno run --allow-net --allow-read --allow-write --unstable-net
/**
 * Echo client: talk to an echo server by hand, check it once, or load it.
 *
 * Interactive (the default) behaves like `nc -N`: stdin goes to the server and
 * the echo comes out on stdout, byte for byte; at the end of stdin the client
 * half-closes and exits once the server has sent the rest and closed. With
 * `--udp` every stdin line is one datagram and every answer is printed.
 * `--message TEXT` checks a server once. Load mode runs N connections that each
 * send a SIZE-byte request and wait for its whole echo, M times (or for a
 * duration), checking every byte and timing every round trip; bench.ts drives
 * the models with the same engine ({@linkcode runLoad}).
 *
 * Run:  deno run -A client.ts 8080                       (type; Ctrl-D ends)
 *       deno run -A client.ts 8080 --message hello
 *       deno run -A client.ts 8080 --connections 50 --requests 2000 --size 64
 *       deno run -A client.ts 8080 --connections 20 --duration 5 --new-connection
 *       deno run -A client.ts 8080 --udp --connections 8 --requests 1000
 * Measured (2 cores shared with other work; 50 connections x 64 B against
 * evented.ts; CPU from /proc): 44-88k requests/s, the client spending 11-15 µs
 * of CPU per request and the server 10-14 µs. A bare Deno write-then-read loop
 * costs the client as much, so checking, timing and counting add under 1 µs: a
 * client process costs what the cheapest server does, and should have a core
 * of its own when it measures one.
 *
 * @module
 */
import process from "node:process";
import { lookup } from "node:dns/promises";
import {
  fail,
  numberOption,
  parseCommandLine,
  unbracket,
  usageError,
} from "./cli.ts";
import { formatAddr, formatBytes } from "./log.ts";
import { echo } from "./protocol.ts";

// ---------------------------------------------------------------------------
// The load engine (bench.ts imports it)
// ---------------------------------------------------------------------------

/** Where to send load. */
export interface Target {
  /** Server address: an IP literal (IPv6 without brackets) or a host name. */
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
   * Milliseconds a request may wait for its echo. TCP: the connection is
   * closed and the request counted as an error. UDP: the datagram counts as
   * lost (default 1000 ms with `udp`, since a lost datagram never answers).
   */
  timeoutMs?: number;
  /** Stop early: no new requests, the ones in flight are abandoned. */
  signal?: AbortSignal;
  /** Called with the completed requests, at most ~10 times per second. */
  onProgress?: (requestsDone: number) => void;
}

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
  /** Failed connects, resets, early closes, timeouts (TCP), failed sends. */
  errors: number;
  /** Completed requests whose echo differed from what was sent. */
  mismatches: number;
  /** UDP only: datagrams not answered within the timeout. */
  lost?: number;
  /** CPU time this process spent during the run. */
  cpuMs?: number;
}

/** The largest UDP payload over IPv4 (65,535 - 8 UDP - 20 IP header bytes). */
export const MAX_DATAGRAM = 65_507;
/** How long a datagram may go unanswered in load mode when not told. */
export const DEFAULT_UDP_TIMEOUT_MS = 1000;
// Requests up to this size are written whole, then their echo read: the echo
// fits in the socket buffers meanwhile. Larger ones are written while the echo
// is read, or client and server would both block writing (a deadlock).
const WRITE_THEN_READ_LIMIT = 64 * 1024;
// In duration mode, requests still in flight this long after the deadline
// (a wedged server) are abandoned and counted as errors.
const DRAIN_MS = 5000;

/**
 * Runs a load against an echo server and reports what it measured. Every
 * echoed byte is checked; server misbehaviour (refused connects, resets,
 * wrong bytes, lost datagrams) is counted, never thrown. Rejects only for bad
 * options or a host name that does not resolve.
 *
 * Per connection, one request buffer and one receive buffer serve every
 * request; latencies go into a fixed-size histogram; a single interval timer
 * per run (only when `timeoutMs` or `onProgress` asks for it) handles
 * timeouts and progress. So the hot path allocates nothing of its own.
 */
export async function runLoad(options: LoadOptions): Promise<LoadReport> {
  checkLoadOptions(options);
  const address = await resolveTarget(options);
  const run = new LoadRun(options, address);
  const lane = options.udp
    ? datagramLane
    : options.newConnection
    ? connectionPerRequestLane
    : streamLane;
  const onAbort = () => run.stop();
  options.signal?.addEventListener("abort", onAbort);
  const cpuBefore = process.cpuUsage();
  run.startWatchdog();
  if (options.signal?.aborted) run.stop();
  await Promise.all(run.lanes.map((each) => lane(run, each)));
  const seconds = (performance.now() - run.started) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  run.stopWatchdog();
  options.signal?.removeEventListener("abort", onAbort);
  return {
    connections: options.connections,
    size: options.size,
    requests: run.requests,
    bytes: run.bytes,
    seconds: round(seconds, 6),
    requestsPerSecond: round(seconds > 0 ? run.requests / seconds : 0, 1),
    mbPerSecond: round(seconds > 0 ? run.bytes / 1e6 / seconds : 0, 3),
    latencyMs: run.latency.summary(),
    errors: run.errors,
    mismatches: run.mismatches,
    ...(options.udp ? { lost: run.lost } : {}),
    cpuMs: round((cpu.user + cpu.system) / 1000, 1),
  };
}

function checkLoadOptions(options: LoadOptions): void {
  const wholeAtLeast = (value: number | undefined, min: number) =>
    value !== undefined && Number.isInteger(value) && value >= min;
  if (!wholeAtLeast(options.connections, 1)) {
    throw new RangeError("connections must be a whole number >= 1");
  }
  if (options.duration !== undefined) {
    if (!(options.duration > 0 && Number.isFinite(options.duration))) {
      throw new RangeError("duration must be a number of seconds > 0");
    }
  } else if (!wholeAtLeast(options.requests, 1)) {
    throw new RangeError("requests must be a whole number >= 1");
  }
  const minSize = options.udp ? 0 : 1; // an empty TCP request has no echo
  if (!wholeAtLeast(options.size, minSize)) {
    throw new RangeError(`size must be a whole number >= ${minSize}`);
  }
  if (options.udp && options.size > MAX_DATAGRAM) {
    throw new RangeError(`size must be at most ${MAX_DATAGRAM} with udp`);
  }
  if (
    options.timeoutMs !== undefined &&
    !(options.timeoutMs > 0 && Number.isFinite(options.timeoutMs))
  ) {
    throw new RangeError("timeoutMs must be a number > 0");
  }
  if (options.unix !== undefined && options.udp) {
    throw new RangeError("unix and udp exclude each other");
  }
  if (options.udp && options.newConnection) {
    throw new RangeError("newConnection does not apply to udp");
  }
  if (
    options.unix === undefined &&
    !(Number.isInteger(options.port) && options.port >= 1 &&
      options.port <= 65535)
  ) {
    throw new RangeError("port must be a whole number from 1 to 65535");
  }
}

/**
 * The IP address to use for `target.host`, looked up once, so that no request
 * pays for a name lookup. For TCP a host name is resolved by connecting once
 * (Happy Eyeballs picks the family that answers); `undefined` for Unix sockets.
 */
async function resolveTarget(target: Target): Promise<string | undefined> {
  if (target.unix !== undefined) return undefined;
  const host = unbracket(target.host);
  if (isIpLiteral(host)) return host;
  if (target.udp) return await resolveHost(host);
  try {
    const conn = await Deno.connect({ hostname: host, port: target.port });
    conn.close();
    return (conn.remoteAddr as Deno.NetAddr).hostname;
  } catch (error) {
    if (isLookupError(error)) throw new Error(`unknown host ${host}`);
    return await resolveHost(host); // refused: the load counts the errors
  }
}

/** One load run: the counters every lane adds to, and the lanes. */
class LoadRun {
  requests = 0;
  bytes = 0;
  errors = 0;
  mismatches = 0;
  lost = 0;
  stopped = false;
  readonly latency: LatencyHistogram = new LatencyHistogram();
  readonly lanes: Lane[];
  /** Requests per lane (Infinity in duration mode). */
  readonly perLane: number;
  readonly started: number = performance.now();
  /** No request starts at or after this performance.now() time. */
  readonly deadline: number;
  readonly timeoutMs: number;
  /** The server's IP address (TCP) or socket path (Unix). */
  readonly address: string | undefined;
  readonly unixPath: string | undefined;
  /** Where datagrams go, and the local address senders bind. */
  readonly datagramTarget: Deno.NetAddr;
  readonly datagramBind: string;
  #watchdog?: ReturnType<typeof setInterval>;

  constructor(readonly options: LoadOptions, address: string | undefined) {
    this.perLane = options.duration === undefined
      ? options.requests!
      : Infinity;
    this.deadline = options.duration === undefined
      ? Infinity
      : this.started + options.duration * 1000;
    this.timeoutMs = options.timeoutMs ??
      (options.udp ? DEFAULT_UDP_TIMEOUT_MS : 0);
    this.address = address;
    this.unixPath = options.unix;
    this.datagramTarget = {
      transport: "udp",
      hostname: address ?? "",
      port: options.port,
    };
    this.datagramBind = bindAddressFor(address ?? "127.0.0.1");
    this.lanes = Array.from(
      { length: options.connections },
      (_, i) => new Lane(options.size, i + 1, options.udp === true),
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
    this.bytes += this.options.size;
    if (!same) this.mismatches++;
    return now;
  }

  /** Counts a failed request of `lane`, unless the run itself ended it. */
  fault(lane: Lane): void {
    const timedOut = lane.timedOut;
    lane.timedOut = false;
    lane.close();
    if (this.stopped) return;
    if (timedOut && this.options.udp) this.lost++;
    else this.errors++;
  }

  /** Ends the run: no new requests, in-flight ones abandoned. */
  stop(): void {
    this.stopped = true;
    for (const lane of this.lanes) lane.close();
  }

  /** Starts the one timer of the run, if timeouts or progress need it. */
  startWatchdog(): void {
    const { onProgress } = this.options;
    const drains = this.deadline !== Infinity;
    if (!onProgress && !this.timeoutMs && !drains) return;
    const tick = this.timeoutMs
      ? Math.max(5, Math.min(100, this.timeoutMs / 4))
      : 100;
    let lastProgress = 0;
    this.#watchdog = setInterval(() => {
      const now = performance.now();
      if (this.timeoutMs) {
        for (const lane of this.lanes) {
          if (lane.sentAt > 0 && now - lane.sentAt >= this.timeoutMs) {
            lane.timedOut = true;
            lane.sentAt = 0;
            lane.close(); // the pending read or receive rejects: see fault()
          }
        }
      }
      if (drains && !this.stopped && now > this.deadline + DRAIN_MS) {
        this.errors += this.lanes.filter((lane) => lane.sentAt > 0).length;
        this.stop();
      }
      if (onProgress && now - lastProgress >= 95) {
        lastProgress = now;
        onProgress(this.requests);
      }
    }, tick);
  }

  /** Stops the timer. */
  stopWatchdog(): void {
    clearInterval(this.#watchdog);
  }

  /**
   * Opens a connection for `lane`; sets TCP_NODELAY on TCP. Closing the lane
   * (timeout, stop) abandons a connect still pending, as against a listener
   * whose backlog is full, where the kernel keeps retrying the handshake.
   */
  async connect(lane: Lane): Promise<Deno.Conn> {
    if (this.unixPath !== undefined) {
      return await Deno.connect({ transport: "unix", path: this.unixPath });
    }
    const connecting = lane.connecting = new AbortController();
    const conn = await Deno.connect({
      hostname: this.address,
      port: this.options.port,
      signal: connecting.signal,
    }).finally(() => lane.connecting = null);
    // One write per request already; NODELAY keeps a request the kernel had
    // to split from waiting on a delayed ACK (a 40 ms stall, not the server).
    conn.setNoDelay(true);
    return conn;
  }
}

/** One connection (or UDP sender) of a run, with its reusable buffers. */
class Lane {
  conn: Deno.Conn | null = null;
  socket: Deno.DatagramConn | null = null;
  /** performance.now() when the request in flight started; 0 when idle. */
  sentAt = 0;
  /** Set by the watchdog when it closed this lane's request for taking too long. */
  timedOut = false;
  /** Aborts the lane's connect while one is pending. */
  connecting: AbortController | null = null;
  /**
   * The request, the same bytes every time; distinct per lane, so that echoes
   * crossed between connections show up as mismatches.
   */
  readonly request: Uint8Array;
  /** Where echoes are read into (UDP: one byte more, to see an oversize reply). */
  readonly reply: Uint8Array;
  // The same two buffers seen as 32-bit words: comparing 4 bytes at a time
  // keeps checking a 64 KiB echo cheaper than receiving it.
  readonly requestWords: Int32Array;
  readonly replyWords: Int32Array;

  constructor(size: number, seed: number, udp: boolean) {
    this.request = patternBytes(size, seed);
    this.reply = new Uint8Array(
      udp ? size + 1 : Math.min(size, WRITE_THEN_READ_LIMIT),
    );
    this.requestWords = new Int32Array(this.request.buffer, 0, size >>> 2);
    this.replyWords = new Int32Array(
      this.reply.buffer,
      0,
      this.reply.length >>> 2,
    );
  }

  close(): void {
    const { conn, socket } = this;
    this.connecting?.abort();
    this.conn = null;
    this.socket = null;
    try {
      conn?.close();
    } catch { /* already closed */ }
    try {
      socket?.close();
    } catch { /* already closed */ }
  }
}

/** Persistent connection: connect once, then request after request. */
async function streamLane(run: LoadRun, lane: Lane): Promise<void> {
  const { request, reply } = lane;
  const size = request.length;
  let started = performance.now();
  for (let i = 0; i < run.perLane && !run.stopped; i++) {
    if (started >= run.deadline) break;
    lane.timedOut = false;
    try {
      let conn = lane.conn;
      if (conn === null) {
        lane.sentAt = started;
        conn = lane.conn = await run.connect(lane);
        if (lane.timedOut) throw new Deno.errors.TimedOut("connect timed out");
        started = performance.now(); // the round trip, not the connect, is timed
      }
      lane.sentAt = started;
      let same = true;
      if (size > WRITE_THEN_READ_LIMIT) {
        const writing = writeConcurrently(conn, request, false);
        same = await readEcho(conn, lane);
        await writing;
      } else {
        // The hot path, inline: one write and (almost always) one read.
        let written = await conn.write(request);
        while (written < size) {
          written += await conn.write(request.subarray(written));
        }
        for (let got = 0; got < size;) {
          const left = size - got;
          const n = await conn.read(
            left === size ? reply : reply.subarray(0, left),
          );
          if (n === null) throw new Deno.errors.UnexpectedEof("echo cut short");
          if (same) same = sameBytes(lane, n, got);
          got += n;
        }
      }
      lane.sentAt = 0;
      // One clock reading per request: this one ends it and starts the next.
      started = run.record(started, same);
    } catch {
      lane.sentAt = 0;
      run.fault(lane);
      if (run.perLane === Infinity) await backOff(run);
      started = performance.now();
    }
  }
  lane.close();
}

/**
 * A fresh connection per request, the way a one-shot client uses a server:
 * connect, send, half-close, read the echo and the server's close. The time
 * covers all of it: what a model pays per client.
 */
async function connectionPerRequestLane(
  run: LoadRun,
  lane: Lane,
): Promise<void> {
  const { request, reply } = lane;
  for (let i = 0; i < run.perLane && !run.stopped; i++) {
    const started = performance.now();
    if (started >= run.deadline) break;
    lane.timedOut = false;
    lane.sentAt = started;
    try {
      const conn = lane.conn = await run.connect(lane);
      if (lane.timedOut) throw new Deno.errors.TimedOut("connect timed out");
      const writing = request.length > WRITE_THEN_READ_LIMIT
        ? writeConcurrently(conn, request, true)
        : null;
      if (writing === null) {
        await writeAll(conn, request);
        await conn.closeWrite();
      }
      let same = await readEcho(conn, lane);
      if (writing !== null) await writing;
      if ((await conn.read(reply)) !== null) same = false; // more than was sent
      lane.sentAt = 0;
      lane.close();
      run.record(started, same);
    } catch {
      lane.sentAt = 0;
      run.fault(lane);
      if (run.perLane === Infinity) await backOff(run);
    }
  }
  lane.close();
}

/** UDP: one datagram out, one back, per request; a lost one times out. */
async function datagramLane(run: LoadRun, lane: Lane): Promise<void> {
  const { request, reply } = lane;
  const to = run.datagramTarget;
  for (let i = 0; i < run.perLane && !run.stopped; i++) {
    const started = performance.now();
    if (started >= run.deadline) break;
    lane.timedOut = false;
    lane.sentAt = started;
    try {
      const socket = lane.socket ??= Deno.listenDatagram({
        transport: "udp",
        hostname: run.datagramBind,
        port: 0,
      });
      await socket.send(request, to);
      let length: number;
      for (;;) {
        const [data, from] = await socket.receive(reply);
        const source = from as Deno.NetAddr;
        // Anyone can send to our port: only the server's answers count.
        if (source.port === to.port && source.hostname === to.hostname) {
          // Deno receives into `reply` and returns a view of its start.
          if (data.buffer !== reply.buffer) reply.set(data);
          length = data.length;
          break;
        }
      }
      lane.sentAt = 0;
      run.record(
        started,
        length === request.length && sameBytes(lane, length, 0),
      );
    } catch {
      // Closed by the watchdog (lost; the next request gets a fresh port, so
      // a late answer cannot pass for the next one), or the send failed.
      lane.sentAt = 0;
      run.fault(lane);
    }
  }
  lane.close();
}

/** Writes all of `bytes`; `subarray` only when the kernel took part of it. */
async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let written = await conn.write(bytes);
  while (written < bytes.length) {
    written += await conn.write(bytes.subarray(written));
  }
}

/** Writes a large request while the echo is being read, then maybe half-closes. */
function writeConcurrently(
  conn: Deno.Conn,
  request: Uint8Array,
  closeWrite: boolean,
): Promise<void> {
  const writing = (async () => {
    await writeAll(conn, request);
    if (closeWrite) await conn.closeWrite();
  })();
  writing.catch(() => {}); // the reader sees the same failure and counts it
  return writing;
}

/**
 * Reads exactly as many bytes as the lane's request and compares them with it
 * as they arrive. Resolves true when identical; rejects if the stream ends
 * first.
 */
async function readEcho(conn: Deno.Conn, lane: Lane): Promise<boolean> {
  const { request, reply } = lane;
  const size = request.length;
  let same = true;
  for (let got = 0; got < size;) {
    const left = size - got;
    const n = await conn.read(
      left >= reply.length ? reply : reply.subarray(0, left),
    );
    if (n === null) throw new Deno.errors.UnexpectedEof("echo cut short");
    if (same) same = sameBytes(lane, n, got);
    got += n;
  }
  return same;
}

/**
 * True when the lane's `reply[0..n)` equals its `request[at..at+n)`: word by
 * word while both sides are 4-byte aligned, then byte by byte.
 */
function sameBytes(lane: Lane, n: number, at: number): boolean {
  const { reply, request, replyWords, requestWords } = lane;
  let i = 0;
  if ((at & 3) === 0) {
    const words = n >>> 2;
    const base = at >>> 2;
    for (; i < words; i++) {
      if (replyWords[i] !== requestWords[base + i]) return false;
    }
    i = words << 2;
  }
  for (; i < n; i++) {
    if (reply[i] !== request[at + i]) return false;
  }
  return true;
}

/** After a failure in duration mode: a short pause instead of a busy loop. */
function backOff(run: LoadRun): Promise<void> {
  if (run.stopped) return Promise.resolve();
  return new Promise((resolve) => setTimeout(resolve, 10));
}

/**
 * Round-trip times in a log-linear histogram (like HdrHistogram): exact to the
 * microsecond below 1,024 µs, then within 0.2 %, in fixed memory however long
 * the run. Recording is a few integer operations.
 */
class LatencyHistogram {
  // 1,024 one-microsecond buckets, then 512 buckets per power of two up to 2^31 µs.
  #counts = new Float64Array(1024 + 21 * 512);
  #count = 0;
  #maxMs = 0;

  /** Adds one round trip of `ms` milliseconds. */
  record(ms: number): void {
    const us = Math.min(2 ** 31 - 1, Math.max(0, Math.round(ms * 1000)));
    this.#counts[bucketOf(us)]++;
    this.#count++;
    if (ms > this.#maxMs) this.#maxMs = ms;
  }

  /** The p50, p90, p99 and maximum, in milliseconds. */
  summary(): LoadReport["latencyMs"] {
    return {
      p50: this.#percentile(50),
      p90: this.#percentile(90),
      p99: this.#percentile(99),
      max: round(this.#maxMs, 3),
    };
  }

  #percentile(p: number): number {
    if (this.#count === 0) return 0;
    const rank = Math.max(1, Math.ceil((p / 100) * this.#count));
    let seen = 0;
    for (let i = 0; i < this.#counts.length; i++) {
      seen += this.#counts[i];
      if (seen >= rank) {
        return round(Math.min(bucketMicros(i) / 1000, this.#maxMs), 3);
      }
    }
    return round(this.#maxMs, 3);
  }
}

function bucketOf(us: number): number {
  if (us < 1024) return us;
  const power = 31 - Math.clz32(us); // 10..30
  const shift = power - 9; // keep the top 10 bits: 512..1023
  return 1024 + (power - 10) * 512 + ((us >>> shift) - 512);
}

/** The middle of bucket `i`, in microseconds. */
function bucketMicros(i: number): number {
  if (i < 1024) return i;
  const power = ((i - 1024) >> 9) + 10;
  const shift = power - 9;
  const low = (((i - 1024) & 511) + 512) * 2 ** shift;
  return low + 2 ** shift / 2;
}

/** `size` pseudo-random bytes (xorshift32 from `seed`): every byte value. */
function patternBytes(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed * 2654435761 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

function round(value: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

// ---------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------

function isIpLiteral(host: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(host) || host.includes(":");
}

/** A host name's address (IPv4 first: the servers default to 127.0.0.1). */
async function resolveHost(host: string): Promise<string> {
  try {
    const found = await lookup(host, { all: true });
    const first = found.find((each) => each.family === 4) ?? found[0];
    if (!first) throw new Error("no address");
    return first.address;
  } catch {
    throw new Error(`unknown host ${host}`);
  }
}

/** The local address a UDP sender binds to reach `address`. */
function bindAddressFor(address: string): string {
  if (address === "::1") return "::1";
  if (address.startsWith("127.")) return "127.0.0.1";
  return address.includes(":") ? "::" : "0.0.0.0";
}

function isLookupError(error: unknown): boolean {
  return /lookup|resolve|getaddrinfo|name or service/i.test(
    error instanceof Error ? error.message : String(error),
  );
}

/** Says why a connect failed, in a few words. */
function connectErrorText(error: unknown, timeoutMs: number): string {
  if (error instanceof Deno.errors.ConnectionRefused) {
    return "connection refused";
  }
  if (error instanceof Deno.errors.NotFound) return "no such socket";
  if (
    error instanceof Deno.errors.TimedOut ||
    (error instanceof DOMException &&
      (error.name === "AbortError" || error.name === "TimeoutError"))
  ) return `timed out after ${timeoutMs} ms`;
  if (isLookupError(error)) return "unknown host";
  if (error instanceof Deno.errors.NotCapable) {
    return "not permitted by Deno (run with --allow-net, or --allow-read --allow-write for --unix)";
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return "permission denied";
  }
  const message = error instanceof Error ? error.message : String(error);
  return message.replace(/ \(os error \d+\)$/, "").toLowerCase();
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

const SCRIPT = "client.ts";

const USAGE = `usage: deno run -A client.ts [HOST] PORT [options]
       deno run -A client.ts --unix PATH [options]

Echo client: interactive (stdin to the server, its echo to stdout), one-shot
check, or load generator.

  HOST                 server address (default 127.0.0.1)
  PORT                 server port
  --unix PATH          connect to a Unix domain socket instead
  --udp                send datagrams: one per stdin line, or per request
  --timeout MS         how long to wait for a connect or an echo (default 5000;
                       with --udp 1000 per datagram; 10000 per request under
                       a TCP load)
  -h, --help           show this help

one-shot:
  --message TEXT       send TEXT, print the echo; exit 0 if it matches, 1 if not

load mode (any of these selects it):
  --connections N      parallel connections, or UDP senders (default 1)
  --requests M         requests per connection (default 1000)
  --duration SECONDS   send requests for this long instead of M each
  --size BYTES         bytes per request (default 64)
  --new-connection     connect afresh for every request (the per-client cost)
  --json               print the report as one JSON object

Before a load, one message must come back within the timeout.

Exit status: 0 ok; 1 refused, unknown host, timeout, echo mismatch or errors
under load (lost datagrams are counted, not fatal); 2 bad arguments. Ctrl-C
ends a load and prints its report (exit 0 unless it found errors); a second
Ctrl-C exits 130 at once.`;

const CLI_OPTIONS = {
  unix: { type: "string" },
  udp: { type: "boolean" },
  timeout: { type: "string" },
  message: { type: "string" },
  connections: { type: "string" },
  requests: { type: "string" },
  duration: { type: "string" },
  size: { type: "string" },
  "new-connection": { type: "boolean" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

const LOAD_FLAGS = [
  "connections",
  "requests",
  "duration",
  "size",
  "new-connection",
] as const;

/** What the command line asks for. */
type Command =
  | { mode: "interactive"; target: Target; timeoutMs?: number }
  | { mode: "message"; target: Target; timeoutMs?: number; message: string }
  | { mode: "load"; load: LoadOptions; json: boolean };

async function parseClientArgs(args: string[]): Promise<Command> {
  const fault = (reason: string): never => usageError(SCRIPT, reason, USAGE);
  const { values, positionals } = await parseCommandLine(
    args,
    CLI_OPTIONS,
    SCRIPT,
    USAGE,
  );
  const udp = values.udp === true;
  let target: Target;
  if (values.unix !== undefined) {
    if (positionals.length) fault("--unix and HOST/PORT exclude each other");
    if (values.unix === "") fault("--unix needs a path");
    if (udp) fault("--udp and --unix exclude each other");
    target = { host: "", port: 0, unix: String(values.unix) };
  } else {
    if (positionals.length === 0) fault("PORT is required");
    if (positionals.length > 2) {
      fault(`expected [HOST] PORT, got ${positionals.join(" ")}`);
    }
    const port = numberOption(positionals.at(-1), "PORT", {
      min: 1,
      max: 65535,
      integer: true,
    }, fault)!;
    const host = unbracket(positionals.length === 2 ? positionals[0] : "");
    if (positionals.length === 2 && host === "") fault("HOST is empty");
    target = { host: host || "127.0.0.1", port, udp };
  }
  const timeoutMs = numberOption(values.timeout, "--timeout", {
    min: 1,
    max: 86_400_000,
  }, fault);
  const loadMode = LOAD_FLAGS.some((flag) => values[flag] !== undefined);
  if (values.message !== undefined) {
    if (loadMode) fault("--message and load options exclude each other");
    if (values.json) fault("--json applies to load mode only");
    return {
      mode: "message",
      target,
      timeoutMs,
      message: String(values.message),
    };
  }
  if (!loadMode) {
    if (values.json) fault("--json applies to load mode only");
    return { mode: "interactive", target, timeoutMs };
  }
  if (values.requests !== undefined && values.duration !== undefined) {
    fault("--requests and --duration exclude each other");
  }
  if (udp && values["new-connection"]) {
    fault("--new-connection does not apply to --udp");
  }
  const connections = numberOption(values.connections, "--connections", {
    min: 1,
    max: 10_000,
    integer: true,
  }, fault) ?? 1;
  const duration = numberOption(values.duration, "--duration", {
    min: 0.001,
    max: 86_400,
  }, fault);
  const requests = numberOption(values.requests, "--requests", {
    min: 1,
    max: 1_000_000_000,
    integer: true,
  }, fault) ?? (duration === undefined ? 1000 : undefined);
  const size = numberOption(values.size, "--size", {
    min: udp ? 0 : 1,
    max: udp ? MAX_DATAGRAM : 64 * 1024 * 1024,
    integer: true,
  }, fault) ?? 64;
  return {
    mode: "load",
    json: values.json === true,
    load: {
      ...target,
      connections,
      requests,
      duration,
      size,
      newConnection: values["new-connection"] === true,
      // A server that stops answering mid-run must not hold the client
      // forever: a request unanswered this long counts as an error.
      timeoutMs: timeoutMs ?? (udp ? undefined : DEFAULT_LOAD_TIMEOUT_MS),
    },
  };
}

/** How the target reads in messages: `127.0.0.1:8080`, `unix:/tmp/e.sock`. */
function targetName(target: Target): string {
  if (target.unix !== undefined) return `unix:${target.unix}`;
  return formatAddr({
    transport: target.udp ? "udp" : "tcp",
    hostname: target.host,
    port: target.port,
  });
}

const DEFAULT_TIMEOUT_MS = 5000;
const DEFAULT_LOAD_TIMEOUT_MS = 10_000;

/** Connects to `target` or exits 1 with one line saying why. */
async function connectOrExit(
  target: Target,
  timeoutMs: number,
): Promise<Deno.Conn> {
  try {
    if (target.unix !== undefined) {
      return await Deno.connect({ transport: "unix", path: target.unix });
    }
    return await Deno.connect({
      hostname: target.host,
      port: target.port,
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (error) {
    fail(
      SCRIPT,
      `cannot connect to ${targetName(target)}: ${
        connectErrorText(error, timeoutMs)
      }`,
    );
  }
}

/** A UDP socket for talking to `target`, and the target's address. */
async function datagramSocketOrExit(
  target: Target,
): Promise<{ socket: Deno.DatagramConn; to: Deno.NetAddr }> {
  let address: string;
  try {
    address = isIpLiteral(target.host)
      ? target.host
      : await resolveHost(target.host);
  } catch {
    fail(SCRIPT, `cannot reach ${targetName(target)}: unknown host`);
  }
  try {
    const socket = Deno.listenDatagram({
      transport: "udp",
      hostname: bindAddressFor(address),
      port: 0,
    });
    return {
      socket,
      to: { transport: "udp", hostname: address, port: target.port },
    };
  } catch (error) {
    fail(
      SCRIPT,
      `cannot open a UDP socket: ${connectErrorText(error, 0)}`,
    );
  }
}

/**
 * Waits for the next datagram from `to` on `socket`, or exits 1 when none
 * comes within `timeoutMs`.
 */
async function answerOrExit(
  socket: Deno.DatagramConn,
  to: Deno.NetAddr,
  target: Target,
  timeoutMs: number,
): Promise<Uint8Array> {
  const buffer = new Uint8Array(MAX_DATAGRAM + 1024);
  const timer = setTimeout(
    () =>
      fail(
        SCRIPT,
        `no answer from ${targetName(target)} within ${timeoutMs} ms`,
      ),
    timeoutMs,
  );
  try {
    for (;;) {
      const [data, from] = await socket.receive(buffer);
      const source = from as Deno.NetAddr;
      if (source.port === to.port && source.hostname === to.hostname) {
        return data.slice();
      }
    }
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Sends one small message to `target` and exits 1 with one line unless an
 * answer comes back within the timeout: the check before a load.
 */
async function expectEchoOrExit(options: LoadOptions): Promise<void> {
  const probe = new TextEncoder().encode("probe\n");
  if (options.udp) {
    const timeoutMs = options.timeoutMs ?? DEFAULT_UDP_TIMEOUT_MS;
    const { socket, to } = await datagramSocketOrExit(options);
    try {
      await socket.send(probe, to);
      await answerOrExit(socket, to, options, timeoutMs);
    } finally {
      socket.close();
    }
    return;
  }
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const conn = await connectOrExit(options, timeoutMs);
  const timer = setTimeout(() => conn.close(), timeoutMs);
  try {
    await conn.write(probe);
    const answer = new Uint8Array(probe.length);
    let got = 0;
    while (got < probe.length) {
      const n = await conn.read(answer.subarray(got));
      if (n === null) break;
      got += n;
    }
    if (got < probe.length) throw new Error("closed");
  } catch {
    fail(SCRIPT, `no echo from ${targetName(options)} within ${timeoutMs} ms`);
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the timer */ }
  }
}

/** Writes all of `bytes` to stdout; false once stdout is closed. */
async function writeStdout(bytes: Uint8Array): Promise<boolean> {
  try {
    for (let off = 0; off < bytes.length;) {
      off += await Deno.stdout.write(bytes.subarray(off));
    }
    return true;
  } catch {
    return false;
  }
}

/**
 * Interactive TCP or Unix: stdin to the server, the server to stdout, until
 * the server closes (after our half-close at stdin EOF, or on its own).
 */
async function interactive(target: Target, timeoutMs?: number): Promise<void> {
  const conn = await connectOrExit(target, timeoutMs ?? DEFAULT_TIMEOUT_MS);
  let stdinEnded = false;
  const sending = (async () => {
    await echo(Deno.stdin, conn, { bytesIn: 0, bytesOut: 0 });
    stdinEnded = true;
    await conn.closeWrite(); // like `nc -N`: the server sees EOF, echoes the rest
  })();
  // A failed send (the server went away) shows on the receiving side too.
  sending.catch(() => {});
  try {
    await echo(conn, stdoutOrExit, { bytesIn: 0, bytesOut: 0 });
  } catch (error) {
    fail(
      SCRIPT,
      `connection to ${targetName(target)} ${
        error instanceof Deno.errors.ConnectionReset
          ? "reset by the server"
          : `failed: ${connectErrorText(error, 0)}`
      }`,
    );
  }
  if (!stdinEnded) {
    console.error(`${SCRIPT}: the server closed the connection`);
  }
  Deno.exit(0);
}

/** Stdout as a writer; when its reader has gone there is nothing left to do. */
const stdoutOrExit = {
  async write(bytes: Uint8Array): Promise<number> {
    try {
      return await Deno.stdout.write(bytes);
    } catch {
      Deno.exit(0);
    }
  },
};

/** Interactive UDP: each stdin line is one datagram; each answer is printed. */
async function interactiveDatagrams(
  target: Target,
  timeoutMs?: number,
): Promise<void> {
  const { socket, to } = await datagramSocketOrExit(target);
  const wait = timeoutMs ?? DEFAULT_UDP_TIMEOUT_MS;
  for await (const line of stdinLines()) {
    if (line.length > MAX_DATAGRAM) {
      fail(
        SCRIPT,
        `a line of ${line.length} bytes does not fit in a datagram (at most ${MAX_DATAGRAM})`,
      );
    }
    try {
      await socket.send(line, to);
    } catch (error) {
      fail(
        SCRIPT,
        `cannot send to ${targetName(target)}: ${connectErrorText(error, 0)}`,
      );
    }
    const answer = await answerOrExit(socket, to, target, wait);
    if (!(await writeStdout(answer))) break;
  }
  socket.close();
  Deno.exit(0);
}

/** Stdin split after each newline, the newline kept; the last line may lack one. */
async function* stdinLines(): AsyncGenerator<Uint8Array> {
  const chunk = new Uint8Array(64 * 1024);
  let pending = new Uint8Array(0);
  for (;;) {
    const n = await Deno.stdin.read(chunk);
    if (n === null) break;
    const joined = new Uint8Array(pending.length + n);
    joined.set(pending);
    joined.set(chunk.subarray(0, n), pending.length);
    let start = 0;
    for (let i = pending.length; i < joined.length; i++) {
      if (joined[i] === 0x0a) {
        yield joined.slice(start, i + 1);
        start = i + 1;
      }
    }
    pending = joined.slice(start);
  }
  if (pending.length) yield pending;
}

/** One-shot: send the message, print the echo, exit 0 if it matches. */
async function oneShot(
  target: Target,
  message: string,
  timeoutMs?: number,
): Promise<void> {
  const wait = timeoutMs ??
    (target.udp ? DEFAULT_UDP_TIMEOUT_MS : DEFAULT_TIMEOUT_MS);
  const sent = new TextEncoder().encode(message);
  let echoed: Uint8Array;
  if (target.udp) {
    if (sent.length > MAX_DATAGRAM) {
      fail(
        SCRIPT,
        `the message does not fit in a datagram (at most ${MAX_DATAGRAM} bytes)`,
      );
    }
    const { socket, to } = await datagramSocketOrExit(target);
    await socket.send(sent, to);
    echoed = await answerOrExit(socket, to, target, wait);
    socket.close();
  } else {
    const conn = await connectOrExit(target, wait);
    const timer = setTimeout(
      () =>
        fail(
          SCRIPT,
          `no complete echo from ${targetName(target)} within ${wait} ms`,
        ),
      wait,
    );
    try {
      const [received] = await Promise.all([
        readUntilClosed(conn),
        (async () => {
          await writeAll(conn, sent);
          await conn.closeWrite(); // the server closes once it has echoed all
        })(),
      ]);
      echoed = received;
    } catch (error) {
      fail(
        SCRIPT,
        `connection to ${targetName(target)} ${
          error instanceof Deno.errors.ConnectionReset ||
            error instanceof Deno.errors.BrokenPipe
            ? "reset by the server"
            : `failed: ${connectErrorText(error, wait)}`
        }`,
      );
    }
    clearTimeout(timer);
    conn.close();
  }
  await writeStdout(echoed);
  await writeStdout(new Uint8Array([0x0a]));
  const differ = firstDifference(echoed, sent);
  if (differ >= 0) {
    fail(
      SCRIPT,
      `the echo differs from the message: ${echoed.length} bytes back for ${sent.length} sent, first difference at byte ${differ}`,
    );
  }
  Deno.exit(0);
}

async function readUntilClosed(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  let total = 0;
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    chunks.push(buffer.slice(0, n));
    total += n;
  }
  const out = new Uint8Array(total);
  let off = 0;
  for (const chunk of chunks) {
    out.set(chunk, off);
    off += chunk.length;
  }
  return out;
}

/** The first offset where `a` and `b` differ, or -1 when they are equal. */
function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** Load mode: run, print the report, exit 1 on mismatches or errors. */
async function load(options: LoadOptions, json: boolean): Promise<void> {
  const where = targetName(options);
  // One round trip first, so that a server that is not there, or does not
  // echo, is one line now, not thousands of counted errors or a long wait.
  await expectEchoOrExit(options);
  const stop = new AbortController();
  let interrupts = 0;
  Deno.addSignalListener("SIGINT", () => {
    // The first Ctrl-C ends the run and reports it; the second exits now.
    if (++interrupts > 1) Deno.exit(130);
    stop.abort();
  });
  const progress = Deno.stderr.isTerminal() ? progressLine(options) : undefined;
  let report: LoadReport;
  try {
    report = await runLoad({
      ...options,
      signal: stop.signal,
      onProgress: progress?.update,
    });
  } catch (error) {
    fail(
      SCRIPT,
      `cannot reach ${where}: ${
        error instanceof Error ? error.message : String(error)
      }`,
    );
  }
  progress?.clear();
  if (json) console.log(JSON.stringify(report));
  else console.log(formatReport(options, report, where));
  if (report.mismatches > 0) {
    fail(
      SCRIPT,
      `${report.mismatches} of ${report.requests} echoes differed from what was sent`,
    );
  }
  if (report.errors > 0) {
    fail(
      SCRIPT,
      `${report.errors} requests failed (connects, resets, timeouts)`,
    );
  }
  if (report.requests === 0 && !stop.signal.aborted) {
    fail(
      SCRIPT,
      options.udp
        ? `no answer from ${where}: all ${report.lost} datagrams lost`
        : `no request completed against ${where}`,
    );
  }
  Deno.exit(0);
}

/** The live progress line on a terminal's stderr. */
function progressLine(options: LoadOptions): {
  update: (done: number) => void;
  clear: () => void;
} {
  const encoder = new TextEncoder();
  const started = performance.now();
  let last = { at: started, done: 0 };
  const total = options.duration === undefined
    ? options.connections * options.requests!
    : undefined;
  const write = (text: string) => {
    try {
      Deno.stderr.writeSync(encoder.encode(text));
    } catch { /* stderr gone */ }
  };
  return {
    update(done: number) {
      const now = performance.now();
      const rate = (done - last.done) / ((now - last.at) / 1000);
      last = { at: now, done };
      const of = total === undefined
        ? `${((now - started) / 1000).toFixed(1)}/${options.duration} s`
        : `${Math.floor((done / total) * 100)}%`;
      write(`\r\x1b[K${done} requests (${of}), ${Math.round(rate)}/s`);
    },
    clear() {
      write("\r\x1b[K");
    },
  };
}

/** The report for people. */
function formatReport(
  options: LoadOptions,
  report: LoadReport,
  where: string,
): string {
  const { latencyMs: l } = report;
  const kind = options.udp
    ? "UDP"
    : options.newConnection
    ? "a new connection per request"
    : "persistent connections";
  const perRequest = report.requests && report.cpuMs !== undefined
    ? ` (${
      ((report.cpuMs * 1000) / report.requests).toFixed(1)
    } µs per request)`
    : "";
  return [
    `${report.connections} x ${
      formatBytes(report.size)
    } requests to ${where} (${kind}): ${report.requests} in ${
      report.seconds.toFixed(3)
    } s`,
    `  requests/s   ${report.requestsPerSecond}`,
    `  MB/s         ${report.mbPerSecond} (payload, each way)`,
    `  latency      p50 ${l.p50} ms, p90 ${l.p90} ms, p99 ${l.p99} ms, max ${l.max} ms`,
    `  errors       ${report.errors}`,
    `  mismatches   ${report.mismatches}`,
    ...(report.lost === undefined ? [] : [`  lost         ${report.lost}`]),
    ...(report.cpuMs === undefined
      ? []
      : [`  client CPU   ${report.cpuMs} ms${perRequest}`]),
  ].join("\n");
}

if (import.meta.main) {
  const command = await parseClientArgs(Deno.args);
  if (command.mode === "load") await load(command.load, command.json);
  else if (command.mode === "message") {
    await oneShot(command.target, command.message, command.timeoutMs);
  } else if (command.target.udp) {
    await interactiveDatagrams(command.target, command.timeoutMs);
  } else await interactive(command.target, command.timeoutMs);
}
