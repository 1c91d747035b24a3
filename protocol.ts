/**
 * The plumbing every echo server in this collection shares, so that each model
 * script can read like the textbook listing of its model.
 *
 * - {@linkcode parseServerArgs}: the command line of SPEC.md (exit 2 on bad input).
 * - {@linkcode startServer}: bind, print the banner, accept robustly, serve
 *   each client with logging, `--max-conns`, `--idle-timeout`, and drain on
 *   SIGINT/SIGTERM.
 * - {@linkcode echo}: the RFC 862 echo loop over any byte reader and writer.
 * - {@linkcode spawnChildRole}, {@linkcode terminateChild}: this script again
 *   as a child process, which ends with its parent, and its end.
 *
 * @module
 */
// Only a type at load time: node:util itself is imported when a command line
// is parsed, because loading it costs every child process and Worker ~13 ms
// of start-up (measured), and those parse no command line.
import type { ParseArgsOptionsConfig } from "node:util";

/** The echo service's customary unprivileged port (port 7 needs root). */
export const DEFAULT_PORT = 8080;

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/** Everything a TCP echo server takes from its command line. */
export interface ServerOptions {
  /** TCP port; 0 picks a free one. */
  port: number;
  /** Address to bind (IPv6 without brackets). */
  host: string;
  /** Unix socket path; when set, `host` and `port` are unused. */
  unix?: string;
  /** At most this many clients served at once; the rest wait unaccepted. */
  maxConns: number;
  /** Seconds without a byte moving before a client is closed; 0 = never. */
  idleTimeout: number;
  /** Milliseconds of CPU burnt per chunk received before echoing it. */
  cpuMs: number;
  /** Seconds that connected clients get to finish after SIGINT/SIGTERM. */
  grace: number;
  /** Set TCP_NODELAY on every client socket. */
  nodelay: boolean;
  /** Set SO_KEEPALIVE on every client socket. */
  keepalive: boolean;
  /** Log one JSON object per line. */
  json: boolean;
  /** Log only the banner, shutdown and errors. */
  quiet: boolean;
  /** The model's own options (`--exec`, `--pool`, `--workers`), as parsed. */
  extra: Record<string, string | boolean | undefined>;
}

/** What a model script tells the shared command line about itself. */
export interface ModelSpec {
  /** File name, used in usage and error lines: `"evented.ts"`. */
  script: string;
  /** Model name shown in the banner: `"evented"`. */
  model: string;
  /** One line saying what the model is, shown under the usage line. */
  summary: string;
  /** `--max-conns` when not given. */
  defaultMaxConns: number;
  /** When true, `--max-conns` cannot be changed (the iterative model). */
  fixedMaxConns?: boolean;
  /** False when the model cannot listen on a Unix socket (omitted from usage). */
  unix?: boolean;
  /** The model's own options, in node:util parseArgs form. */
  options?: ParseArgsOptionsConfig;
  /** Usage lines describing the model's own options. */
  optionsUsage?: string;
  /** Extra deno flags the shebang-less invocation needs, for the usage line. */
  denoFlags?: string;
}

