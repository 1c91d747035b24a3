/**
 * What `ulimit -n` allows a server: how many clients fit at a model's file
 * descriptors per client (`--max-conns` is capped to that, with one log
 * line), and whether a pool fits at all (else one line that names the limit
 * and how many would fit). A server out of descriptors fails accepts and
 * spawns; one under its cap keeps the rest waiting in the backlog.
 *
 * @module
 */
import type { ServerOptions } from "./cli.ts";

/** What a model's clients cost in file descriptors (measured). */
export interface FdCost {
  /** Per served client (default 1, its socket). */
  perClient?: number;
  /** Held whatever the clients (default 0): a pool's Worker threads. */
  fixed?: number;
  /** Processes the clients are spread over, each with its own limit (default 1). */
  processes?: number;
}

/** Descriptors a Deno process holds before any client: runtime, listener, log. */
const FD_RESERVE = 40;

/** The soft limit on open files (`ulimit -n`), if /proc tells. */
export function openFileLimit(): number | undefined {
  // Deno opens /proc only with every permission (-A), and short of that it
  // would prompt at a terminal; --allow-ffi comes with -A and hardly alone.
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    return undefined;
  }
  try {
    const limits = Deno.readTextFileSync("/proc/self/limits");
    const soft = limits.match(/^Max open files\s+(\d+|unlimited)/m)?.[1];
    return soft === undefined || soft === "unlimited"
      ? undefined
      : Number(soft);
  } catch {
    return undefined; // not Linux: trust the user
  }
}

/** Caps `maxConns` to the clients that fit under `ulimit -n` at `cost`. */
export function capToFileLimit(
  maxConns: number,
  { perClient = 1, fixed = 0, processes = 1 }: FdCost,
): { maxConns: number; note?: string } {
  const limit = openFileLimit();
  if (limit === undefined) return { maxConns };
  const each = Math.floor((limit - FD_RESERVE - fixed) / perClient);
  const fits = Math.max(1, processes * each);
  if (fits >= maxConns) return { maxConns };
  const room = processes > 1
    ? `${each} clients in each of ${processes} processes`
    : `${fits} clients`;
  return {
    maxConns: fits,
    note: `--max-conns ${maxConns} lowered to ${fits}: ulimit -n ${limit} ` +
      `leaves room for ${room} at ${perClient} file descriptor(s) each`,
  };
}

/**
 * Why a pool of `size` workers cannot run under `ulimit -n`, in one line, or
 * undefined when it can: too few descriptors for the supervisor's pipes to
 * `size` worker processes, or for a client per worker thread.
 */
export function poolOverFileLimit(
  { perClient = 1, fixed = 0, processes = 1 }: FdCost,
  options: ServerOptions,
  size: number,
): string | undefined {
  const limit = openFileLimit();
  const fit = (each: number) =>
    Math.max(0, Math.floor(((limit ?? Infinity) - FD_RESERVE) / each));
  const runtime = `${FD_RESERVE} for the runtime`;
  // The supervising process holds pipes to each worker process: 4 file
  // descriptors for prefork's (measured), 2 for node:cluster's; 4 for both.
  if (processes > 1 && fit(4) < size) {
    const s = fit(4) === 1 ? "" : "es";
    return `ulimit -n ${limit} leaves room for ${fit(4)} worker process${s}, ` +
      `not ${size} (the supervisor holds 4 file descriptors per worker, ${runtime})`;
  }
  // Threads: one process; each worker holds its own descriptors and a client's.
  if (options.maxConns >= size || options.fdCapNote === undefined) return;
  const perWorker = fixed / size + perClient;
  const s = fit(perWorker) === 1 ? "" : "s";
  return `ulimit -n ${limit} leaves room for ${
    fit(perWorker)
  } pool worker${s}, ` +
    `not ${size} (${perWorker} file descriptors each with a client, ${runtime})`;
}
