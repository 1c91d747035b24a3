/**
 * How a supervisor commands the workers of its pool over a channel (a child's
 * stdin and stdout, a MessagePort, node:cluster's IPC): it says `accept`,
 * `stop-accepting`, `drain REASON`, `end`; the worker answers `listening`,
 * `not-accepting`, `stopped`. {@linkcode CommandedWorker} is the supervisor's
 * side, {@linkcode obey} the worker's.
 *
 * @module
 */
import type { EchoServer } from "../serve.ts";
import type { PoolWorker, WorkerExit } from "./supervisor.ts";

/** How long a worker told to end gets before it is killed. */
const KILL_AFTER_MS = 2_000;

/** The log name and JSON fields of worker process `slot`: `worker 2 (pid 4242)`. */
export function processWorker(
  slot: number,
  pid: number,
): { name: string; fields: Record<string, unknown> } {
  return {
    name: `worker ${slot} (pid ${pid})`,
    fields: { worker: slot, workerPid: pid },
  };
}

/** What a worker says to its supervisor. */
export type Answer = "listening" | "not-accepting" | "stopped";

/**
 * The supervisor's side: a subclass sends, kills, feeds each answer it
 * receives to `answer`, and reports the end with `ended`.
 */
export abstract class CommandedWorker implements PoolWorker {
  abstract readonly name: string;
  abstract readonly fields: Record<string, unknown>;
  readonly listening: Promise<boolean>;
  readonly exited: Promise<WorkerExit>;
  #listening = Promise.withResolvers<boolean>();
  #notAccepting = Promise.withResolvers<void>();
  #exited = Promise.withResolvers<WorkerExit>();
  #listened = false;
  #killTimer?: ReturnType<typeof setTimeout>;

  constructor() {
    this.listening = this.#listening.promise;
    this.exited = this.#exited.promise;
  }

  /** Sends one command word (and its argument) to the worker. */
  protected abstract send(command: string): void;

  /** Ends the worker by force, whatever it is doing. */
  protected abstract kill(): void;

  /** Takes `line` from the worker: false if it is no answer (a log line). */
  answer(line: string): boolean {
    const word = line as Answer;
    if (word === "listening") {
      this.#listened = true;
      this.#listening.resolve(true);
    } else if (word === "not-accepting") this.#notAccepting.resolve();
    else if (word === "stopped") this.kill(); // drained: its end, at once
    else return false;
    return true;
  }

  /** Records how the worker ended; call once, when it is gone. */
  protected ended(exit: WorkerExit): void {
    clearTimeout(this.#killTimer);
    this.#listening.resolve(false);
    this.#notAccepting.resolve();
    this.#exited.resolve(exit);
  }

  accept(): void {
    this.send("accept");
  }

  stopAccepting(): Promise<void> {
    this.send("stop-accepting");
    return this.#notAccepting.promise;
  }

  drain(reason: string): void {
    this.send(`drain ${reason}`);
  }

  /** See {@linkcode PoolWorker.end}: killed if it has not ended 2 s later. */
  end(): void {
    if (!this.#listened) return this.kill(); // no client to end
    this.send("end");
    this.#killTimer ??= setTimeout(() => this.kill(), KILL_AFTER_MS);
  }
}

/**
 * The worker's side, once `server` listens; `answer` sends a word back. It
 * answers `listening` at once. `accept` resolves the returned `accept` (the
 * worker runs its accept loop), `stop-accepting` closes the listener, `drain`
 * lets the clients finish and `end` ends them now; `stopped` once they are
 * gone: the worker may end then. Feed each command line to `command`.
 */
export function obey(
  server: EchoServer,
  answer: (word: Answer) => void,
): { command(line: string): void; accept: Promise<void> } {
  const accept = Promise.withResolvers<void>();
  let stopped: Promise<void> | undefined;
  const stop = (reason: string) => {
    const done = server.shutdown(reason); // a second call ends the clients
    stopped ??= done.then(() => answer("stopped"));
  };
  answer("listening");
  return {
    accept: accept.promise,
    command(line) {
      const [word, reason = "supervisor"] = line.split(" ");
      if (word === "accept") accept.resolve();
      else if (word === "stop-accepting") {
        server.stopAccepting().then(() => answer("not-accepting"));
      } else if (word === "drain" && !stopped) stop(reason);
      else if (word === "end") {
        if (!stopped) stop(reason);
        stop(reason);
      }
    },
  };
}