const COMMON_OPTIONS = {
  host: { type: "string" },
  unix: { type: "string" },
  "max-conns": { type: "string" },
  "idle-timeout": { type: "string" },
  "cpu-ms": { type: "string" },
  grace: { type: "string" },
  nodelay: { type: "boolean" },
  keepalive: { type: "boolean" },
  json: { type: "boolean" },
  quiet: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const satisfies ParseArgsOptionsConfig;

/** The usage text of a TCP server script. */
export function serverUsage(spec: ModelSpec): string {
  const maxConns = spec.fixedMaxConns
    ? `always ${spec.defaultMaxConns}`
    : `default ${spec.defaultMaxConns}`;
  return `usage: deno run ${
    spec.denoFlags ?? "-A"
  } ${spec.script} [PORT] [options]

${spec.summary}

  PORT                    TCP port; 0 picks a free one (default ${DEFAULT_PORT})
  --host ADDR             address to bind (default 127.0.0.1; 0.0.0.0 or :: for all)
${
    spec.unix === false
      ? ""
      : "  --unix PATH             listen on a Unix domain socket instead of TCP\n"
  }  --max-conns N           clients served at once; the rest wait (${maxConns})
  --idle-timeout SECONDS  close a client when no byte has moved for that long
  --cpu-ms N              burn N ms of CPU per chunk received before echoing it
  --grace SECONDS         time clients get to finish on SIGINT/SIGTERM (default 5)
  --nodelay               set TCP_NODELAY on client sockets
  --keepalive             set SO_KEEPALIVE on client sockets
  --json                  log one JSON object per line
  --quiet                 log only the banner, shutdown and errors
  -h, --help              show this help
${spec.optionsUsage ? `\n${spec.optionsUsage.trimEnd()}\n` : ""}`;
}

/**
 * Prints `script: reason` and the usage on stderr and exits 2: the one way a
 * script rejects its command line.
 */
export function usageError(
  script: string,
  reason: string,
  usage: string,
): never {
  console.error(`${script}: ${reason}`);
  console.error(usage.trimEnd());
  Deno.exit(2);
}

/** Prints `script: message` on stderr and exits with `code` (default 1). */
export function fail(script: string, message: string, code = 1): never {
  console.error(`${script}: ${message}`);
  Deno.exit(code);
}

/**
 * Parses `args` with node:util parseArgs, turning its errors into a one-line
 * reason and exit 2. `--help` prints the usage on stdout and exits 0.
 */
export async function parseCommandLine<T extends ParseArgsOptionsConfig>(
  args: string[],
  options: T,
  script: string,
  usage: string,
): Promise<{
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
}> {
  const { parseArgs } = await import("node:util");
  let parsed;
  try {
    parsed = parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (error) {
    // parseArgs explains at length how to pass a literal "--x"; the first
    // sentence is the reason.
    const message = (error as Error).message;
    // A value that starts with "-" (a negative number) reads as an option.
    const ambiguous = message.match(
      /option '(--[\w-]+)' argument is ambiguous/i,
    );
    const reason = ambiguous
      ? `${ambiguous[1]} needs a value that does not start with "-"`
      : message.split(/\. |\n/)[0].replace(/\.$/, "");
    usageError(script, reason.charAt(0).toLowerCase() + reason.slice(1), usage);
  }
  const values = parsed.values as Record<string, string | boolean | undefined>;
  if (values.help) {
    console.log(usage.trimEnd());
    Deno.exit(0);
  }
  return { values, positionals: parsed.positionals };
}

/**
 * Reads a number option: `undefined` when absent, otherwise a finite number in
 * `[min, max]` (an integer when `integer`), or an exit-2 usage error naming it.
 */
export function numberOption(
  value: string | boolean | undefined,
  name: string,
  limits: { min: number; max?: number; integer?: boolean },
  fault: (reason: string) => never,
): number | undefined {
  if (value === undefined) return undefined;
  const text = String(value).trim();
  const number = text === "" ? NaN : Number(text);
  const kind = limits.integer ? "a whole number" : "a number";
  const range = limits.max === undefined
    ? `>= ${limits.min}`
    : `from ${limits.min} to ${limits.max}`;
  if (
    !Number.isFinite(number) || (limits.integer && !Number.isInteger(number)) ||
    number < limits.min || (limits.max !== undefined && number > limits.max)
  ) {
    fault(`${name} must be ${kind} ${range}, not "${text}"`);
  }
  return number;
}

/** Accepts `::1` as well as `[::1]` for IPv6 literals. */
function unbracket(host: string): string {
  return host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
}

/**
 * Reads where a server listens from its command line: at most one PORT
 * positional (0 to 65535, default 8080) and `--host` (default 127.0.0.1, IPv6
 * with or without brackets). Bad input goes to `fault` (exit 2).
 */
export function listenAddress(
  positionals: string[],
  hostOption: string | boolean | undefined,
  fault: (reason: string) => never,
): { port: number; host: string } {
  if (positionals.length > 1) {
    fault(`expected at most one PORT, got ${positionals.join(" ")}`);
  }
  const port = numberOption(positionals[0], "PORT", {
    min: 0,
    max: 65535,
    integer: true,
  }, fault) ?? DEFAULT_PORT;
  const host = unbracket(String(hostOption ?? "127.0.0.1"));
  if (host === "") fault("--host needs an address");
  return { port, host };
}

/** Parses a TCP server's command line (SPEC.md) or exits 2 saying why. */
export async function parseServerArgs(
  args: string[],
  spec: ModelSpec,
): Promise<ServerOptions> {
  const usage = serverUsage(spec);
  const fault = (reason: string): never =>
    usageError(spec.script, reason, usage);
  const { values, positionals } = await parseCommandLine(
    args,
    { ...COMMON_OPTIONS, ...spec.options },
    spec.script,
    usage,
  );
  const { port, host } = listenAddress(positionals, values.host, fault);
  if (values.unix !== undefined) {
    if (values.host !== undefined) {
      fault("--unix and --host exclude each other");
    }
    if (positionals.length) fault("--unix and PORT exclude each other");
    if (values.unix === "") fault("--unix needs a path");
  }
  const maxConns = numberOption(values["max-conns"], "--max-conns", {
    min: 1,
    integer: true,
  }, fault) ?? spec.defaultMaxConns;
  if (spec.fixedMaxConns && maxConns !== spec.defaultMaxConns) {
    fault(
      `--max-conns does not apply: ${spec.model} serves one client at a time`,
    );
  }
  const extra: ServerOptions["extra"] = {};
  for (const name of Object.keys(spec.options ?? {})) {
    extra[name] = values[name];
  }
  return {
    port,
    host,
    unix: values.unix as string | undefined,
    maxConns,
    idleTimeout: numberOption(
      values["idle-timeout"],
      "--idle-timeout",
      { min: 0 },
      fault,
    ) ?? 0,
    cpuMs: numberOption(values["cpu-ms"], "--cpu-ms", { min: 0 }, fault) ?? 0,
    grace: numberOption(values.grace, "--grace", { min: 0 }, fault) ?? 5,
    nodelay: values.nodelay === true,
    keepalive: values.keepalive === true,
    json: values.json === true,
    quiet: values.quiet === true,
    extra,
  };
}

// ---------------------------------------------------------------------------
// Logging
// ---------------------------------------------------------------------------

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

/**
 * Writes the log lines of one server process (or worker): text for people, or
 * one JSON object per line with `--json`. Lines go to stdout, so a test or a
 * supervising parent can read them; a closed stdout never takes the server down.
 */
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
   * Logs an event. `text` is the line people read; `fields` are what the JSON
   * line carries besides `event`, the time and who wrote it. `always` lines
   * (banner, shutdown) are printed even with `--quiet`.
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

// ---------------------------------------------------------------------------
// The echo service
// ---------------------------------------------------------------------------

/** Anything bytes can be read from: a `Deno.Conn`, `Deno.stdin`, ... */
export interface ByteReader {
  /** Reads into `buffer`; resolves with the count, or null at end of stream. */
  read(buffer: Uint8Array): Promise<number | null>;
}

/** Anything bytes can be written to: a `Deno.Conn`, `Deno.stdout`, ... */
export interface ByteWriter {
  /** Writes some of `bytes`; resolves with how many were written. */
  write(bytes: Uint8Array): Promise<number>;
}

/** Bytes moved each way, updated as they move. */
export interface Counters {
  bytesIn: number;
  bytesOut: number;
}

// An idle client holds its pending read's buffer, so it starts at one page;
// a read that fills it shows a bulk sender, which then gets the large buffer.
// Measured on evented.ts with 1,000 idle clients: 19 KB of RSS per client,
// against 31 KB when every client started with 16 KiB.
const SMALL_BUFFER = 4 * 1024;
const LARGE_BUFFER = 64 * 1024;

/**
 * Burns `ms` milliseconds of this thread's CPU time: the stand-in for real
 * work. Only time the thread actually runs counts: when busy threads outnumber
 * cores, the wall clock runs on while this one waits for a core, and a burn
 * timed by the wall clock would do less work than asked (measured: four
 * processes burning 200 ms each on two cores spent 118 to 138 ms of CPU).
 */
export function burnCpu(ms: number): void {
  // Two clock reads in a row are a fraction of a microsecond apart while the
  // thread runs; a longer gap is time spent descheduled, and is not counted.
  const RUNNING_GAP_MS = 0.1;
  const giveUp = performance.now() + ms * 100 + 1000; // a coarse clock never spins forever
  let burnt = 0;
  for (let last = performance.now(); burnt < ms;) {
    const now = performance.now();
    if (now - last < RUNNING_GAP_MS) burnt += now - last;
    if (now > giveUp) return;
    last = now;
  }
}

/**
 * The echo service (RFC 862): every byte read from `reader` is written back to
 * `writer`, in order and unchanged, until `reader` ends. One chunk is in flight
 * at a time, so a client that writes without reading is held back by TCP
 * (backpressure) instead of growing memory. Resolves at end of input, once
 * everything read has been written; rejects when either side fails.
 */
export async function echo(
  reader: ByteReader,
  writer: ByteWriter,
  counters: Counters,
  cpuMs = 0,
): Promise<void> {
  let buffer = new Uint8Array(SMALL_BUFFER);
  for (;;) {
    const n = await reader.read(buffer);
    if (n === null) return;
    counters.bytesIn += n;
    if (cpuMs > 0) burnCpu(cpuMs);
    let written = await writer.write(
      n === buffer.length ? buffer : buffer.subarray(0, n),
    );
    while (written < n) {
      written += await writer.write(buffer.subarray(written, n));
    }
    counters.bytesOut += n;
    if (n === buffer.length && n < LARGE_BUFFER) {
      buffer = new Uint8Array(LARGE_BUFFER);
    }
  }
}

// ---------------------------------------------------------------------------
// Serving clients
// ---------------------------------------------------------------------------

/** One connected client, from accept to close. */
export class Session implements Counters {
  /** Bytes received from the client. */
  bytesIn = 0;
  /** Bytes sent back to the client. */
  bytesOut = 0;
  /** When the client was accepted (performance.now()). */
  readonly started: number = performance.now();
  #ended = new AbortController();
  #closed = false;

  /** Wraps an accepted connection; `client` names it in log lines. */
  constructor(
    readonly id: number,
    readonly conn: Deno.Conn,
    readonly client: string,
  ) {}

  /**
   * Aborted, with the reason as a string, when the server ends this client
   * from outside (idle timeout, shutdown): handlers that hold more than the
   * connection (a child process, a worker) release it on this signal.
   */
  get signal(): AbortSignal {
    return this.#ended.signal;
  }

  /** Ends the client from outside: aborts `signal`, closes the connection. */
  end(reason: string): void {
    if (!this.#ended.signal.aborted) this.#ended.abort(reason);
    this.close();
  }

  /** Closes the connection once; later calls do nothing. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch { /* already closed by the peer's reset */ }
  }
}

/** How a model serves one client: move its bytes, then resolve. */
export type ClientHandler = (session: Session) => Promise<void>;

/** The default handler: the echo service over the connection itself. */
export function echoHandler(cpuMs: number): ClientHandler {
  return (session) => echo(session.conn, session.conn, session, cpuMs);
}

/** Names why a client's connection ended, from the error its I/O raised. */
export function closeReason(error: unknown): string {
  if (error instanceof Deno.errors.ConnectionReset) return "reset";
  if (error instanceof Deno.errors.BrokenPipe) return "reset";
  if (error instanceof Deno.errors.ConnectionAborted) return "reset";
  if (error instanceof Deno.errors.TimedOut) return "timed out";
  return `error: ${error instanceof Error ? error.message : String(error)}`;
}

/** How a server is started, besides its command line. */
export interface StartOptions {
  /** Shown in the banner, e.g. `"evented"`. */
  model: string;
  /** Who serves: shown on every log line (default: this process). */
  who?: Who;
  /** Bind with SO_REUSEPORT so that several processes or workers share the port. */
  reusePort?: boolean;
  /** More words for the banner, after the model name. */
  banner?: string[];
  /** Install SIGINT/SIGTERM handlers that drain and exit 0 (default true). */
  signals?: boolean;
  /** Runs after clients are drained and closed, before exit. */
  onStop?: () => Promise<void> | void;
  /**
   * Print the banner (default true). False for one of several workers that
   * share a port, whose supervisor prints the one banner for them all.
   */
  announce?: boolean;
  /**
   * Numbers the next client (default: 1, 2, 3... per server). Workers that
   * share a port pass a shared counter, so that `#id` is unique in the process.
   */
  nextId?: () => number;
}

/** A listening echo server: accept its clients, serve them. */
export interface EchoServer {
  /** The parsed command line. */
  readonly options: ServerOptions;
  /** The server's log. */
  readonly log: Logger;
  /** The bound address (the real port when 0 was asked). */
  readonly addr: Deno.Addr;
  /**
   * The accepted clients, one at a time: waits for a free `--max-conns` slot
   * before each accept (so waiting clients stay in the kernel's backlog),
   * survives every per-connection accept error, and ends when the server stops.
   */
  clients(): AsyncGenerator<Deno.Conn>;
  /**
   * Serves one client to the end with `handler` (default: echo), logging its
   * connect and close, enforcing `--idle-timeout`, tracking it for the drain.
   * Never rejects: a failing client closes its own connection only.
   */
  serve(conn: Deno.Conn, handler?: ClientHandler): Promise<void>;
  /**
   * Stops accepting: closes the listener and resolves once new clients are
   * refused; connected clients go on. For workers sharing a port, which must
   * all stop accepting before any of them says "stopping". `shutdown` does
   * this first anyway.
   */
  stopAccepting(): Promise<void>;
  /**
   * Stops accepting, lets clients finish for the grace period, ends the rest,
   * runs `onStop`. A second call ends the remaining clients at once.
   */
  shutdown(why: string): Promise<void>;
}

/**
 * Binds the listener of `options` or exits 1 with one line saying why
 * ("cannot listen on 127.0.0.1:8080: address in use").
 */
export async function listenOrExit(
  options: ServerOptions,
  script: string,
  reusePort = false,
): Promise<Deno.Listener> {
  const where = options.unix !== undefined
    ? `unix:${options.unix}`
    : formatAddr({
      transport: "tcp",
      hostname: options.host,
      port: options.port,
    });
  try {
    if (options.unix !== undefined) return await listenUnix(options.unix);
    return Deno.listen({
      hostname: options.host,
      port: options.port,
      reusePort,
    });
  } catch (error) {
    fail(script, `cannot listen on ${where}: ${bindErrorText(error)}`);
  }
}

async function listenUnix(path: string): Promise<Deno.Listener> {
  try {
    return Deno.listen({ transport: "unix", path });
  } catch (error) {
    // A socket file left by a server that died is stale when nobody answers
    // on it: remove it, as the classic C servers unlink before bind.
    if (
      !(error instanceof Deno.errors.AddrInUse) || !(await isStaleSocket(path))
    ) throw error;
    await Deno.remove(path);
    return Deno.listen({ transport: "unix", path });
  }
}

async function isStaleSocket(path: string): Promise<boolean> {
  try {
    if (!(await Deno.lstat(path)).isSocket) return false;
    (await Deno.connect({ transport: "unix", path })).close();
    return false;
  } catch (error) {
    return error instanceof Deno.errors.ConnectionRefused;
  }
}

/**
 * Says in a few words why binding failed ("address in use", "permission
 * denied (ports below 1024 need root)"), for any listener: TCP, Unix, UDP.
 */
export function bindErrorText(error: unknown): string {
  if (error instanceof Deno.errors.AddrInUse) return "address in use";
  if (error instanceof Deno.errors.AddrNotAvailable) {
    return "address not available on this machine";
  }
  if (error instanceof Deno.errors.NotCapable) {
    return "not permitted by Deno (run with --allow-net, or --allow-read --allow-write for --unix)";
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return "permission denied (ports below 1024 need root)";
  }
  const message = error instanceof Error ? error.message : String(error);
  if (/lookup|resolve/i.test(message)) return "unknown host";
  return message.replace(/ \(os error \d+\)$/, "").toLowerCase();
}

/**
 * Starts an echo server: binds (or exits 1), prints the banner, and returns
 * the server whose clients the model script accepts and serves its own way.
 */
export async function startServer(
  options: ServerOptions,
  start: StartOptions,
): Promise<EchoServer> {
  const log = new Logger(options, start.who);
  const listener = await listenOrExit(
    options,
    `${start.model}.ts`,
    start.reusePort,
  );
  return new Server(options, start, log, listener);
}

class Server implements EchoServer {
  readonly addr: Deno.Addr;
  #active = new Set<Session>();
  #slotWaiters: (() => void)[] = [];
  #drained: (() => void)[] = [];
  #stopping = false;
  #accepting?: Promise<Deno.Conn>;
  #shutdown?: Promise<void>;
  #nextId = 1;
  #idleMarks = new Map<Session, { moved: number; at: number }>();

  constructor(
    readonly options: ServerOptions,
    readonly start: StartOptions,
    readonly log: Logger,
    readonly listener: Deno.Listener,
  ) {
    this.addr = listener.addr;
    // Handlers first: whoever has seen the banner may signal at once.
    if (start.signals !== false) {
      onShutdownSignal((signal) => this.#stopAndExit(signal));
    }
    const words = [start.model, ...(start.banner ?? [])];
    if (start.who?.worker === undefined) words.push(`pid ${Deno.pid}`);
    if (start.announce !== false) {
      log.listening(this.addr, words, {
        model: start.model,
        maxConns: options.maxConns,
      });
    }
    if (options.idleTimeout > 0) this.#watchIdle(options.idleTimeout * 1000);
  }

  async *clients(): AsyncGenerator<Deno.Conn> {
    while (!this.#stopping) {
      if (this.#active.size >= this.options.maxConns) {
        await new Promise<void>((resolve) => this.#slotWaiters.push(resolve));
        continue;
      }
      const conn = await this.#accept();
      if (conn) yield conn;
    }
  }

  async #accept(): Promise<Deno.Conn | null> {
    for (let failures = 0;; failures++) {
      try {
        this.#accepting = this.listener.accept();
        return await this.#accepting;
      } catch (error) {
        if (this.#stopping || error instanceof Deno.errors.BadResource) {
          return null;
        }
        // A client that resets before it is accepted makes accept() fail
        // (NotConnected, denoland/deno#8499): that is the client's business.
        if (error instanceof Deno.errors.NotConnected) continue;
        if (error instanceof Deno.errors.ConnectionAborted) continue;
        this.log.error(`accept failed: ${(error as Error).message}`);
        // Out of file descriptors and the like: back off instead of spinning.
        await new Promise((resolve) =>
          setTimeout(resolve, Math.min(1000, 10 * 2 ** failures))
        );
      }
    }
  }

  async serve(conn: Deno.Conn, handler?: ClientHandler): Promise<void> {
    const id = this.start.nextId?.() ?? this.#nextId++;
    const session = new Session(id, conn, clientName(conn, id));
    this.#active.add(session);
    if (this.#stopping) session.end("shutdown");
    const { log, options } = this;
    if (options.nodelay || options.keepalive) setSocketOptions(conn, options);
    if (log.verbose) {
      log.event("connected", `#${session.id} ${session.client} connected`, {
        id: session.id,
        client: session.client,
        active: this.#active.size,
      });
    }
    let reason = "eof";
    try {
      await (handler ?? echoHandler(options.cpuMs))(session);
    } catch (error) {
      reason = closeReason(error);
    }
    if (session.signal.aborted) reason = String(session.signal.reason);
    session.close();
    this.#active.delete(session);
    this.#idleMarks.delete(session);
    if (log.verbose) {
      const ms = performance.now() - session.started;
      log.event(
        "closed",
        `#${session.id} ${session.client} closed (${reason}): ${
          formatBytes(session.bytesIn)
        } in, ${formatBytes(session.bytesOut)} out, ${formatMs(ms)}`,
        {
          id: session.id,
          client: session.client,
          reason,
          bytesIn: session.bytesIn,
          bytesOut: session.bytesOut,
          ms: Math.round(ms * 10) / 10,
        },
      );
    }
    this.#slotWaiters.shift()?.();
    if (this.#active.size === 0) {
      this.#drained.splice(0).forEach((resolve) => resolve());
    }
  }

  async stopAccepting(): Promise<void> {
    this.#stopping = true;
    try {
      this.listener.close();
    } catch { /* already closed */ }
    this.#slotWaiters.splice(0).forEach((resolve) => resolve());
    await this.#accepting?.catch(() => {});
  }

  shutdown(why: string): Promise<void> {
    if (this.#shutdown) {
      this.#endAll("shutdown");
      return this.#shutdown;
    }
    this.#stopping = true;
    try {
      this.listener.close();
    } catch { /* already closed */ }
    this.#slotWaiters.splice(0).forEach((resolve) => resolve());
    this.#shutdown = this.#drain(why);
    return this.#shutdown;
  }

  async #drain(why: string): Promise<void> {
    const { log, options } = this;
    // close() only cancels a pending accept: the socket is released once that
    // op settles, so "stopping" is announced when new clients really are refused.
    await this.#accepting?.catch(() => {});
    const waiting = this.#active.size;
    log.event(
      "stopping",
      waiting
        ? `stopping (${why}): ${waiting} client(s) get ${options.grace} s to finish`
        : `stopping (${why})`,
      { reason: why, clients: waiting, grace: options.grace },
      true,
    );
    const allDone = () =>
      this.#active.size === 0
        ? Promise.resolve()
        : new Promise<void>((resolve) => this.#drained.push(resolve));
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      allDone(),
      new Promise<void>((resolve) =>
        timer = setTimeout(resolve, options.grace * 1000)
      ),
    ]);
    clearTimeout(timer);
    this.#endAll("shutdown");
    await allDone();
    await this.start.onStop?.();
    log.event("stopped", "stopped", {}, true);
  }

  #endAll(reason: string): void {
    for (const session of this.#active) session.end(reason);
  }

  async #stopAndExit(signal: string): Promise<void> {
    await this.shutdown(signal);
    Deno.exit(0);
  }

  #watchIdle(idleMs: number): void {
    // One sweep for all clients: the hot path only counts bytes, which it does
    // anyway, so an unused or idle-free timeout costs nothing per chunk.
    const tick = Math.min(1000, Math.max(20, idleMs / 10));
    const timer = setInterval(() => {
      const now = performance.now();
      for (const session of this.#active) {
        const moved = session.bytesIn + session.bytesOut;
        const mark = this.#idleMarks.get(session);
        if (!mark || mark.moved !== moved) {
          this.#idleMarks.set(session, {
            moved,
            at: mark ? now : session.started,
          });
        } else if (now - mark.at >= idleMs) {
          session.end("idle timeout");
        }
      }
    }, tick);
    Deno.unrefTimer(timer);
  }
}

