/**
 * A pool worker that is a child process, both sides: {@linkcode ChildWorker}
 * is the supervisor's (commands on its stdin; answers and log lines on its
 * stdout), {@linkcode obeyParent} the worker's.
 *
 * @module
 */
import {
  describeExit,
  forEachLine,
  terminateChild,
} from "../process/children.ts";
import type { EchoServer } from "../serve.ts";
import { onShutdownSignal } from "../signals.ts";
import { CommandedWorker, obey, processWorker } from "./commands.ts";

/**
 * A worker process, started with stdin, stdout and stderr piped. Its log
 * lines are forwarded whole, never mixed with the supervisor's; what it
 * writes on stderr before it listens is why it could not start.
 */
export class ChildWorker extends CommandedWorker {
  readonly name: string;
  readonly fields: Record<string, unknown>;
  #child: Deno.ChildProcess;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;

  /** Takes over `child`, just spawned, as worker `slot`. */
  constructor(slot: number, child: Deno.ChildProcess) {
    super();
    this.#child = child;
    ({ name: this.name, fields: this.fields } = processWorker(slot, child.pid));
    this.#stdin = this.#child.stdin.getWriter();
    this.#reap();
  }

  async #reap(): Promise<void> {
    const started = performance.now();
    let listened = false;
    const errors: string[] = [];
    const stdout = forEachLine(this.#child.stdout, (line) => {
      if (this.answer(line)) listened ||= line === "listening";
      else write(console.log, line);
    });
    const stderr = forEachLine(this.#child.stderr, (line) => {
      if (listened) write(console.error, line);
      else errors.push(line);
    });
    const status = await this.#child.status;
    await Promise.all([stdout, stderr]);
    this.#stdin.close().catch(() => {});
    const { text, fields } = describeExit(status, performance.now() - started);
    this.ended({ text, fields, error: errors.at(-1) });
  }

  /** Writes the command as a line on its stdin. */
  protected send(command: string): void {
    const line = new TextEncoder().encode(`${command}\n`);
    this.#stdin.write(line).catch(() => {}); // it exited meanwhile
  }

  /** SIGTERM, then SIGKILL if it still runs 2 s later. */
  protected kill(): void {
    terminateChild(this.#child);
  }
}

/** One line on stdout or stderr; a closed one never stops the supervisor. */
function write(to: (line: string) => void, line: string): void {
  try {
    to(line);
  } catch { /* closed */ }
}

/**
 * The worker's side, in a worker process whose `server` listens: obeys the
 * commands on stdin and answers on stdout (commands.ts), and resolves once
 * told to accept. A stop signal drains, a second ends the clients; the end of
 * stdin means the supervisor died: drain. Exits 0 once the clients are gone.
 */
export function obeyParent(server: EchoServer): Promise<void> {
  const supervisor = obey(server, (word) => {
    if (word === "stopped") Deno.exit(0);
    console.log(word); // to the supervisor, which reads our stdout
  });
  onShutdownSignal((signal, count) =>
    supervisor.command(count === 1 ? `drain ${signal}` : "end")
  );
  forEachLine(Deno.stdin.readable, supervisor.command)
    .then(() => supervisor.command("drain supervisor"));
  return supervisor.accept;
}
