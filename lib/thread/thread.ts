/**
 * Web Workers as threads, both sides. In the creating thread, a
 * {@linkcode Thread} wraps a `new Worker(...)`, numbered as Deno names its OS
 * thread (`worker-3` in `top -H` is `worker 3` in the log), and
 * {@linkcode relayToThread} serves a client on it over a MessagePort. In the
 * worker, {@linkcode serveInWorker} runs the thread routine on a client's port,
 * or, in a pool, the model's own accept loop, obeying the supervisor.
 *
 * @module
 */
import { fail, type ServerOptions } from "../cli.ts";
import { bindErrorText } from "../listen.ts";
import { formatAddr, formatMs, type Logger, tenths, type Who } from "../log.ts";
import { CommandedWorker, obey } from "../pool/commands.ts";
import { PortStream } from "./port_stream.ts";
import { relay } from "../relay.ts";
import type { EchoServer, Session, StartOptions } from "../serve.ts";
import { sleep, within } from "../time.ts";

/** What the main thread posts to make a worker throw, as a bug would. */
const FAULT = "fault";

/** Workers made so far: Deno names the k-th one's thread `worker-k`. */
let created = 0;

/** A Worker thread, as its creator sees it; a pool worker too (commands.ts). */
export class Thread extends CommandedWorker {
  /**
   * File descriptors a Worker holds while it runs (measured on Deno 2.9.6:
   * two epoll instances, an eventfd, a socket, its own stdout and stderr).
   */
  static readonly FDS = 6;

  /** SIGUSR2: the worker `pick` returns throws, to watch what dies with it. */
  static onFaultSignal(pick: () => Thread | undefined): void {
    try {
      Deno.addSignalListener("SIGUSR2", () => pick()?.post(FAULT));
    } catch { /* no SIGUSR2 on this platform */ }
  }

  /** N of Deno's thread name `worker-N`. */
  readonly number: number = ++created;
  /** The OS thread id, when /proc/self tells (only with -A). */
  readonly thread?: number = threadId(this.number);
  readonly name: string = this.thread === undefined
    ? `worker ${this.number}`
    : `worker ${this.number} (thread ${this.thread})`;
  readonly fields = { worker: this.number, thread: this.thread };
  #started = performance.now();
  #ready = Promise.withResolvers<number>();
  #died = new AbortController();
  /** Resolves with the ms from `new Worker` to running the module. */
  readonly ready = this.#ready.promise;
  /** Aborted, with an Error saying why, when the worker throws. */
  readonly dead = this.#died.signal;
  /** Clients relayed to it right now. */
  clients = 0;
  #worker: Worker;
  #gone?: Promise<void>;

  /** Takes over `worker`, just made on a module that calls serveInWorker. */
  constructor(worker: Worker) {
    super();
    this.ready.catch(() => {}); // a death is reported through `dead`
    this.#worker = worker;
    worker.onmessage = ({ data }) => {
      if (data === "ready") this.#ready.resolve(this.#age());
      else if (typeof data === "string") this.answer(data);
      else if (data?.failed) this.#die(data.failed, data.uncaught); // no stack
    };
    worker.onerror = (event) => {
      event.preventDefault(); // the process lives on: only this worker died
      const error = event.message.replace(/^Uncaught (\(in promise\) )?/, "");
      this.#die(error.replace(/^Error: /, ""), event.message);
      this.#ready.reject(this.dead.reason);
    };
  }

  /** `error` says why (for a give-up line); `uncaught`, if it threw. */
  #die(error: string, uncaught?: string): void {
    const why = uncaught ?? error;
    this.#died.abort(new Error(`worker ${this.number} died: ${why}`));
    const ms = this.#age();
    const text = `died after ${formatMs(ms)}${uncaught ? `: ${uncaught}` : ""}`;
    this.ended({ text, fields: { error: why, ms: tenths(ms) }, error });
    this.terminate();
  }

  /** Makes it a pool worker on `options`' port; `ids` counts the `#id`s. */
  listen(options: ServerOptions, ids: SharedArrayBuffer): void {
    const who = { pid: Deno.pid, worker: this.number, thread: this.thread };
    this.post({ listen: options, ids, who } satisfies ListenStart);
  }

  /** Logs that it serves `session`; with `started`, once it runs (if ever). */
  logServing(log: Logger, session: Session, started = false): void {
    const line = (ms?: number) => {
      const took = ms === undefined ? "" : `, started in ${ms.toFixed(1)} ms`;
      const startMs = ms === undefined ? undefined : tenths(ms);
      const fields = { id: session.id, ...this.fields, startMs };
      log.event("worker", `#${session.id} on ${this.name}${took}`, fields);
    };
    if (started) this.ready.then(line, () => {});
    else line();
  }

  post(message: unknown, transfer: Transferable[] = []): void {
    this.#worker.postMessage(message, transfer);
  }

  protected send(command: string): void {
    this.post(command);
  }

  protected kill(): void {
    this.terminate();
  }

  /**
   * Ends the thread now; resolves once the OS thread, and so its fds, are
   * gone (Deno panics when a new Worker finds no fd left).
   */
  terminate(): Promise<void> {
    if (this.#gone) return this.#gone;
    this.#worker.terminate();
    this.ended({ text: `ended after ${formatMs(this.#age())}` });
    return this.#gone = this.#untilGone();
  }

  #age(): number {
    return performance.now() - this.#started;
  }

  async #untilGone(): Promise<void> {
    for (let waited = 0; this.thread !== undefined && waited < 1000; waited++) {
      try {
        Deno.statSync(`/proc/self/task/${this.thread}`);
      } catch {
        return;
      }
      await sleep(1);
    }
  }
}

