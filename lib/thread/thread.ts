/**
 * Web Workers as threads, both sides. In the thread that started it, a
 * {@linkcode Thread} wraps the model's `new Worker(...)`: numbered the way
 * Deno names its OS thread (`worker-3` in `top -H` is `worker 3` in the log),
 * with its OS thread id, its start time and its death; {@linkcode
 * relayToThread} serves a client on one over a MessagePort. In the worker,
 * {@linkcode serveInWorker} runs what it is asked: the thread routine on a
 * client's port, or, in a pool, the model's own accept loop, obeying the
 * supervisor.
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

/** Workers this thread created so far: Deno names the k-th one's thread `worker-k`. */
let created = 0;

/**
 * A Worker thread running `module`, as the thread that created it sees it.
 * It is a pool worker too: the words it posts ("listening", ...) are
 * answers to the pool's commands.
 */
export class Thread extends CommandedWorker {
  /**
   * File descriptors a Worker holds while it runs (measured on Deno 2.9.6:
   * two epoll instances, an eventfd, a socket, its own stdout and stderr).
   */
  static readonly FDS = 6;

  /**
   * SIGUSR2 makes the worker `pick` returns throw an uncaught error, as a
   * bug would: for watching what a dying worker takes with it (its clients)
   * and what it does not (the server, the other workers).
   */
  static onFaultSignal(pick: () => Thread | undefined): void {
    try {
      Deno.addSignalListener("SIGUSR2", () => pick()?.post(FAULT));
    } catch { /* no SIGUSR2 on this platform */ }
  }

  /** N of Deno's thread name `worker-N`: unique in the process. */
  readonly number: number = ++created;
  /** The OS thread id, when /proc/self tells (Deno opens it only with -A). */
  readonly thread?: number;
  /** `worker 3 (thread 5150)`, or `worker 3` without -A. */
  readonly name: string;
  /** `{ worker: 3, thread: 5150 }`, for JSON log lines. */
  readonly fields: Record<string, unknown>;
  /** When it was created (performance.now()). */
  readonly started: number = performance.now();
  /** Resolves with the ms it took from `new Worker` to running the module. */
  readonly ready: Promise<number>;
  /** Aborted, with an Error saying why, when the worker throws. */
  readonly dead: AbortSignal;
  /** Clients relayed to it right now. */
  clients = 0;
  #worker: Worker;
  #died = new AbortController();
  #gone?: Promise<void>;

