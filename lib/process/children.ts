/**
 * Child processes: how a script starts a copy of itself in one (Deno cannot
 * fork(); role.ts names the copy's role), how it reads a child's output, how
 * it ends and reaps it so that no zombie or orphan is ever left, and how it
 * says how one exited.
 *
 * @module
 */
import { runAgain } from "../role.ts";
import { formatMs } from "../log.ts";

/** How {@linkcode spawnChildRole} starts a child. */
export interface ChildRoleOptions {
  /**
   * `deno run` flags granting the child what it needs (`["--allow-net"]`).
   * Default: none, so the child has no permission at all.
   */
  denoFlags?: string[];
  /**
   * The child's stdin (default `"piped"`, the lifeline described below).
   * `"null"` for a role that learns of its parent's death another way, such
   * as the end of a connection to the parent.
   */
  stdin?: "piped" | "null";
  /** The child's stdout (default `"piped"`). */
  stdout?: "piped" | "inherit" | "null";
  /** The child's stderr (default `"piped"`). */
  stderr?: "piped" | "inherit" | "null";
  /** More environment variables for the child, on top of this process's. */
  env?: Record<string, string>;
}

/**
 * Starts `script` again in a child process, in the role `name` (role.ts),
 * with `args` after it: `deno run --no-prompt --no-config DENO_FLAGS SCRIPT
 * --role NAME ARGS...` with this process's own deno executable.
 *
 * - The child has exactly the permissions in `denoFlags` (none by default),
 *   never prompts, and ignores any deno.json in the working directory.
 * - Its stdin (unless `stdin: "null"`) is a pipe from this process, kept
 *   open for the child's life:
 *   when this process ends, however it ends (SIGKILL included), the kernel
 *   closes the pipe and the child reads EOF. A child role must end then: serve
 *   its stdin to EOF, or await {@linkcode untilStdinCloses}. (In C,
 *   `prctl(PR_SET_PDEATHSIG)` does this; Deno has no equivalent.)
 * - It runs in a session of its own (setsid), so a Ctrl-C at the terminal
 *   reaches only this process, which decides when its children end.
 *
 * `script` is the caller's `import.meta.filename ?? import.meta.url`. Throws
 * like `Deno.Command.spawn` when the child cannot be started. Reap the child
 * by awaiting its `status` (or {@linkcode terminateChild}).
 */
export function spawnChildRole(
  script: string,
  name: string,
  args: string[],
  options: ChildRoleOptions = {},
): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: runAgain(script, name, args, options.denoFlags),
    stdin: options.stdin ?? "piped",
    stdout: options.stdout ?? "piped",
    stderr: options.stderr ?? "piped",
    env: options.env,
    detached: true,
  }).spawn();
}

/**
 * In a child role started by {@linkcode spawnChildRole} that does not use
 * stdin for data: resolves when stdin reaches EOF or fails, that is when the
 * parent has closed it or has died.
 */
export async function untilStdinCloses(): Promise<void> {
  const buffer = new Uint8Array(256);
  try {
    while ((await Deno.stdin.read(buffer)) !== null) {
      // not data: the pipe only tells that the parent is alive
    }
  } catch { /* a broken pipe is a closed one */ }
}

/**
 * Calls `onLine` for each line of a child's `stream` (its stdout or stderr)
 * until the stream ends or breaks, then resolves: how a parent forwards or
 * logs what its children write. Lines come without their `\n` or `\r\n`;
 * empty lines are skipped; a line longer than 2,000 characters is cut, so a
 * child that never writes a newline cannot grow the parent's memory.
 */
export async function forEachLine(
  stream: ReadableStream<Uint8Array>,
  onLine: (line: string) => void,
): Promise<void> {
  const MAX_LINE = 2000;
  let partial = "";
  try {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      const lines = (partial + text).split("\n");
      partial = lines.pop()!;
      if (partial.length > MAX_LINE) {
        lines.push(partial);
        partial = "";
      }
      for (const line of lines) {
        const trimmed = line.replace(/\r$/, "");
        if (trimmed) onLine(trimmed.slice(0, MAX_LINE));
      }
    }
  } catch { /* the pipe broke: nothing more to read */ }
  if (partial) onLine(partial.slice(0, MAX_LINE));
}

/**
 * Ends `child` and resolves with its status once it is reaped: waits up to
 * `termAfterMs` (default 0: not at all) for it to exit on its own (say, after
 * its stdin was closed), then sends SIGTERM, then SIGKILL if it still runs
 * `killAfterMs` (default 2000) later. With `group`, the signals go to the
 * child's process group, so that whatever it started ends too: only for a
 * child that leads its own group (`detached: true`, as {@linkcode
 * spawnChildRole} starts them). On a child that has exited it only reaps.
 */
export async function terminateChild(
  child: Deno.ChildProcess,
  { termAfterMs = 0, killAfterMs = 2000, group = false } = {},
): Promise<Deno.CommandStatus> {
  let exited = false;
  const send = (signal: Deno.Signal) => {
    if (exited) return;
    try {
      if (group) Deno.kill(-child.pid, signal);
      else child.kill(signal);
    } catch { /* exited meanwhile */ }
  };
  if (termAfterMs <= 0) send("SIGTERM");
  const timers = [
    termAfterMs > 0 ? setTimeout(() => send("SIGTERM"), termAfterMs) : 0,
    setTimeout(() => send("SIGKILL"), Math.max(0, termAfterMs) + killAfterMs),
  ];
  try {
    return await child.status;
  } finally {
    exited = true;
    timers.forEach(clearTimeout);
  }
}

/** Says in a few words why a child process could not be started. */
export function spawnErrorText(error: unknown): string {
  if (error instanceof Deno.errors.NotFound) return "command not found";
  if (error instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (error instanceof Deno.errors.NotCapable) {
    return "not permitted by Deno (run with --allow-run)";
  }
  return error instanceof Error ? error.message : String(error);
}

/**
 * How a reaped child ended, as log text (`exited with code 0 after 31.2 ms`,
 * `killed by SIGKILL after 2.01 s`) and as JSON fields.
 */
export function describeExit(
  status: Deno.CommandStatus,
  ms: number,
): {
  text: string;
  fields: { code: number; signal: Deno.Signal | null; ms: number };
} {
  const how = status.signal
    ? `killed by ${status.signal}`
    : `exited with code ${status.code}`;
  return {
    text: `${how} after ${formatMs(ms)}`,
    fields: {
      code: status.code,
      signal: status.signal,
      ms: Math.round(ms * 10) / 10,
    },
  };
}
