/**
 * The pool supervisor, one for every pool (prefork.ts, threaded.ts --pool,
 * cluster.ts): reserves the port, starts N workers, prints one banner once
 * all listen, restarts each that exits (with backoff; it gives up on a worker
 * that keeps failing to start), and stops them in two phases on SIGINT,
 * SIGTERM or SIGHUP: all stop accepting before "stopping" is logged, then
 * each drains for `--grace` seconds. A second signal ends the clients at once.
 * A worker is a {@linkcode PoolWorker}: child_worker.ts, ../thread/thread.ts
 * and cluster.ts make one of a process, a thread, a node:cluster worker.
 *
 * @module
 */
import type { ModelOption, ServerOptions } from "../cli.ts";
import { Logger } from "../log.ts";
import { spawnErrorText } from "../process/children.ts";
import { onShutdownSignal } from "../signals.ts";
import { reservePort } from "./reserve.ts";
import { sleep, within } from "../time.ts";

/** How a worker ended, for the log line that says it will be restarted. */
export interface WorkerExit {
  /** `exited with code 1 after 61.0 ms`, `killed by SIGKILL after 2.01 s`. */
  text: string;
  /** The same as JSON fields. */
  fields?: Record<string, unknown>;
  /** The last thing it said on stderr, or its error: why it could not start. */
  error?: string;
}

/** One worker of a pool, as the supervisor drives it. */
export interface PoolWorker {
  /** For log lines: `worker 2 (pid 4242)`, `worker 3 (thread 5150)`. */
  readonly name: string;
  /** The same as JSON fields: `{ worker: 2, workerPid: 4242 }`. */
  readonly fields: Record<string, unknown>;
  /** True once it listens (accepting only after `accept`); false if it ended. */
  readonly listening: Promise<boolean>;
  /** How it ended, once it has and everything it wrote is forwarded. */
  readonly exited: Promise<WorkerExit>;
  /** Start accepting: the banner is out. */
  accept(): void;
  /** Close the listener; resolves once it no longer accepts, or has ended. */
  stopAccepting(): Promise<void>;
  /** Let the clients finish for the grace period, end the rest, then end. */
  drain(reason: string): void;
  /** End the clients and the worker now; `exited` follows within seconds. */
  end(): void;
}

/** The one restart policy: 0.1 s doubling to 5 s; give up after 5 failed starts. */
export const RESTART = {
  firstMs: 100, // the first delay; it doubles while the worker fails
  maxMs: 5_000,
  healthyMs: 10_000, // a worker that ran this long was healthy: start over
  attempts: 5, // exits before listening, in a row, before the pool gives up
};

/** When and how often a pool restarts a worker that exits. */
export type RestartPolicy = typeof RESTART;

/** How long a worker gets to say it stopped accepting, and to overrun --grace. */
const ANSWER_MS = 10_000, OVERRUN_MS = 5_000;

/** One slot's restart delays under a {@linkcode RestartPolicy}. */
export class Backoff {
  #delay: number;
  #failedStarts = 0;

  /** Starts at the policy's first delay. */
  constructor(readonly policy: RestartPolicy = RESTART) {
    this.#delay = policy.firstMs;
  }

  /**
   * The delay before the next start after an exit, or undefined when workers
   * failed to start (`listened` false) `attempts` times in a row: give up.
   */
  next(listened: boolean, ranMs: number): number | undefined {
    if (!listened && ++this.#failedStarts >= this.policy.attempts) {
      return undefined;
    }
    if (listened) this.#failedStarts = 0;
    if (listened && ranMs >= this.policy.healthyMs) {
      this.#delay = this.policy.firstMs;
    }
    const delay = this.#delay;
    this.#delay = Math.min(this.policy.maxMs, delay * 2);
    return delay;
  }
}

/** `--workers N` of a pool of processes: 1 to 1024, default the CPUs. */
export const WORKERS_OPTION: ModelOption = {
  type: "count",
  min: 1,
  max: 1024,
  usage:
    `N             worker processes (default: number of CPUs, here ${navigator.hardwareConcurrency});
                          --max-conns (default 10000) is split among them`,
};

/** How many workers `--workers` asks for: its value, or the number of CPUs. */
export function workersOf(extra: ServerOptions["extra"]): number {
  return (extra.workers as number | undefined) ?? navigator.hardwareConcurrency;
}