  /**
   * Takes over `worker`, just created on a module that calls
   * {@linkcode serveInWorker}.
   */
  constructor(worker: Worker) {
    super();
    this.dead = this.#died.signal;
    const ready = Promise.withResolvers<number>();
    this.ready = ready.promise;
    this.ready.catch(() => {}); // a death is reported through `dead`
    this.#worker = worker;
    this.thread = threadId(this.number);
    this.name = this.thread === undefined
      ? `worker ${this.number}`
      : `worker ${this.number} (thread ${this.thread})`;
    this.fields = { worker: this.number, thread: this.thread };
    this.#worker.onmessage = ({ data }) => {
      if (data === "ready") ready.resolve(performance.now() - this.started);
      else if (typeof data === "string") this.answer(data);
      else if (data?.failed) this.#die(data.failed, data.uncaught); // no stack
    };
    this.#worker.onerror = (event) => {
      event.preventDefault(); // the process lives on: only this worker died
      const error = event.message.replace(/^Uncaught (\(in promise\) )?/, "");
      this.#die(error.replace(/^Error: /, ""), event.message);
      ready.reject(this.dead.reason);
    };
  }

  /**
   * The worker failed: `error` says why (for a give-up line), and `uncaught`
   * is the uncaught error's message, if that is how it died.
   */
  #die(error: string, uncaught?: string): void {
    const why = uncaught ?? error;
    this.#died.abort(new Error(`worker ${this.number} died: ${why}`));
    const ms = performance.now() - this.started;
    this.ended({
      text: `died after ${formatMs(ms)}${uncaught ? `: ${uncaught}` : ""}`,
      fields: { error: why, ms: tenths(ms) },
      error,
    });
    this.terminate();
  }

  /**
   * Makes this worker a pool worker that listens on `options`' address
   * itself (SO_REUSEPORT), its clients numbered from the shared count `ids`.
   */
  listen(options: ServerOptions, ids: SharedArrayBuffer): void {
    const who = { pid: Deno.pid, worker: this.number, thread: this.thread };
    this.post({ listen: options, ids, who } satisfies ListenStart);
  }

  /**
   * Logs that it serves `session`; with `started`, once it runs, saying how
   * long it took to start (a worker that dies first logs nothing).
   */
  logServing(log: Logger, session: Session, started = false): void {
    const line = (startMs?: number) =>
      log.event(
        "worker",
        `#${session.id} on ${this}${
          startMs === undefined ? "" : `, started in ${startMs.toFixed(1)} ms`
        }`,
        {
          id: session.id,
          ...this.fields,
          startMs: startMs === undefined ? undefined : tenths(startMs),
        },
      );
    if (started) this.ready.then(line, () => {});
    else line();
  }

  /** Posts `message` to the worker, moving what `transfer` lists. */
  post(message: unknown, transfer: Transferable[] = []): void {
    this.#worker.postMessage(message, transfer);
  }

  /** Sends a pool command. */
  protected send(command: string): void {
    this.post(command);
  }

  /** Ends the worker now. */
  protected kill(): void {
    this.terminate();
  }

  /**
   * Ends the worker's thread at once, whatever it is doing; resolves once
   * the OS thread is gone, and with it the worker's file descriptors (a
   * Worker started while they are still held could find none left, and Deno
   * panics then).
   */
  terminate(): Promise<void> {
    if (this.#gone) return this.#gone;
    this.#worker.terminate();
    const ms = performance.now() - this.started;
    this.ended({ text: `ended after ${formatMs(ms)}` });
    return this.#gone = this.#untilGone();
  }

  async #untilGone(): Promise<void> {
    if (this.thread === undefined) return;
    for (let waited = 0; waited < 1000; waited++) {
      try {
        Deno.statSync(`/proc/self/task/${this.thread}`);
      } catch {
        return;
      }
      await sleep(1);
    }
  }

  /** `worker 3 (thread 5150)`, or `worker 3` without -A. */
  override toString(): string {
    return this.name;
  }
}

/**
 * Waits for `thread` to run, then ends it: a server that starts a worker per
 * client tries one before its banner, and exits 1 with one line (`script:
 * why`) if it cannot run, rather than fail each client later.
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
  /** The server's command line, with this worker's share of --max-conns. */
  options: ServerOptions;
  /** For the worker's EchoServer: who it is, how it numbers clients. */
  start: StartOptions;
  /** Call once the worker listens: resolves when it may accept. */
  obey(server: EchoServer): Promise<void>;
}

/** What a worker sees of its global scope. */
interface WorkerScope {
  onmessage: ((event: MessageEvent) => void) | null;
  postMessage(message: unknown): void;
  close(): void;
}

/**
 * In a worker started as a {@linkcode Thread}: serves what the main thread
 * asks. A client's port (from {@linkcode relayToThread}) goes to `routine`,
 * the thread routine; {@linkcode Thread.listen} makes it a pool worker that
 * runs `pool`, its own listener and accept loop, obeying the main thread. A
 * `pool` that cannot listen says why in one line, for the supervisor.
 */
