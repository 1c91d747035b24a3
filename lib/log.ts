/**
 * The log every server writes: one line per event on stdout, or one JSON
 * object per line with `--json`; errors as one line on stderr. A closed
 * stdout or stderr never takes a server down.
 *
 * @module
 */
import type { ServerOptions } from "./cli.ts";

/** Who serves a client: the process, and the worker or child number if any. */
export interface Who {
  pid: number;
  worker?: number;
  /** The OS thread id (as in `ps -L`, `top -H`) of a worker thread, if known. */
  thread?: number;
}

/** Formats an address the way the banner shows it: `[::1]:80`, `unix:/p`. */
export function formatAddr(addr: Deno.Addr): string {
  if ("path" in addr) return `unix:${addr.path}`;
  if (!("hostname" in addr)) return addr.transport;
  const host = addr.hostname.includes(":")
    ? `[${addr.hostname}]`
    : addr.hostname;
  return `${host}:${addr.port}`;
}

/** Formats a byte count for people: `512 B`, `1.5 KiB`, `16.0 MiB`. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
}

/** The log of one server process, or worker. */
export class Logger {
  #json: boolean;
  #quiet: boolean;
  /** Who writes these lines; shown on every line. */
  readonly who: Who;

  /** Makes a logger for `who` with the `--json` and `--quiet` settings. */
  constructor(
    options: { json: boolean; quiet: boolean },
    who: Who = { pid: Deno.pid },
  ) {
    this.#json = options.json;
    this.#quiet = options.quiet;
    this.who = who;
  }

  /** True when per-client lines are wanted. */
  get verbose(): boolean {
    return !this.#quiet;
  }

  /**
   * Logs `text`, or with `--json` `fields` besides `event`, who and the time.
   * `always` lines (banner, shutdown) are printed even with `--quiet`.
   */
  event(
    event: string,
    text: string,
    fields: Record<string, unknown> = {},
    always = false,
  ): void {
    if (this.#quiet && !always) return;
    const line = this.#json
      ? JSON.stringify({
        event,
        ...fields,
        ...this.who,
        time: new Date().toISOString(),
      })
      : `[${whoText(this.who)}] ${text}`;
    writeLine(line);
  }

  /** Logs the banner: `listening on HOST:PORT (words...)`, or its JSON form. */
  listening(
    addr: Deno.Addr,
    words: string[],
    fields: Record<string, unknown> = {},
  ): void {
    const where = "path" in addr
      ? { transport: addr.transport, path: addr.path }
      : "hostname" in addr
      ? { transport: addr.transport, host: addr.hostname, port: addr.port }
      : { transport: addr.transport };
    writeLine(
      this.#json
        ? JSON.stringify({
          event: "listening",
          ...where,
          ...fields,
          ...this.who,
        })
        : `listening on ${formatAddr(addr)}${
          words.length ? ` (${words.join(", ")})` : ""
        }`,
    );
  }

  /**
   * A TCP server's banner: `listening on ADDR (MODEL, WORDS..., pid PID)`,
   * then the line saying `--max-conns` was lowered to fit `ulimit -n`, if it was.
   */
  banner(
    options: ServerOptions,
    addr: Deno.Addr,
    words: string[],
    fields: Record<string, unknown> = {},
  ): void {
    const { model, maxConns, fdCapNote } = options;
    const all = [model, ...words, `pid ${Deno.pid}`];
    this.listening(addr, all, { model, maxConns, ...fields });
    if (fdCapNote) this.event("max-conns", fdCapNote, { maxConns }, true);
  }

  /** Logs an error on stderr as one line; never throws. */
  error(text: string, fields: Record<string, unknown> = {}): void {
    const line = this.#json
      ? JSON.stringify({
        event: "error",
        message: text,
        ...fields,
        ...this.who,
      })
      : `[${whoText(this.who)}] error: ${text}`;
    try {
      console.error(line);
    } catch { /* stderr closed: nothing left to tell */ }
  }
}

function whoText(who: Who): string {
  const thread = who.thread === undefined ? "" : ` thread ${who.thread}`;
  return who.worker === undefined
    ? `pid ${who.pid}${thread}`
    : `pid ${who.pid} worker ${who.worker}${thread}`;
}

function writeLine(line: string): void {
  try {
    console.log(line);
  } catch { /* stdout closed (reader gone): keep serving */ }
}

/** Milliseconds to a tenth, for JSON fields: `31.2`. */
export function tenths(ms: number): number {
  return Math.round(ms * 10) / 10;
}

/** Formats a duration for people: `31.2 ms`, `2.01 s`. */
export function formatMs(ms: number): string {
  return ms < 1000 ? `${ms.toFixed(1)} ms` : `${(ms / 1000).toFixed(2)} s`;
}
