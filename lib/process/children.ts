/**
 * Child processes, once started: how a parent reads a child's output, ends
 * and reaps it so that no zombie or orphan is ever left, and says how it
 * exited or why it could not start.
 *
 * @module
 */
import { formatMs } from "../log.ts";

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
 * child that leads its own group (`detached: true`, as every child here is
 * started). On a child that has exited it only reaps.
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
