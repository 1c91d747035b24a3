#!/usr/bin/env -S deno run --allow-net --allow-read --allow-write --unstable-net --unstable-worker-options
/**
 * Threaded echo server: a Web Worker per client, or a pool of N workers.
 *
 * Thread per client (CS:APP's `echoservert.c`): the main thread accepts, and
 * every client gets a thread of its own that runs the echo service, so a
 * client whose requests burn CPU (`--cpu-ms`) slows nobody else down until the
 * cores run out. In Deno a thread is a Web Worker, a whole V8 isolate: here
 * one takes about 20 ms to start (median of 40 clients; `pthread_create` plus
 * join takes 80 µs on the same machine) and 10 MiB of RSS. And where C hands
 * the connected fd to the new thread, Deno cannot pass a socket to a worker at
 * all (no fd passing, no shared resources): the main thread keeps the
 * connection and moves its bytes to and from the worker as transferable
 * ArrayBuffers over a MessageChannel. Eight 64 KiB buffers go each way and come
 * back once the other side has used them: that return is the credit to send
 * more, so a client that writes GiBs without reading is held back by TCP, not
 * buffered between the threads. The relaying costs: one client streams about
 * 300 MiB/s here, a third of what --pool does, and the main thread caps them all.
 *
 * `--pool N` is the pre-threaded model (`echoservert-pre.c`) the way Deno
 * allows it: N workers started up front, each with its own listener on the same
 * port (SO_REUSEPORT: the kernel spreads new connections among them), each
 * serving its clients on its own event loop. No worker starts per client and no
 * byte crosses threads (a new client's first echo: 0.4 ms, against 29 ms with a
 * worker per client), but two clients on the same worker share its one thread.
 * The main thread only supervises: a worker that dies is replaced, and
 * SIGINT/SIGTERM make every worker stop accepting, drain, and end. With
 * `--unix` (Unix sockets have no SO_REUSEPORT) the main thread accepts and
 * hands each client to the least busy pool worker over a MessageChannel: the
 * shared buffer of connections of `echoservert-pre.c`.
 *
 * Workers get only what they need (`--unstable-worker-options`): an echoing
 * worker no permission but to load this module, a pool worker that accepts
 * also the one address it listens on.
 * OS thread ids in the log need /proc/self, which Deno opens only with -A.
 *
 * Run:  deno run -A threaded.ts 8080            (a worker per client)
 *       deno run -A threaded.ts 8080 --pool 4   (four workers, started once)
 * Try:  `--cpu-ms 200` and type in two `nc 127.0.0.1 8080` at once: both echo
 *       after 200 ms (evented.ts makes the second wait 400 ms). Watch threads
 *       come and go with `top -H -p PID`. With `--pool 2`, `kill -USR2 PID`
 *       makes worker 1 throw: its clients are cut, worker 3 takes its place,
 *       the other clients never notice.
 */
import {
  fail,
  type ModelSpec,
  parseServerArgs,
  type ServerOptions,
  serverUsage,
  usageError,
} from "./cli.ts";
import { formatAddr, Logger } from "./log.ts";
import { echo } from "./protocol.ts";
import {
  type EchoServer,
  listenOrExit,
  onShutdownSignal,
  type Session,
  startServer,
} from "./server.ts";
import { sleep } from "./time.ts";

const SCRIPT = "threaded.ts";
const MODEL = "threaded";
// A worker is an isolate of about 10 MiB and 20 ms of CPU to start: 64 of
// them are 0.7 GiB, about where "a thread per client" stops being cheap.
const PER_CLIENT_MAX_CONNS = 64;
// Pool workers serve their clients as evented.ts does: a few KiB each.
const POOL_MAX_CONNS = 10_000;
const MAX_POOL = 256;
// Bytes in flight between the threads, each way, per client: CHUNKS buffers
// of CHUNK_SIZE bytes, no more.
const CHUNK_SIZE = 64 * 1024;
const CHUNKS = 8;
// A worker that only echoes needs no permission: only to load this module.
const ECHO_ONLY: Deno.PermissionOptionsObject = { import: "inherit" };
// How long a worker gets to start and listen, or to stop accepting.
const ANSWER_MS = 10_000;

