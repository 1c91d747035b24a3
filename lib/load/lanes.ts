/**
 * What one connection (or UDP sender) of a load run does: send a request,
 * read its whole echo, check every byte, again and again. The TCP stream lane
 * (a persistent connection, or with `newConnection` a fresh one per request)
 * and the datagram lane; load.ts runs N of them and keeps the books.
 *
 * These loops are the hot path: per lane one request and one receive buffer
 * serve every request, the echo is checked 4 bytes at a time as it arrives,
 * and nothing is allocated per request. docs/client.md has the measurements.
 *
 * Memory is bounded whatever the product of connections and size: the lanes'
 * requests are views into one shared random pool ({@linkcode requestPool}),
 * and TCP receive buffers shrink when many lanes share
 * {@linkcode RECEIVE_BUDGET}.
 *
 * @module
 */
import { writeAll } from "../echo.ts";
import { sleep } from "../time.ts";

/**
 * What a lane needs of the run it is part of (load.ts's LoadRun): where to
 * send, how many requests and until when, and where to count them.
 */
export interface LaneRun {
  /** Where to send, and whether to connect afresh per request. */
  readonly options: {
    host: string;
    port: number;
    unix?: string;
    newConnection?: boolean;
  };
  /** Requests per lane (Infinity in duration mode). */
  readonly perLane: number;
  /** No request starts at or after this performance.now() time. */
  readonly deadline: number;
  /** Set when the run has ended: no new requests. */
  readonly stopped: boolean;
  /**
   * Records one completed round trip that started at `started`; returns the
   * time it ended (performance.now()), which is when the next one starts.
   */
  record(started: number, same: boolean): number;
  /** Counts a failed request of `lane` by its cause, and closes the lane. */
  fault(lane: Lane, error: unknown): void;
}

// Requests up to this size are written whole, then their echo read: the echo
// fits in the socket buffers meanwhile. Larger ones are written while the echo
// is read, or client and server would both block writing (a deadlock).
const WRITE_THEN_READ_LIMIT = 64 * 1024;

/**
 * What the TCP lanes' receive buffers may take together: up to 1,024 lanes
 * each get a whole 64 KiB one; more lanes get smaller ones (at least 4 KiB),
 * so that 10,000 connections need no 640 MiB. UDP lanes cannot shrink theirs
 * (a datagram is received whole): runLoad refuses what would exceed it.
 */
export const RECEIVE_BUDGET = 64 * 1024 * 1024;

// Lane i's request starts this many bytes into the shared pool: distinct
// bytes per lane (a crossed echo shows as a mismatch) for 64 bytes a lane,
// not SIZE; a multiple of 4 keeps the word views aligned.
const LANE_STRIDE = 64;

/**
 * The random bytes every lane's request is a view of: `size` bytes plus
 * {@linkcode LANE_STRIDE} per further lane (`lanes` of them).
 */
export function requestPool(size: number, lanes: number): Uint8Array {
  const pool = new Uint8Array(size + LANE_STRIDE * (lanes - 1));
  for (let at = 0; at < pool.length; at += 65_536) { // the most one call fills
    crypto.getRandomValues(pool.subarray(at, at + 65_536));
  }
  return pool;
}

/** The receive buffer of each of `lanes` lanes for `size`-byte requests. */
export function receiveSize(size: number, lanes: number, udp: boolean): number {
  if (udp) return size + 1; // one byte more, to see an oversize reply
  const share = Math.max(
    4096,
    Math.floor(RECEIVE_BUDGET / lanes / 4096) * 4096,
  );
  return Math.min(size, WRITE_THEN_READ_LIMIT, share);
}

/** One connection (or UDP sender) of a run, with its reusable buffers. */
export class Lane {
  /** The lane's connection or UDP socket, while it has one. */
  link: Deno.Conn | Deno.DatagramConn | null = null;
  /** performance.now() when the request in flight started; 0 when idle. */
  sentAt = 0;
  /** Set by the watchdog when it closed this lane's request for taking too long. */
  timedOut = false;
  /** Aborts the lane's last connect, if still pending. */
  connecting?: AbortController;
  /** The request, the same random bytes every time; distinct per lane, so
   * that echoes crossed between connections show up as mismatches. */
  readonly request: Uint8Array;
  /** Where echoes are read into (UDP: one byte more, to see an oversize reply). */
  readonly reply: Uint8Array;
  // The same two buffers seen as 32-bit words: comparing 4 bytes at a time
  // keeps checking a 64 KiB echo cheaper than receiving it.
  readonly requestWords: Int32Array;
  readonly replyWords: Int32Array;

  /**
   * Lane `index` of a run whose requests of `size` bytes are views of
   * `pool` (from {@linkcode requestPool}); echoes are read into a buffer of
   * `replySize` bytes ({@linkcode receiveSize}).
   */
  constructor(
    pool: Uint8Array,
    index: number,
    size: number,
    replySize: number,
  ) {
    const at = index * LANE_STRIDE;
    this.request = pool.subarray(at, at + size);
    this.reply = new Uint8Array(replySize);
    this.requestWords = new Int32Array(
      pool.buffer,
      pool.byteOffset + at,
      size >>> 2,
    );
    const words = this.reply.length >>> 2;
    this.replyWords = new Int32Array(this.reply.buffer, 0, words);
  }