function clientName(conn: Deno.Conn, id: number): string {
  const addr = conn.remoteAddr;
  // Unix clients are usually unnamed; the session number tells them apart.
  if (addr.transport === "unix") {
    return addr.path ? `unix:${addr.path}` : `unix#${id}`;
  }
  return formatAddr(addr);
}

function setSocketOptions(conn: Deno.Conn, options: ServerOptions): void {
  if (conn.remoteAddr.transport !== "tcp") return;
  const tcp = conn as Deno.TcpConn;
  if (options.nodelay) tcp.setNoDelay(true);
  if (options.keepalive) tcp.setKeepAlive(true);
}

function formatMs(ms: number): string {
  return ms < 1000 ? `${ms.toFixed(1)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

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
}

/**
 * Starts `script` again in a child process, in the role that `roleArgs`
 * select: `deno run --no-prompt --no-config DENO_FLAGS SCRIPT ROLE_ARGS...`
 * with this process's own deno executable. Deno cannot fork(), so this is how
 * a script gets a copy of itself in another process.
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
  roleArgs: string[],
  options: ChildRoleOptions = {},
): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      "--no-config",
      ...(options.denoFlags ?? []),
      script,
      ...roleArgs,
    ],
    stdin: options.stdin ?? "piped",
    stdout: options.stdout ?? "piped",
    stderr: options.stderr ?? "piped",
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

// ---------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------

/** The signals that ask a server to stop gracefully. */
export const SHUTDOWN_SIGNALS = ["SIGINT", "SIGTERM"] as const;

/**
 * Calls `stop(signal, count)` on every SIGINT or SIGTERM, `count` being how
 * many have arrived so far (a second Ctrl-C usually means "now"). Registered
 * before anything is printed, so that no signal finds the default action
 * (death) once a parent or test has seen the banner.
 */
export function onShutdownSignal(
  stop: (signal: string, count: number) => void,
): void {
  let count = 0;
  for (const signal of SHUTDOWN_SIGNALS) {
    Deno.addSignalListener(signal, () => stop(signal, ++count));
  }
}