/**
 * Waits for `thread` to run, then ends it: a server with a worker per client
 * tries one before its banner, and exits 1 if it cannot run (`script: why`).
 */
export async function tryOut(thread: Thread, script: string): Promise<void> {
  await thread.ready.catch((error) => fail(script, error.message));
  await thread.terminate();
}

/** The OS thread id of the thread Deno named `worker-k`, if /proc tells. */
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

/** What a pool worker is told first: where to listen, as whom. */
interface ListenStart {
  listen: ServerOptions;
  ids: SharedArrayBuffer;
  who: Who;
}

/** What a pool worker's accept loop gets from {@linkcode serveInWorker}. */
export interface PoolStart {
  /** The command line, with this worker's share of --max-conns. */
  options: ServerOptions;
  start: StartOptions;
  /** Call once listening: resolves when it may accept. */
  obey(server: EchoServer): Promise<void>;
}

interface WorkerScope {
  onmessage: ((event: MessageEvent) => void) | null;
  postMessage(message: unknown): void;
  close(): void;
}

type Routine = (stream: PortStream, cpuMs: number) => Promise<void>;

/**
 * In a worker started as a {@linkcode Thread}: runs `routine` on each client
 * port it is sent, or, once told to {@linkcode Thread.listen}, `pool` (its own
 * listener and accept loop); a `pool` that cannot listen says why in one line.
 */
export function serveInWorker(
  routine: Routine,
  pool: (start: PoolStart) => Promise<void>,
): void {
  const scope = globalThis as unknown as WorkerScope;
  let obeying = (_command: string) => {};
  const obeyMain = (server: EchoServer) => {
    const supervisor = obey(server, (word) => scope.postMessage(word));
    obeying = supervisor.command;
    return supervisor.accept;
  };
  scope.onmessage = ({ data }) => {
    if (data === FAULT) throw new Error("fault injected by SIGUSR2");
    if (data.client) runRoutine(routine, data.client, data.cpuMs);
    else if (!data.listen) obeying(data);
    else {
      const { listen: options, ids, who } = data as ListenStart;
      const count = new Int32Array(ids);
      const start = { who, nextId: () => Atomics.add(count, 0, 1) + 1 };
      pool({ options, start, obey: obeyMain }).catch((error) => {
        // Not Deno.exit, as listenOrExit would: it ends a worker silently.
        const { host: hostname, port } = options;
        const where = formatAddr({ transport: "tcp", hostname, port });
        const why = bindErrorText(error);
        scope.postMessage({ failed: `cannot listen on ${where}: ${why}` });
      });
    }
  };
  // Deno 2.9.6 prints a worker's uncaught error with its stack on stderr,
  // even when the main thread handles it, unless the worker does: a bug ends
  // the thread with one log line in the main thread instead.
  const die = (event: Event, thrown: unknown) => {
    event.preventDefault();
    const error = thrown instanceof Error ? thrown : new Error(String(thrown));
    const uncaught = `Uncaught ${error.name}: ${error.message}`;
    scope.postMessage({ failed: error.message, uncaught });
    scope.close();
  };
  globalThis.addEventListener("error", (e) => die(e, e.error));
  globalThis.addEventListener("unhandledrejection", (e) => die(e, e.reason));
  scope.postMessage("ready");
}

/** The routine on a client's port, kept until the main thread is done too. */
async function runRoutine(routine: Routine, port: MessagePort, cpuMs: number) {
  const stream = new PortStream(port);
  try {
    await routine(stream, cpuMs);
    await stream.closeWrite();
    await stream.closed;
  } catch { /* the client is gone */ }
  stream.close();
}

// A worker's close takes well under 1 ms when idle; one burning --cpu-ms
// must not hold up a shutdown for longer.
const CLOSE_WAIT_MS = 1000;

/**
 * Serves `session` on `thread`: relays between the connection and a new
 * MessageChannel whose other end the worker gets (`{ client, cpuMs }`), until
 * both directions end, the client is ended from outside or the worker dies.
 * Resolves once the worker has closed its end too (or died, or CLOSE_WAIT_MS
 * passed): Deno 2.9.6 leaks the buffers still queued to a terminated Worker (a
 * credit returned as the client ends: 20-90 KiB per client).
 */
export async function relayToThread(
  session: Session,
  thread: Thread,
  cpuMs: number,
): Promise<void> {
  const { port1, port2 } = new MessageChannel();
  thread.post({ client: port2, cpuMs }, [port2]);
  const stream = new PortStream(port1, [session.signal, thread.dead]);
  thread.clients++;
  try {
    await relay(session.conn, stream, session);
  } finally {
    thread.clients--;
    const died = Promise.withResolvers<unknown>();
    if (thread.dead.aborted) died.resolve(null);
    thread.dead.addEventListener("abort", died.resolve);
    await within(Promise.race([stream.close(), died.promise]), CLOSE_WAIT_MS);
    thread.dead.removeEventListener("abort", died.resolve);
    stream.release(); // a pool worker lives on: it lets the client's port go
  }
}
