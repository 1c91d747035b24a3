/**
 * A pool worker that is a child process: this script again, started by
 * spawnChildRole (children.ts) in its worker role, commanded over its stdin
 * (pool_commands.ts), its answers and log lines read from its stdout.
 *
 * @module
 */
import {
  forEachLine,
  spawnChildRole,
  spawnErrorText,
  terminateChild,
} from "../process/children.ts";
import { describeExit } from "../log.ts";
import { CommandedWorker } from "./commands.ts";

/**
 * A worker process: this script again (`script`, started with `roleArgs` and
 * exactly the permissions in `denoFlags`; see spawnChildRole), commanded over
 * its stdin. Its stdout carries its answers and its log lines, which are
 * forwarded whole (they never mix with the supervisor's); what it writes on
 * stderr before it listens is kept as the reason it could not start.
 */
export class ChildWorker extends CommandedWorker {
  /** `worker 2 (pid 4242)`. */
  readonly name: string;
  /** `{ worker: 2, workerPid: 4242 }`, for JSON log lines. */
  readonly fields: Record<string, unknown>;
  #child: Deno.ChildProcess;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;

  /** Starts it as worker `number`; throws if it cannot be started. */
  constructor(
    number: number,
    script: string,
    roleArgs: string[],
    denoFlags: string[],
  ) {
    super();
    try {
      this.#child = spawnChildRole(script, roleArgs, { denoFlags });
    } catch (error) {
      throw new Error(spawnErrorText(error));
    }
    const { pid } = this.#child;
    this.name = `worker ${number} (pid ${pid})`;
    this.fields = { worker: number, workerPid: pid };
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
