/**
 * A byte stream over a MessagePort, with backpressure: how two threads move a
 * client's bytes when the socket cannot move (no Deno API hands a socket to a
 * Worker). Each side has at most 8 buffers of 64 KiB in flight towards the
 * other: a buffer is transferred (moved, not copied) with the bytes, and the
 * reader sends it back once it has used them; that return is the credit to
 * send more. So a client that writes GiBs without reading is held back by
 * TCP, not buffered between the threads. End of stream and closing are
 * messages too, so a {@linkcode PortStream} is a {@linkcode Duplex} that
 * relay.ts can pipe, half-close included.
 *
 * Closing is a handshake: each side posts "close" once, and lets its port go
 * only when the other side's "close" has come, so that every message either
 * side sent has been taken off the port by then. A Worker must not be
 * terminated while messages that move buffers are still queued to it: Deno
 * (2.9.6) never frees those buffers (docs/models/threaded.md, "Memory").
 *
 * @module
 */
import type { Duplex } from "../relay.ts";

/** Bytes per buffer. */
const CHUNK_SIZE = 64 * 1024;
/** Buffers in flight each way, at most. */
const CHUNKS = 8;
/** This side will write no more: the other side's read returns null. */
const EOF = "eof";
/**
 * This side is done with the stream and will post nothing more: the other
 * side's reads and writes fail, and its own "close" answers this one.
 */
const CLOSE = "close";

/** One end of a two-way byte stream between two threads. */
export class PortStream implements Duplex {
  /** Resolves when the other side has closed the stream. */
  readonly closed: Promise<void>;
  #port: MessagePort;
  #inbox = new Queue<Uint8Array<ArrayBuffer> | typeof EOF>();
  #credits = new Queue<ArrayBuffer>();
  #unmade = CHUNKS; // buffers not made yet: a line at a time needs only one
  #chunk: Uint8Array<ArrayBuffer> | null = null;
  #offset = 0;
  #closed = Promise.withResolvers<void>();
  #peerClosed = false;
  #closing = false;
  #released = false;
  #failure?: Error;
  #signals: AbortSignal[];

  /**
   * Takes over `port` (the other end is a PortStream in the other thread).
   * When one of `signals` aborts, pending and later reads and writes fail with
   * its reason: a client ended from outside, a worker that died.
   */
  constructor(port: MessagePort, signals: AbortSignal[] = []) {
    this.#port = port;
    this.closed = this.#closed.promise;
    this.#signals = signals;
    port.onmessage = ({ data }) => {
      if (data instanceof ArrayBuffer) this.#credits.put(data);
      else if (data !== CLOSE) this.#inbox.put(data);
      else {
        this.#peerClosed = true;
        this.#fail(new Error("the other side closed the stream"));
        this.#closed.resolve();
        if (this.#closing) this.release(); // our close answered: all taken
      }
    };
    for (const signal of signals) {
      signal.addEventListener("abort", this.#onAbort);
      if (signal.aborted) this.#onAbort({ target: signal });
    }
  }

  #onAbort = ({ target }: { target: EventTarget | null }) => {
    const reason = (target as AbortSignal).reason;
    this.#fail(reason instanceof Error ? reason : new Error(String(reason)));
  };

  #fail(error: Error): void {
    this.#failure ??= error;
    this.#inbox.fail(error);
    this.#credits.fail(error);
  }

  /** Reads the next bytes the other side wrote; null once it half-closed. */
  async read(into: Uint8Array): Promise<number | null> {
    if (this.#failure) throw this.#failure;
    if (this.#chunk === null) {
      const message = await this.#inbox.take();
      if (message === EOF) return null;
      this.#chunk = message;
      this.#offset = 0;
    }
    const chunk = this.#chunk;
    const n = Math.min(into.length, chunk.length - this.#offset);
    into.set(chunk.subarray(this.#offset, this.#offset + n));
    this.#offset += n;
    if (this.#offset === chunk.length) {
      this.#chunk = null;
      this.#port.postMessage(chunk.buffer, [chunk.buffer]); // used: send more
    }
    return n;
  }

  /** Writes up to 64 KiB of `bytes`; waits while 8 buffers are in flight. */
  async write(bytes: Uint8Array): Promise<number> {
    if (this.#failure) throw this.#failure;
    if (bytes.length === 0) return 0;
    const buffer = this.#unmade > 0 && this.#credits.empty
      ? (this.#unmade--, new ArrayBuffer(CHUNK_SIZE))
      : await this.#credits.take();
    const n = Math.min(bytes.length, CHUNK_SIZE);
    const chunk = new Uint8Array(buffer, 0, n);
    chunk.set(bytes.subarray(0, n));
    this.#port.postMessage(chunk, [buffer]); // moved: no longer ours
    return n;
  }

  /** Half-closes: the other side reads end of stream; reading goes on. */
  closeWrite(): Promise<void> {
    this.#port.postMessage(EOF);
    return Promise.resolve();
  }

  /**
   * Done with the stream: tells the other side (or answers its close), and
   * resolves once the other side has closed too, every message it was sent
   * taken; then the port is let go. A caller that cannot wait for that (the
   * other thread is dead, or busy for too long) calls
   * {@linkcode PortStream.release}.
   */
  close(): Promise<void> {
    if (this.#released) return Promise.resolve();
    if (!this.#closing) {
      this.#closing = true;
      this.#port.postMessage(CLOSE);
      this.#fail(new Error("the stream is closed"));
      if (this.#peerClosed) this.release();
    }
    return this.#closed.promise;
  }

  /** Lets the port go now, whether or not the other side has closed. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    for (const signal of this.#signals) {
      signal.removeEventListener("abort", this.#onAbort);
    }
    this.#port.onmessage = null; // the port's last reference to this stream
    this.#port.close();
    this.#fail(new Error("the stream is closed"));
  }
}

/**
 * A queue whose `take` waits for the next item: a port's messages, in order.
 * Once failed, `take` rejects when nothing is left.
 */
class Queue<T> {
  #items: T[] = [];
  #taker?: PromiseWithResolvers<T>;
  #error?: Error;

  get empty(): boolean {
    return this.#items.length === 0;
  }

  put(item: T): void {
    const taker = this.#taker;
    this.#taker = undefined;
    if (taker) taker.resolve(item);
    else this.#items.push(item);
  }

  take(): Promise<T> {
    if (this.#items.length) return Promise.resolve(this.#items.shift()!);
    if (this.#error) return Promise.reject(this.#error);
    this.#taker = Promise.withResolvers<T>();
    return this.#taker.promise;
  }

  /** The pending and every later `take` on an empty queue reject. */
  fail(error: Error): void {
    this.#error ??= error;
    this.#taker?.reject(this.#error);
    this.#taker = undefined;
  }
}