// What the threads say to each other besides bytes (Uint8Array) and returned
// buffers (ArrayBuffer).
const READY = "ready"; // worker: this module is running
const EOF = "eof"; // main: the client half-closed
const END = "end"; // worker: no more bytes for the client
const CLOSE = "close"; // main: the client is gone, release its port
const LISTENING = "listening"; // pool worker: bound the shared port
const STOP_ACCEPTING = "stop-accepting"; // main: close your listener
const NOT_ACCEPTING = "not-accepting"; // pool worker: it is closed
const STOPPED = "stopped"; // pool worker: clients drained
const FAULT = "fault"; // main (SIGUSR2): throw, as a buggy worker would

// ---------------------------------------------------------------------------
// The main thread
// ---------------------------------------------------------------------------

async function main(): Promise<void> {
  const options = await parseServerArgs(Deno.args, SPEC);
  const fault = (reason: string) =>
    usageError(SCRIPT, reason, serverUsage(SPEC));
  const poolSize = options.extra.pool as number | undefined;
  if (poolSize !== undefined) {
    if (options.maxConns < poolSize) {
      fault(`--max-conns ${options.maxConns} is less than --pool ${poolSize}`);
    }
    return options.unix === undefined
      ? await runListeningPool(options, poolSize)
      : await runRelayPool(options, poolSize);
  }
  // Start one worker before the banner: a Deno without worker options, or a
  // worker that cannot load this module, fails now rather than at a client.
  const probe = new Thread(0, `${SCRIPT} probe`, ECHO_ONLY);
  await probe.ready.catch((error) => fail(SCRIPT, error.message));
  probe.terminate();

  // echoservert.c: the main thread accepts; every client gets a new thread.
  const server = await startServer(options, {
    banner: ["a worker per client"],
  });
  const live = new Map<number, Thread>();
  onFaultSignal(() => live.values().next().value);
  for await (const conn of server.clients()) {
    server.serve(conn, (session) => serveOnNewWorker(session, server, live));
  }
}

/** Pthread_create(&tid, NULL, thread, connfdp): one thread for one client. */
async function serveOnNewWorker(
  session: Session,
  server: EchoServer,
  live: Map<number, Thread>,
): Promise<void> {
  const thread = new Thread(
    session.id,
    `${SCRIPT} client #${session.id}`,
    ECHO_ONLY,
  );
  live.set(session.id, thread);
  thread.ready.then(
    (ms) => logServedBy(server.log, session, thread, ms),
    () => {}, // died before it ran: the client's close line says why
  );
  try {
    thread.post({ role: "echo", cpuMs: server.options.cpuMs });
    await serveOnWorker(session, thread);
  } finally {
    // The thread ends with its client: nothing to join, nothing to detach.
    thread.terminate();
    live.delete(session.id);
  }
}

/**
 * echoservert-pre.c with the kernel as the shared buffer: N workers accept on
 * the same port, each serving its own clients; the main thread supervises.
 */
async function runListeningPool(
  options: ServerOptions,
  size: number,
): Promise<void> {
  const log = new Logger(options);
  // Bind first, to learn the port (0 picks one) and to hold it while the
  // workers bind it too; then let go, so that only workers accept. A client
  // that connects before the banner may be reset when this closes.
  const placeholder = await listenOrExit(options, true);
  const addr = placeholder.addr as Deno.NetAddr;
  const start = {
    role: "listen",
    options: {
      ...options,
      host: addr.hostname, // "localhost" resolved: what the permission names
      port: addr.port,
      maxConns: Math.ceil(options.maxConns / size),
    },
    // One session counter for all: a `#id` names one client in the process.
    ids: new SharedArrayBuffer(4),
  };
  const pool = new Pool(log, async (number) => {
    const thread = new Thread(number, `${SCRIPT} pool worker ${number}`, {
      ...ECHO_ONLY,
      net: [formatAddr(addr)], // and to listen on the one shared address
    });
    await thread.ask(
      { ...start, worker: number, thread: thread.thread },
      LISTENING,
    );
    return thread;
  });
  try {
    await pool.start(size);
  } catch (error) {
    log.error((error as Error).message);
    Deno.exit(1);
  }
  placeholder.close();
  // Handlers before the banner: whoever has seen it may signal at once.
  onShutdownSignal((signal, count) => pool.stop(signal, count, options.grace));
  onFaultSignal(() => pool.first());
  log.listening(addr, [MODEL, `pool of ${size} workers`, `pid ${Deno.pid}`], {
    model: MODEL,
    maxConns: options.maxConns,
    pool: size,
  });
  pool.logWorkers();
}

