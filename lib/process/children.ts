/**
 * Child processes, once started: reading their output, ending and reaping
 * them so that no zombie or orphan is left, saying how they exited or why
 * they could not start.
 *
 * @module
 */
import { formatMs, tenths } from "../log.ts";

/**
 * Calls `onLine` for each line of a child's stdout or stderr until it ends or
 * breaks. Lines come without `\n` or `\r\n`; empty ones are skipped; a line is
 * cut at 2,000 characters, so that a child that never writes a newline cannot
 * grow the parent's memory.
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
 * Ends `child` and resolves with its status once reaped: waits `termAfterMs`
 * (default 0) for it to exit on its own (say, its stdin closed), sends
 * SIGTERM, then SIGKILL 2 s later. With `group`, to its process group, so that
 * what it started ends too: only for a group leader (`detached: true`). On a
 * child that has exited it only reaps.
 */
export async function terminateChild(
  child: Deno.ChildProcess,
  { termAfterMs = 0, group = false } = {},
): Promise<Deno.CommandStatus> {
  let exited = false;
  const send = (signal: Deno.Signal) => {
    if (exited) return; // its pid, and group, may be another's now
    try {
      if (group) Deno.kill(-child.pid, signal);
      else child.kill(signal);
    } catch { /* exited meanwhile */ }
  };
  const after = (ms: number, signal: Deno.Signal) =>
    setTimeout(() => send(signal), ms);
  const timers = [after(Math.max(0, termAfterMs) + 2000, "SIGKILL")];
  if (termAfterMs > 0) timers.push(after(termAfterMs, "SIGTERM"));
  else send("SIGTERM");
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
  const { code, signal } = status;
  const how = signal ? `killed by ${signal}` : `exited with code ${code}`;
  const fields = { code, signal, ms: tenths(ms) };
  return { text: `${how} after ${formatMs(ms)}`, fields };
}