/** "1 worker", "2 workers". */
export function workerCount(n: number): string {
  return `${n} worker${n === 1 ? "" : "s"}`;
}

/**
 * The command line of a worker process that listens on `addr` with its
 * `share` of `--max-conns`, and the rest of the server's `options`: what it
 * parses as its own.
 */
export function workerArgs(
  options: ServerOptions,
  addr: Deno.NetAddr,
  share: number,
): string[] {
  const flags = (["nodelay", "keepalive", "json", "quiet"] as const)
    .filter((flag) => options[flag]).map((flag) => `--${flag}`);
  return [
    ...[`${addr.port}`, "--host", addr.hostname, "--max-conns", `${share}`],
    ...["--idle-timeout", `${options.idleTimeout}`, ...flags],
    ...["--cpu-ms", `${options.cpuMs}`, "--grace", `${options.grace}`],
  ];
}

/**
 * Worker `slot`'s share of `total` clients over `size` workers: the shares
 * differ by one at most and add up to `total`, as `--max-conns` promises.
 */
export function shareOf(total: number, size: number, slot: number): number {
  return Math.floor(total / size) + (slot <= total % size ? 1 : 0);
}

/** The log a pool writes to: a {@linkcode Logger}, or a test's recorder. */
export type PoolLog = Pick<Logger, "event">;

/** N workers kept at strength: each one that exits is restarted, with backoff. */
export class Pool<W extends PoolWorker> {
  /** Resolves once every slot's worker has listened. */
  readonly ready: Promise<void>;
  #live = new Map<number, W>();
  #listening = new Set<W>();
  #accepting = false;
  #stopping = false;
  #wake = new AbortController();

