/**
 * A byte link between two streams, both ways, for a server that cannot hand
 * a client's socket to whoever serves it (a child, a Worker). Each direction
 * writes a chunk before reading the next, so a side that stops reading holds
 * the other back through its own flow control; an end of stream becomes a
 * half-close of the other side.
 *
 * @module
 */
import { type ByteReader, type ByteWriter, writeAll } from "./echo.ts";

/** Where bytes go, and can be ended: a socket's sending side, stdout. */
export interface Sink extends ByteWriter {
  /** Ends the stream towards the other side (its EOF); reading goes on. */
  closeWrite(): Promise<void>;
}

/** One end of a two-way byte stream: a socket, a child's pipes, a port. */
export interface Duplex extends ByteReader, Sink {}

/** Bytes read per chunk, each way. */
const CHUNK = 64 * 1024;

/**
 * Copies `from` into `to` until `from` ends, then half-closes `to` (with
 * `halfClose`, the default). Calls `moved(n)` after each chunk is written.
 * Resolves at the end; rejects when either side fails.
 */
export async function pipe(
  from: ByteReader,
  to: Sink,
  moved: (n: number) => void = () => {},
  halfClose = true,
): Promise<void> {
  const buffer = new Uint8Array(CHUNK);
  for (;;) {
    const n = await from.read(buffer);
    if (n === null) break;
    await writeAll(to, n === buffer.length ? buffer : buffer.subarray(0, n));
    moved(n);
  }
  if (halfClose) await closeWriteQuietly(to);
}

/**
 * Relays between `a` (the client) and `b` both ways until both have ended,
 * counting `a`'s bytes as `bytesIn`, `b`'s as `bytesOut`. Rejects on the
 * first failure.
 */
export async function relay(
  a: Duplex,
  b: Duplex,
  counters: { bytesIn: number; bytesOut: number },
): Promise<void> {
  await Promise.all([
    pipe(a, b, (n) => counters.bytesIn += n),
    pipe(b, a, (n) => counters.bytesOut += n),
  ]);
}

/** Half-closes `to`, unless the peer has closed already (NotConnected). */
export async function closeWriteQuietly(to: Sink): Promise<void> {
  try {
    await to.closeWrite();
  } catch (error) {
    if (!(error instanceof Deno.errors.NotConnected)) throw error;
  }
}