/**
 * echoservert-pre.c for a Unix socket, which no two listeners can share: the
 * main thread accepts and hands each client to the least busy pool worker.
 */
async function runRelayPool(
  options: ServerOptions,
  size: number,
): Promise<void> {
  const log = new Logger(options);
  const pool = new Pool(log, async (number) => {
    const thread = new Thread(
      number,
      `${SCRIPT} pool worker ${number}`,
      ECHO_ONLY,
    );
    thread.post({ role: "echo", cpuMs: options.cpuMs });
    await thread.ready;
    return thread;
  });
  try {
    await pool.start(size);
  } catch (error) {
    log.error((error as Error).message);
    Deno.exit(1);
  }
  const server = await startServer(options, {
    banner: [`pool of ${size} workers`, "fed by the main thread"],
    onStop: () => pool.terminate(),
  });
  onFaultSignal(() => pool.first());
  pool.logWorkers();
  for await (const conn of server.clients()) {
    server.serve(conn, (session) => {
      const thread = pool.leastBusy();
      logServedBy(server.log, session, thread);
      return serveOnWorker(session, thread);
    });
  }
}

// ---------------------------------------------------------------------------
// Moving a client's bytes between its connection and a worker
// ---------------------------------------------------------------------------

/**
 * Serves `session` on `thread`: hands the worker one end of a new
 * MessageChannel and relays between the connection and the other end until
 * both directions have ended, the client is ended from outside (idle timeout,
 * shutdown), or the worker dies.
 */
async function serveOnWorker(session: Session, thread: Thread): Promise<void> {
  thread.dead.throwIfAborted();
  const { port1: port, port2 } = new MessageChannel();
  thread.post({ client: port2 }, [port2]);
  thread.clients++;
  const { promise: ended, reject } = Promise.withResolvers<never>();
  const onAbort = (event: Event) => {
    const reason = (event.target as AbortSignal).reason;
    reject(reason instanceof Error ? reason : new Error(String(reason)));
  };
  session.signal.addEventListener("abort", onAbort);
  thread.dead.addEventListener("abort", onAbort);
  try {
    await Promise.race([relay(session.conn, port, session), ended]);
  } finally {
    session.signal.removeEventListener("abort", onAbort);
    thread.dead.removeEventListener("abort", onAbort);
    thread.clients--;
    port.postMessage(CLOSE); // a pool worker goes on: it frees this client
    port.close();
  }
}

/** Relays both ways between `conn` and the worker at the other end of `port`. */
async function relay(
  conn: Deno.Conn,
  port: MessagePort,
  counters: Session,
): Promise<void> {
  const { credits, inbox } = openPort(port);
  await Promise.all([
    clientToWorker(conn, port, credits, counters),
    workerToClient(conn, port, inbox, counters),
  ]);
}

async function clientToWorker(
  conn: Deno.Conn,
  port: MessagePort,
  credits: Mailbox<ArrayBuffer>,
  counters: Session,
): Promise<void> {
  for (;;) {
    // No free buffer means the worker has CHUNKS unread: stop reading the
    // client, and TCP holds it back.
    const buffer = await credits.take();
    const chunk = new Uint8Array(buffer);
    const n = await conn.read(chunk);
    if (n === null) return port.postMessage(EOF);
    counters.bytesIn += n;
    // Transferred, not copied: the buffer now belongs to the worker alone.
    port.postMessage(n === chunk.length ? chunk : chunk.subarray(0, n), [
      buffer,
    ]);
  }
}