export function serveInWorker(
  routine: (stream: PortStream, cpuMs: number) => Promise<void>,
  pool: (start: PoolStart) => Promise<void>,
): void {
  const scope = globalThis as unknown as WorkerScope;
  let obeying = (_command: string) => {};
  scope.onmessage = ({ data }) => {
    if (data === FAULT) throw new Error("fault injected by SIGUSR2");
    if (data.client) runRoutine(routine, data.client, data.cpuMs);
    else if (data.listen) {
      const { listen: options, ids, who } = data as ListenStart;
      const count = new Int32Array(ids);
      const nextId = () => Atomics.add(count, 0, 1) + 1;
      const start = { who, nextId };
      pool({
        options,
        start,
        obey(server) {
          const supervisor = obey(server, (word) => scope.postMessage(word));
          obeying = supervisor.command;
          return supervisor.accept;
        },
      }).catch((error) => {
        // Not Deno.exit, as listenOrExit would: in a worker it ends the
        // worker without a word to the main thread.
        const { host: hostname, port } = options;
        const where = formatAddr({ transport: "tcp", hostname, port });
        const why = bindErrorText(error);
        scope.postMessage({ failed: `cannot listen on ${where}: ${why}` });
      });
    } else obeying(data);
  };
  // A bug's uncaught error ends the thread with one log line in the main
  // thread: Deno 2.9.6 prints a worker's uncaught error with its stack on
  // stderr even when the main thread handles it, unless the worker does.
  const die = (event: Event, error: unknown) => {
    event.preventDefault();
    const message = error instanceof Error ? error.message : String(error);
    const uncaught = `Uncaught ${
      error instanceof Error ? error.name : "Error"
    }: ${message}`;
    scope.postMessage({ failed: message, uncaught });
    scope.close();
  };
  globalThis.addEventListener("error", (event) => die(event, event.error));
  globalThis.addEventListener(
    "unhandledrejection",
    (event) => die(event, event.reason),
  );
  scope.postMessage("ready");
}

/**
 * Runs the thread routine on a client's `port`: its end of stream is passed
 * on, and the port kept until the main thread is done with the client.
 */
async function runRoutine(
  routine: (stream: PortStream, cpuMs: number) => Promise<void>,
  port: MessagePort,
  cpuMs: number,
): Promise<void> {
  const stream = new PortStream(port);
  try {
    await routine(stream, cpuMs);
    await stream.closeWrite();
    await stream.closed;
  } catch { /* the client is gone */ }
  stream.close();
}

/**
 * How long a stream's close waits for the worker to close its end: longer
 * than an idle worker takes (well under a millisecond), short enough not to
 * hold up a shutdown behind a worker that burns `--cpu-ms`.
 */
const CLOSE_WAIT_MS = 1000;

/**
 * Serves `session` on `thread`: hands the worker one end of a new
 * MessageChannel (as `{ client: port, cpuMs }`) and relays between the
 * connection and the other end until both directions have ended, the client
 * is ended from outside (idle timeout, shutdown), or the worker dies. Resolves
 * once the worker has closed its end too (see {@linkcode closeStream}), so a
 * worker per client can be terminated right after.
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
    await closeStream(stream, thread.dead);
  }
}

/**
 * Closes `stream` and waits until its other end, in a worker, has closed too,
 * unless the worker is dead (`dead`) or does not answer within
 * CLOSE_WAIT_MS. Terminating a Worker while buffers posted to it are still
 * queued on its port leaks them in Deno 2.9.6 (a credit returned as the
 * client ends: 20-90 KiB per client); once the worker has answered the close,
 * nothing is queued to it any more.
 */
export async function closeStream(
  stream: PortStream,
  dead: AbortSignal,
): Promise<void> {
  const died = Promise.withResolvers<void>();
  const onDead = () => died.resolve();
  if (dead.aborted) onDead();
  else dead.addEventListener("abort", onDead, { once: true });
  await within(Promise.race([stream.close(), died.promise]), CLOSE_WAIT_MS);
  dead.removeEventListener("abort", onDead); // a pool worker lives on
  stream.release(); // a pool worker goes on: it lets this client's port go
}