  /**
   * Starts `size` workers with `start(slot)` (slots 1 to size; a replacement
   * takes its predecessor's). `giveUp(reason)` is called once if a slot keeps
   * failing: nothing is restarted any more, and the caller should stop.
   */
  constructor(
    size: number,
    readonly start: (slot: number) => W,
    readonly log: PoolLog,
    readonly giveUp: (reason: string) => void,
    readonly policy: RestartPolicy = RESTART,
  ) {
    const up = Array.from(
      { length: size },
      () => Promise.withResolvers<void>(),
    );
    this.ready = Promise.all(up.map(({ promise }) => promise)).then(() => {});
    up.forEach(({ resolve }, i) => this.#keep(i + 1, resolve));
  }

  /** The workers running now, in slot order. */
  get workers(): W[] {
    return [...this.#live.entries()].sort(([a], [b]) => a - b)
      .map(([, worker]) => worker);
  }

  /** The banner is out: every worker accepts now, and every later one at once. */
  accept(): void {
    this.#accepting = true;
    for (const worker of this.#listening) this.#admit(worker);
  }

  #admit(worker: W): void {
    const { name, fields } = worker;
    this.log.event("worker-listening", `${name} listening`, fields);
    worker.accept();
  }

  /** Runs slot `slot`: starts a worker, and another whenever it exits. */
  async #keep(slot: number, listenedOnce: () => void): Promise<void> {
    const backoff = new Backoff(this.policy);
    while (!this.#stopping) {
      let worker: W;
      try {
        worker = this.start(slot);
      } catch (error) {
        return this.#giveUp(
          `cannot start worker ${slot}: ${spawnErrorText(error)}`,
        );
      }
      const started = performance.now();
      this.#live.set(slot, worker);
      const listened = await worker.listening;
      if (listened) {
        this.#listening.add(worker);
        listenedOnce();
        if (this.#accepting && !this.#stopping) this.#admit(worker);
      }
      const exit = await worker.exited;
      this.#live.delete(slot);
      this.#listening.delete(worker);
      if (this.#stopping) return;
      const delay = backoff.next(listened, performance.now() - started);
      if (delay === undefined) {
        return this.#giveUp(
          exit.error ??
            `${worker.name} ${exit.text} before listening, ${this.policy.attempts} times in a row`,
        );
      }
      const why = listened
        ? ""
        : ` before listening${exit.error ? ` (${exit.error})` : ""}`;
      this.log.event(
        "worker-exited",
        `${worker.name} ${exit.text}${why}; restarting in ${delay} ms`,
        { ...worker.fields, ...exit.fields, restartMs: delay },
        true,
      );
      await sleep(delay, this.#wake.signal);
    }
  }

  #giveUp(reason: string): void {
    if (this.#halt()) this.giveUp(reason);
  }

  /** Restarts nothing more; false if it had stopped already. */
  #halt(): boolean {
    const running = !this.#stopping;
    this.#stopping = true;
    this.#wake.abort();
    return running;
  }

  /**
   * The two-phase stop: all stop accepting (one that does not say so within
   * 10 s is ended), "stopping" is logged, each drains for `grace` seconds (5 s
   * more and it is ended). Resolves once all have exited.
   */
  async stop(reason: string, grace: number): Promise<void> {
    this.#halt();
    const workers = this.workers;
    await Promise.all(workers.map(async (worker) => {
      // One still starting has no client and was never told to accept.
      if (!this.#listening.has(worker)) return worker.end();
      if (!(await within(worker.stopAccepting(), ANSWER_MS))) {
        worker.end();
        await worker.exited;
      }
    }));
    this.log.event(
      "stopping",
      `stopping (${reason}): ${
        workerCount(workers.length)
      } no longer accept; their clients get ${grace} s to finish`,
      { reason, workers: workers.length, grace },
      true,
    );
    for (const worker of this.#listening) worker.drain(reason);
    const exited = Promise.all(workers.map((worker) => worker.exited));
    if (!(await within(exited, grace * 1000 + OVERRUN_MS))) this.end();
    await exited;
    this.log.event("stopped", "stopped", {}, true);
  }

  /** Ends every worker now (a second signal); nothing is restarted any more. */
  end(): void {
    this.#halt();
    for (const worker of this.#live.values()) worker.end();
  }
}

/** What {@linkcode supervise} needs to know about a pool. */
export interface PoolPlan<
  W extends PoolWorker,
  A extends Deno.Addr = Deno.NetAddr,
> {
  /** The parsed command line. */
  options: ServerOptions;
  /** How many workers. */
  size: number;
  /** Starts the worker of `slot` on the reserved address; throws if it cannot. */
  start(slot: number, addr: A): W;
  /** Banner words after the model's name: `["2 workers"]`. */
  banner: string[];
  /** The banner's JSON fields besides model and maxConns: `{ workers: 2 }`. */
  fields: Record<string, unknown>;
  /**
   * Finds the address and holds it while the workers bind; `close` lets go
   * once they all listen. Default: reserve.ts's SO_REUSEPORT port.
   */
  reserve?: (options: ServerOptions) => Promise<{ addr: A; close(): void }>;
}

/**
 * Runs a pool: stop signals first (no signal may kill the parent and leave
 * workers behind), the address, the workers, the banner once all listen, then
 * they accept; resolves with the pool. It runs until a signal stops it (exit
 * 0) or a worker keeps failing to start (one line on stderr, exit 1).
 */
export async function supervise<
  W extends PoolWorker,
  A extends Deno.Addr = Deno.NetAddr,
>(plan: PoolPlan<W, A>): Promise<Pool<W>> {
  const { options } = plan;
  const log = new Logger(options);
  let pool: Pool<W> | undefined = undefined; // set once the port is ours
  let stopping: Promise<void> | undefined;
  let code = 0;
  const stop = (reason: string) =>
    stopping ??= (async () => {
      await pool?.stop(reason, options.grace);
      Deno.exit(code);
    })();
  onShutdownSignal((signal, count) => count === 1 ? stop(signal) : pool?.end());

  // Without a reserve of its own, A is the default, Deno.NetAddr.
  const reserve = plan.reserve ??
    (reservePort as unknown as NonNullable<typeof plan.reserve>);
  const reserved = await reserve(options);
  const { addr } = reserved;
  pool = new Pool(plan.size, (slot) => plan.start(slot, addr), log, (why) => {
    const prefix = `${options.script}: `;
    try {
      console.error(why.startsWith(prefix) ? why : prefix + why);
    } catch { /* stderr closed */ }
    code = 1;
    // Later: a worker of the first round that cannot start gives up inside
    // `new Pool()`, before `pool` is set, and the others must be ended too.
    queueMicrotask(() => stop("giving up"));
  });
  await pool.ready;
  reserved.close(); // now only the workers accept
  if (stopping) return await new Promise<never>(() => {}); // exiting
  log.banner(options, addr, plan.banner, plan.fields);
  pool.accept();
  return pool;
}
