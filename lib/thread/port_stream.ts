/**
 * A byte stream over a MessagePort, as a {@linkcode Duplex} relay.ts can pipe
 * (half-close included): how a client's bytes reach a Worker, as no Deno API
 * moves a socket to one. Backpressure: at most 8 buffers of 64 KiB in flight
 * each way, each transferred with its bytes and sent back once read, the
 * credit to send more; so a client that writes without reading is held back
 * by TCP, not buffered between the threads.
 *
 * Closing is a handshake: each side posts "close" once and lets its port go
 * only once the other's has come, every message taken off the port by then.
 * Deno 2.9.6 never frees buffers still queued to a terminated Worker
 * (docs/models/threaded.md, "Memory").
 *
 * @module
 */
import type { Duplex } from "../relay.ts";

const CHUNK_SIZE = 64 * 1024;
const CHUNKS = 8; // in flight each way, at most
/** This side writes no more: the other side's read returns null. */
const EOF = "eof";
/** This side is done: the other's I/O fails, and its own close answers. */
const CLOSE = "close";

/** One end of a two-way byte stream between two threads. */
export class PortStream implements Duplex {
  #closed = Promise.withResolvers<void>();
  /** Resolves when the other side has closed the stream. */
  readonly closed = this.#closed.promise;
  #port: MessagePort;
  #inbox = new Queue<Uint8Array<ArrayBuffer> | typeof EOF>();
  #credits = new Queue<ArrayBuffer>();
  #unmade = CHUNKS; // buffers not made yet: a line at a time needs only one
  #chunk: Uint8Array<ArrayBuffer> | null = null;
  #offset = 0;
  #peerClosed = false;
  #closing = false;
  #released = false;
  #failure?: Error;
  #signals: AbortSignal[];

  /**
   * Takes over `port`, whose other end is a PortStream too. When one of
   * `signals` aborts (a client ended from outside, a worker that died),
   * pending and later reads and writes fail with its reason.
   */
  constructor(port: MessagePort, signals: AbortSignal[] = []) {
    this.#port = port;
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
   * Tells the other side (or answers its close); resolves, and lets the port
   * go, once it has closed too. Who cannot wait calls {@linkcode release}.
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

/** A port's messages, in order; once failed, `take` rejects when empty. */
class Queue<T> {
  #items: T[] = [];
  #taker?: PromiseWithResolvers<T>;
  #error?: Error;

  get empty(): boolean {
    return this.#items.length === 0;
  }

  put(item: T): void {
    if (this.#taker) this.#taker.resolve(item);
    else this.#items.push(item);
    this.#taker = undefined;
  }

  take(): Promise<T> {
    if (this.#items.length) return Promise.resolve(this.#items.shift()!);
    if (this.#error) return Promise.reject(this.#error);
    this.#taker = Promise.withResolvers<T>();
    return this.#taker.promise;
  }

  fail(error: Error): void {
    this.#error ??= error;
    this.#taker?.reject(this.#error);
    this.#taker = undefined;
  }
}