  /** Closes the connection or socket: a pending read, write or connect fails. */
  close(): void {
    this.connecting?.abort();
    try {
      this.link?.close();
    } catch { /* already closed */ }
    this.link = null;
  }
}

/**
 * TCP or Unix. A persistent connection: connect once, then request after
 * request, each timed from its write. With `newConnection`, the way a
 * one-shot client uses a server: connect, send, half-close, read the echo and
 * the server's close, all of it timed: what a model pays per client.
 */
export async function streamLane(run: LaneRun, lane: Lane): Promise<void> {
  const { request, reply } = lane;
  const size = request.length;
  const fresh = run.options.newConnection === true;
  let started = performance.now();
  for (let i = 0; i < run.perLane && !run.stopped; i++) {
    if (started >= run.deadline) break;
    lane.timedOut = false;
    lane.sentAt = started;
    try {
      let conn = lane.link as Deno.Conn | null;
      if (conn === null) {
        conn = lane.link = await connect(run, lane);
        if (lane.timedOut) throw new Deno.errors.TimedOut("connect timed out");
        if (!fresh) started = lane.sentAt = performance.now();
      }
      let writing: Promise<void> | undefined;
      if (size > WRITE_THEN_READ_LIMIT) {
        // Written while the echo is read; a failure shows in the read too.
        writing = send(conn, request, fresh).catch(() => {});
      } else {
        // The hot path, inline: one write and (almost always) one read. A
        // call per request for each costs the client 4-7 % more CPU (measured).
        const written = await conn.write(request);
        if (written < size) await writeAll(conn, request.subarray(written));
        if (fresh) await conn.closeWrite();
      }
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
      if (writing) await writing;
      if (fresh) {
        if ((await conn.read(reply)) !== null) same = false; // more than was sent
        lane.close();
      }
      lane.sentAt = 0;
      // One clock reading per request: this one ends it and starts the next.
      started = run.record(started, same);
    } catch (error) {
      run.fault(lane, error);
      if (run.perLane === Infinity && !run.stopped) await sleep(10); // no busy loop
      started = performance.now();
    }
  }
  lane.close();
}

/** UDP: one datagram out, one back, per request; a lost one times out. */
export async function datagramLane(run: LaneRun, lane: Lane): Promise<void> {
  const { request, reply } = lane;
  const { host, port } = run.options;
  const to: Deno.NetAddr = { transport: "udp", hostname: host, port };
  for (let i = 0; i < run.perLane && !run.stopped; i++) {
    const started = performance.now();
    if (started >= run.deadline) break;
    lane.timedOut = false;
    lane.sentAt = started;
    try {
      const socket = (lane.link ??= Deno.listenDatagram({
        transport: "udp",
        hostname: bindAddressFor(host),
        port: 0,
      })) as Deno.DatagramConn;
      await socket.send(request, to);
      let data: Uint8Array, from: Deno.Addr;
      do { // anyone can send to our port: only the server's answers count
        [data, from] = await socket.receive(reply);
      } while (
        (from as Deno.NetAddr).port !== port ||
        (from as Deno.NetAddr).hostname !== host
      );
      // Deno receives into `reply` and returns a view of its start.
      if (data.buffer !== reply.buffer) reply.set(data);
      lane.sentAt = 0;
      const { length } = data;
      run.record(
        started,
        length === request.length && sameBytes(lane, length, 0),
      );
    } catch (error) {
      // Closed by the watchdog (lost; the next request gets a fresh port, so
      // a late answer cannot pass for the next one), or the send failed.
      run.fault(lane, error);
    }
  }
  lane.close();
}

/** The local address a UDP socket binds to reach `address`. */
export function bindAddressFor(address: string): string {
  if (address === "::1") return address;
  if (address.startsWith("127.")) return "127.0.0.1";
  return address.includes(":") ? "::" : "0.0.0.0";
}

/**
 * Opens a connection for `lane`; sets TCP_NODELAY on TCP. Closing the lane
 * (timeout, stop) abandons a connect still pending, as against a listener
 * whose backlog is full, where the kernel keeps retrying the handshake.
 */
async function connect(run: LaneRun, lane: Lane): Promise<Deno.Conn> {
  const { unix, host, port } = run.options;
  if (unix !== undefined) {
    return await Deno.connect({ transport: "unix", path: unix });
  }
  const { signal } = lane.connecting = new AbortController();
  const conn = await Deno.connect({ hostname: host, port, signal });
  // One write per request already; NODELAY keeps a request the kernel had
  // to split from waiting on a delayed ACK (a 40 ms stall, not the server).
  conn.setNoDelay(true);
  return conn;
}

/** Writes all of a large request, then half-closes if asked. */
async function send(conn: Deno.Conn, request: Uint8Array, closeWrite: boolean) {
  await writeAll(conn, request);
  if (closeWrite) await conn.closeWrite();
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