async function workerToClient(
  conn: Deno.Conn,
  port: MessagePort,
  inbox: Mailbox<Bytes | string>,
  counters: Session,
): Promise<void> {
  for (;;) {
    const message = await inbox.take();
    if (message === END) return await closeWrite(conn);
    const chunk = message as Bytes;
    for (let off = 0; off < chunk.length;) {
      off += await conn.write(off ? chunk.subarray(off) : chunk);
    }
    counters.bytesOut += chunk.length;
    port.postMessage(chunk.buffer, [chunk.buffer]); // the credit to send more
  }
}

async function closeWrite(conn: Deno.Conn): Promise<void> {
  try {
    await conn.closeWrite();
  } catch (error) {
    // The client closed first: nothing left to tell it.
    if (!(error instanceof Deno.errors.NotConnected)) throw error;
  }
}

/**
 * Sorts what arrives on `port`: returned buffers (credits to send more), and
 * bytes and control words, in order; CLOSE fails both. There are CHUNKS
 * credits, each a buffer made when first needed: a client that sends a line
 * at a time never needs more than one.
 */
function openPort(port: MessagePort): {
  credits: Mailbox<ArrayBuffer>;
  inbox: Mailbox<Bytes | string>;
} {
  const credits = new Mailbox(CHUNKS, () => new ArrayBuffer(CHUNK_SIZE));
  const inbox = new Mailbox<Bytes | string>();
  port.onmessage = ({ data }) => {
    if (data instanceof ArrayBuffer) credits.put(data);
    else if (data !== CLOSE) inbox.put(data);
    else {
      const gone = new Error("the client is gone");
      inbox.fail(gone);
      credits.fail(gone);
    }
  };
  return { credits, inbox };
}

/** Bytes in a buffer of their own: what can be moved to another thread. */
type Bytes = Uint8Array<ArrayBuffer>;

/**
 * A queue whose `take` waits for the next item: port messages, in order. Given
 * `make`, it holds `makeable` more items than were put, made on demand.
 */
class Mailbox<T> {
  #items: T[] = [];
  #taker?: PromiseWithResolvers<T>;
  #error?: Error;

  #makeable: number;

  constructor(makeable = 0, readonly make?: () => T) {
    this.#makeable = makeable;
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
    if (this.make && this.#makeable > 0) {
      this.#makeable--;
      return Promise.resolve(this.make());
    }
    this.#taker = Promise.withResolvers<T>();
    return this.#taker.promise;
  }

  /** Makes the pending and every later `take` reject with `error`. */
  fail(error: Error): void {
    this.#error = error;
    this.#taker?.reject(error);
    this.#taker = undefined;
  }
}

// ---------------------------------------------------------------------------
// Workers, as the main thread sees them
// ---------------------------------------------------------------------------

/** Workers created so far by this thread: Deno names the k-th one "worker-k". */
let workersCreated = 0;

/** A worker thread running this module, started by the main thread. */
class Thread {
  /** When the worker was created (performance.now()). */
  readonly started: number = performance.now();
  /** Aborted, with an Error saying why, when the worker throws. */
  readonly dead: AbortSignal;
  /** Resolves with the ms the worker took from `new Worker` to running. */
  readonly ready: Promise<number>;
  /** The OS thread id, when /proc/self tells (Deno asks -A for that). */
  readonly thread?: number;
  /** Clients relayed to this worker right now. */
  clients = 0;
  #worker: Worker;
  #answers = new Map<string, () => void>();

  constructor(
    readonly number: number,
    name: string,
    permissions: Deno.PermissionOptions,
  ) {
    const died = new AbortController();
    this.dead = died.signal;
    const ready = Promise.withResolvers<number>();
    this.ready = ready.promise;
    this.#worker = new Worker(import.meta.url, {
      type: "module",
      name,
      deno: { permissions },
    });
    this.thread = threadId(++workersCreated);
    this.#worker.onmessage = ({ data }) => {
      if (data === READY) ready.resolve(performance.now() - this.started);
      else this.#answers.get(data)?.();
    };
    this.#worker.onerror = (event) => {
      event.preventDefault(); // the process lives on: only this worker died
      died.abort(new Error(`worker ${number} died: ${event.message}`));
      ready.reject(died.signal.reason);
    };
    this.ready.catch(() => {}); // a death is reported through `dead`
  }

  /** Posts a message to the worker (moving what `transfer` lists). */
  post(message: unknown, transfer: Transferable[] = []): void {
    this.#worker.postMessage(message, transfer);
  }

  /**
   * Posts `message`, resolves when the worker answers `answer`; rejects if it
   * dies first, or says nothing for ANSWER_MS.
   */
  async ask(message: unknown, answer: string): Promise<void> {
    const answered = Promise.withResolvers<void>();
    const onDeath = () => answered.reject(this.dead.reason);
    const timer = setTimeout(
      () =>
        answered.reject(
          new Error(`worker ${this.number} did not get ${answer} in time`),
        ),
      ANSWER_MS,
    );
    this.#answers.set(answer, answered.resolve);
    this.dead.addEventListener("abort", onDeath);
    if (this.dead.aborted) onDeath();
    try {
      this.post(message);
      await answered.promise;
    } finally {
      clearTimeout(timer);
      this.dead.removeEventListener("abort", onDeath);
      this.#answers.delete(answer);
    }
  }

  /** Ends the worker's thread at once, whatever it is doing. */
  terminate(): void {
    this.#worker.terminate();
  }

  /** `worker 3 (thread 12345)`, or `worker 3` without -A. */
  toString(): string {
    return this.thread === undefined
      ? `worker ${this.number}`
      : `worker ${this.number} (thread ${this.thread})`;
  }
}

/** The OS thread id of the k-th worker, or undefined if /proc won't say. */
function threadId(k: number): number | undefined {
  const name = `worker-${k}\n`;
  try {
    for (const task of Deno.readDirSync("/proc/self/task")) {
      const comm = Deno.readTextFileSync(`/proc/self/task/${task.name}/comm`);
      if (comm === name) return Number(task.name);
    }
  } catch { /* not Linux, or not -A: the log goes without thread ids */ }
  return undefined;
}

function logServedBy(
  log: Logger,
  session: Session,
  thread: Thread,
  startMs?: number,
): void {
  if (!log.verbose) return;
  const started = startMs === undefined
    ? ""
    : `, started in ${startMs.toFixed(1)} ms`;
  log.event("worker", `#${session.id} on ${thread}${started}`, {
    id: session.id,
    worker: thread.number,
    thread: thread.thread,
    startMs: startMs === undefined ? undefined : Math.round(startMs * 10) / 10,
  });
}

/**
 * SIGUSR2 makes the worker `pick` returns throw an uncaught error, the way a
 * bug would: for watching what a dying worker takes with it (its clients)
 * and what it does not (the server, the other workers).
 */
function onFaultSignal(pick: () => Thread | undefined): void {
  try {
    Deno.addSignalListener("SIGUSR2", () => pick()?.post(FAULT));
  } catch { /* no SIGUSR2 on this platform */ }
}

/** The pool's workers, kept at full strength until it stops. */
class Pool {
  readonly threads = new Map<number, Thread>();
  #next = 1;
  #stopping = false;

  constructor(
    readonly log: Logger,
    readonly launch: (number: number) => Promise<Thread>,
  ) {}

  /**
   * Starts `size` workers; rejects if one fails to start. Call `logWorkers`
   * once the banner is out: it must be the first line.
   */
  async start(size: number): Promise<void> {
    await Promise.all(Array.from({ length: size }, () => this.#add(false)));
  }

  /** Logs each worker: its number, OS thread, and how long it took to start. */
  logWorkers(): void {
    for (const thread of this.threads.values()) this.#logStart(thread);
  }

  async #add(log = true): Promise<void> {
    const thread = await this.launch(this.#next++);
    if (this.#stopping) return thread.terminate();
    this.threads.set(thread.number, thread);
    thread.dead.addEventListener("abort", () => this.#replace(thread));
    if (log) this.#logStart(thread);
  }

  #logStart(thread: Thread): void {
    thread.ready.then(
      (ms) =>
        this.log.event("worker", `${thread} started in ${ms.toFixed(1)} ms`, {
          worker: thread.number,
          thread: thread.thread,
          startMs: Math.round(ms * 10) / 10,
        }),
      () => {},
    );
  }

  async #replace(thread: Thread): Promise<void> {
    thread.terminate();
    this.threads.delete(thread.number);
    if (this.#stopping) return;
    this.log.error(
      `${(thread.dead.reason as Error).message}; starting worker ${this.#next}`,
      { worker: thread.number, thread: thread.thread },
    );
    // A worker that dies young would die again at once: don't spin.
    if (performance.now() - thread.started < 1000) await sleep(1000);
    while (!this.#stopping) {
      try {
        return await this.#add();
      } catch (error) {
        this.log.error(`${(error as Error).message}; trying again`);
        await sleep(1000);
      }
    }
  }

  /** The lowest-numbered worker. */
  first(): Thread | undefined {
    return [...this.threads.values()].sort((a, b) => a.number - b.number)[0];
  }

  /** The worker with the fewest clients relayed to it. */
  leastBusy(): Thread {
    let best: Thread | undefined;
    for (const thread of this.threads.values()) {
      if (!best || thread.clients < best.clients) best = thread;
    }
    if (!best) throw new Error("no pool worker is running");
    return best;
  }

  /**
   * SIGINT/SIGTERM: every worker stops accepting before any of them says
   * "stopping", so that no new client lands anywhere; then each drains its
   * clients for the grace period; then the process exits 0. A second signal
   * ends the remaining clients at once.
   */
  async stop(signal: string, count: number, grace: number): Promise<void> {
    const threads = [...this.threads.values()];
    if (count > 1) return threads.forEach((t) => t.post({ stop: signal }));
    this.#stopping = true;
    await Promise.allSettled(
      threads.map((thread) => thread.ask(STOP_ACCEPTING, NOT_ACCEPTING)),
    );
    this.log.event(
      "stopping",
      `stopping (${signal}): ${threads.length} workers let their clients finish`,
      { reason: signal, workers: threads.length, grace },
      true,
    );
    // A worker that cannot stop in time (its thread stuck) is ended anyway.
    const deadline = sleep(grace * 1000 + ANSWER_MS);
    await Promise.race([
      Promise.allSettled(threads.map((t) => t.ask({ stop: signal }, STOPPED))),
      deadline,
    ]);
    this.terminate();
    this.log.event("stopped", "stopped", {}, true);
    Deno.exit(0);
  }

  /** Ends every worker now; none is replaced any more. */
  terminate(): void {
    this.#stopping = true;
    for (const thread of this.threads.values()) thread.terminate();
    this.threads.clear();
  }
}

const SPEC: ModelSpec = {
  script: SCRIPT,
  summary:
    "Threaded echo server: a Web Worker per client, or a pool of N workers that each accept (--pool N).",
  defaultMaxConns: (extra) =>
    extra.pool === undefined ? PER_CLIENT_MAX_CONNS : POOL_MAX_CONNS,
  options: {
    pool: {
      type: "count",
      min: 1,
      max: MAX_POOL,
      usage:
        `N                start N workers up front (1 to ${MAX_POOL}), each accepting on the
                          port itself; --max-conns (default ${POOL_MAX_CONNS}) is split
                          among them. Default: a new worker per client
                          (--max-conns default ${PER_CLIENT_MAX_CONNS})`,
    },
  },
  denoFlags: "-A --unstable-net --unstable-worker-options",
};

// ---------------------------------------------------------------------------
// The worker threads
// ---------------------------------------------------------------------------

/** What a worker sees of its global scope. */
interface WorkerScope {
  onmessage: ((event: MessageEvent) => void) | null;
  postMessage(message: unknown, transfer?: Transferable[]): void;
}

/** The first message a pool worker with its own listener gets. */
interface ListenStart {
  options: ServerOptions;
  ids: SharedArrayBuffer;
  worker: number;
  thread?: number;
}

/**
 * The worker's side: told its role by the first message, it either serves
 * every client port it is handed (`echo`), or accepts on its own listener
 * (`listen`).
 */
function runWorker(scope: WorkerScope): void {
  let cpuMs = 0;
  let server: EchoServer | undefined;
  scope.onmessage = ({ data }) => {
    if (data === FAULT) throw new Error("fault injected by SIGUSR2");
    if (data.role === "echo") cpuMs = data.cpuMs;
    else if (data.client) serveClientPort(data.client, cpuMs);
    else if (data.role === "listen") {
      acceptOwnClients(data, scope).then((s) => server = s);
    } else if (data === STOP_ACCEPTING) {
      server?.stopAccepting().then(() => scope.postMessage(NOT_ACCEPTING));
    } else if (data.stop) {
      server?.shutdown(data.stop).then(() => scope.postMessage(STOPPED));
    }
  };
  scope.postMessage(READY);
}

/**
 * The thread routine of echoservert.c: the echo service, over the worker's
 * end of a client's MessageChannel instead of the socket it cannot have.
 */
async function serveClientPort(
  port: MessagePort,
  cpuMs: number,
): Promise<void> {
  const { credits, inbox } = openPort(port);
  try {
    await echo(
      new PortReader(inbox, port),
      new PortWriter(credits, port),
      { bytesIn: 0, bytesOut: 0 },
      cpuMs,
    );
    port.postMessage(END);
    await inbox.take(); // nothing more comes but CLOSE, which rejects it
  } catch { /* CLOSE: the main thread is done with this client */ }
  port.close(); // a pool worker lives on: let this client's port go
}

/** Reads the client's bytes as they arrive on the port. */
class PortReader {
  #chunk: Bytes | null = null;
  #offset = 0;

  constructor(
    readonly inbox: Mailbox<Bytes | string>,
    readonly port: MessagePort,
  ) {}

  async read(into: Uint8Array): Promise<number | null> {
    if (this.#chunk === null) {
      const message = await this.inbox.take();
      if (message === EOF) return null;
      this.#chunk = message as Bytes;
      this.#offset = 0;
    }
    const chunk = this.#chunk;
    const n = Math.min(into.length, chunk.length - this.#offset);
    into.set(
      n === chunk.length
        ? chunk
        : chunk.subarray(this.#offset, this.#offset + n),
    );
    this.#offset += n;
    if (this.#offset === chunk.length) {
      this.#chunk = null;
      this.port.postMessage(chunk.buffer, [chunk.buffer]); // read it: send more
    }
    return n;
  }
}

/** Writes to the client: into a free buffer, moved to the main thread. */
class PortWriter {
  constructor(
    readonly credits: Mailbox<ArrayBuffer>,
    readonly port: MessagePort,
  ) {}

  async write(bytes: Uint8Array): Promise<number> {
    const buffer = await this.credits.take(); // waits while CHUNKS are unsent
    const n = Math.min(bytes.length, buffer.byteLength);
    const chunk = new Uint8Array(buffer, 0, n);
    chunk.set(n === bytes.length ? bytes : bytes.subarray(0, n));
    this.port.postMessage(chunk, [buffer]);
    return n;
  }
}

/** A pool worker: an evented server of its own on the shared port. */
async function acceptOwnClients(
  start: ListenStart,
  scope: WorkerScope,
): Promise<EchoServer> {
  const ids = new Int32Array(start.ids);
  const who = { pid: Deno.pid, worker: start.worker, thread: start.thread };
  const server = await startServer(start.options, {
    who,
    reusePort: true,
    signals: false, // the main thread handles them, for every worker
    announce: false, // the main thread prints the one banner
    nextId: () => Atomics.add(ids, 0, 1) + 1,
  });
  scope.postMessage(LISTENING);
  (async () => {
    for await (const conn of server.clients()) server.serve(conn);
  })();
  return server;
}

// ---------------------------------------------------------------------------
// Which part of this module runs here
// ---------------------------------------------------------------------------

if ("WorkerGlobalScope" in globalThis) {
  runWorker(globalThis as unknown as WorkerScope);
} else {
  await main();
}
