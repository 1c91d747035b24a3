/**
 * The command line of every script (SPEC.md): one parser, one way to read a
 * number, one way to say no: one line naming what is wrong, the usage, exit 2.
 *
 * @module
 */
// node:util is imported only to parse: loading it costs every child and
// Worker ~13 ms of start-up (measured), and those parse no command line.
import type { ParseArgsOptionsConfig } from "node:util";
import { capToFileLimit, type FdCost, poolOverFileLimit } from "./fd_limit.ts";

/** The echo service's customary unprivileged port (port 7 needs root). */
export const DEFAULT_PORT = 8080;

/** The longest time any option may name: one day, in seconds. */
export const MAX_SECONDS = 86_400;

/** Everything a TCP echo server takes from its command line. */
export interface ServerOptions {
  /** The script's file name, for error lines: `"evented.ts"`. */
  script: string;
  /** The model's name, for the banner: `"evented"`. */
  model: string;
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
  /** Seconds that connected clients get to finish after a stop signal. */
  grace: number;
  /** Set TCP_NODELAY on every client socket. */
  nodelay: boolean;
  /** Set SO_KEEPALIVE on every client socket. */
  keepalive: boolean;
  /** Log one JSON object per line. */
  json: boolean;
  /** Log only the banner, shutdown and errors. */
  quiet: boolean;
  /** The model's own options (`--pool`, `--exec`), as declared in its spec. */
  extra: Record<string, string | number | undefined>;
  /** The log line saying `--max-conns` was lowered to fit `ulimit -n`. */
  fdCapNote?: string;
}

/** One option of a model's own: a count in a range, or a string. */
export type ModelOption =
  | { type: "count"; min: number; max: number; usage: string }
  | { type: "string"; usage: string };

/** What a model script tells the shared command line about itself. */
export interface ModelSpec {
  /** File name, used in usage and error lines: `"evented.ts"`. */
  script: string;
  /** One line saying what the model is, shown under the usage line. */
  summary: string;
  /** `--max-conns` when not given; may depend on the model's own options. */
  defaultMaxConns: number | ((extra: ServerOptions["extra"]) => number);
  /** When true, `--max-conns` cannot be changed (the iterative model). */
  fixedMaxConns?: boolean;
  /** Why the model cannot listen on a Unix socket, if it cannot. */
  noUnix?: string;
  /** A datagram server (udp_echo.ts): PORT, `--host`, `--json`, `--quiet`. */
  datagram?: boolean;
  /** The model's own options; the usage text says `--NAME` + `usage`. */
  options?: Record<string, ModelOption>;
  /** The deno flags a run without deno.json needs, for the usage line. */
  denoFlags?: string;
  /** The file descriptors it costs, to fit `--max-conns` to `ulimit -n`. */
  fds?: (extra: ServerOptions["extra"]) => FdCost;
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

/** The largest `--max-conns`: far more than any model here can hold. */
const MAX_CONNS = 1_000_000;
/** The most CPU one chunk may ask for: a minute. */
const MAX_CPU_MS = 60_000;

/** The options of a datagram server: a subset of {@linkcode COMMON_OPTIONS}. */
const DATAGRAM_OPTIONS = ["host", "json", "quiet", "help"];

/** The usage text of a server script. */
export function serverUsage(spec: ModelSpec): string {
  const maxConns = typeof spec.defaultMaxConns === "function"
    ? "default: see below"
    : `${spec.fixedMaxConns ? "always" : "default"} ${spec.defaultMaxConns}`;
  const own = Object.entries(spec.options ?? {}).map(([name, option]) =>
    `  --${name} ${option.usage}`
  );
  const unix = spec.noUnix
    ? ""
    : "  --unix PATH             listen on a Unix domain socket instead of TCP\n";
  const connections = spec.datagram ? "" : `${unix}\
  --max-conns N           clients served at once; the rest wait (${maxConns})
  --idle-timeout SECONDS  close a client when no byte has moved for that long
                          (0 to ${MAX_SECONDS}; default 0, never)
  --cpu-ms N              burn N ms of CPU per chunk received before echoing it
                          (0 to ${MAX_CPU_MS})
  --grace SECONDS         time clients get to finish on SIGINT, SIGTERM or SIGHUP
                          (0 to ${MAX_SECONDS}; default 5)
  --nodelay               set TCP_NODELAY on client sockets
  --keepalive             set SO_KEEPALIVE on client sockets
`;
  const [flags, port] = [spec.denoFlags ?? "-A", spec.datagram ? "UDP" : "TCP"];
  return `usage: deno run ${flags} ${spec.script} [PORT] [options]

${spec.summary}

  PORT                    ${port} port, 0 to 65535; 0 picks a free one (default ${DEFAULT_PORT})
  --host ADDR             address to bind (default 127.0.0.1; 0.0.0.0 or :: for all)
${connections}\
  --json                  log one JSON object per line
  --quiet                 log only the banner, shutdown and errors
  -h, --help              show this help
${own.length ? `\n${own.join("\n")}\n` : ""}`;
}

/** Prints `script: reason` and the usage on stderr, and exits 2. */
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

/** Parses `args` strictly, or exits 2; `--help` prints the usage, exit 0. */
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

const WHOLE_NUMBER = /^[0-9]+$/;
const DECIMAL = /^[0-9]+(\.[0-9]+)?$/;

/**
 * Reads a number option: undefined when absent, else plain decimal digits
 * (with a fraction unless `integer`) within `[min, max]`; `0x50`, `1e3`,
 * `+81`, ` 80` and, as a count, `1.0` go to `fault` with the range.
 */
export function numberOption(
  value: string | boolean | undefined,
  name: string,
  limits: { min: number; max: number; integer?: boolean },
  fault: (reason: string) => never,
): number | undefined {
  if (value === undefined) return undefined;
  const text = String(value);
  const form = limits.integer ? WHOLE_NUMBER : DECIMAL;
  const number = form.test(text) ? Number(text) : NaN;
  if (!(number >= limits.min && number <= limits.max)) {
    const kind = limits.integer ? "a whole number" : "a number";
    fault(
      `${name} must be ${kind} from ${limits.min} to ${limits.max}, not "${text}"`,
    );
  }
  return number;
}

/** Accepts `::1` as well as `[::1]` for IPv6 literals. */
export function unbracket(host: string): string {
  return host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
}

/**
 * Where a server listens: at most one PORT (0 to 65535, default 8080) and
 * `--host` (default 127.0.0.1, IPv6 with or without brackets), else `fault`.
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

/**
 * Exits 1 when `ulimit -n` cannot hold `size` workers (fd_limit.ts), or 2
 * when `--max-conns` is less than `size` (`what`: `--pool 4`, `4 workers`).
 */
export function refuseFewerConns(
  spec: ModelSpec,
  options: ServerOptions,
  what: string,
  size: number,
): void {
  const cost = spec.fds?.(options.extra) ?? {};
  const tooMany = poolOverFileLimit(cost, options, size);
  if (tooMany) fail(spec.script, tooMany);
  if (options.maxConns >= size) return;
  const why = `--max-conns ${options.maxConns} is less than ${what}`;
  usageError(spec.script, why, serverUsage(spec));
}

/** Parses a server's command line (SPEC.md) or exits 2 saying why. */
export async function parseServerArgs(
  args: string[],
  spec: ModelSpec,
): Promise<ServerOptions> {
  const usage = serverUsage(spec);
  const fault = (reason: string): never =>
    usageError(spec.script, reason, usage);
  const own = spec.options ?? {};
  const common = Object.entries(COMMON_OPTIONS)
    .filter(([name]) => !spec.datagram || DATAGRAM_OPTIONS.includes(name));
  const ownOptions = Object.keys(own).map((name) => [name, { type: "string" }]);
  const { values, positionals } = await parseCommandLine(
    args,
    Object.fromEntries([...common, ...ownOptions]),
    spec.script,
    usage,
  );
  const number = (name: string, min: number, max: number, integer = false) =>
    numberOption(values[name], `--${name}`, { min, max, integer }, fault);
  const { port, host } = listenAddress(positionals, values.host, fault);
  if (values.unix !== undefined) {
    if (spec.noUnix) fault(`--unix does not apply: ${spec.noUnix}`);
    if (values.host !== undefined) {
      fault("--unix and --host exclude each other");
    }
    if (positionals.length) fault("--unix and PORT exclude each other");
    if (values.unix === "") fault("--unix needs a path");
  }
  const extra: ServerOptions["extra"] = {};
  for (const [name, option] of Object.entries(own)) {
    extra[name] = option.type === "count"
      ? number(name, option.min, option.max, true)
      : values[name] as string | undefined;
  }
  const defaultMaxConns = typeof spec.defaultMaxConns === "function"
    ? spec.defaultMaxConns(extra)
    : spec.defaultMaxConns;
  const asked = number("max-conns", 1, MAX_CONNS, true) ?? defaultMaxConns;
  const model = spec.script.replace(/\.ts$/, "");
  if (spec.fixedMaxConns && asked !== defaultMaxConns) {
    fault(`--max-conns does not apply: ${model} serves one client at a time`);
  }
  const { maxConns, note } = capToFileLimit(asked, spec.fds?.(extra) ?? {});
  return {
    script: spec.script,
    model,
    port,
    host,
    unix: values.unix as string | undefined,
    maxConns,
    idleTimeout: number("idle-timeout", 0, MAX_SECONDS) ?? 0,
    cpuMs: number("cpu-ms", 0, MAX_CPU_MS) ?? 0,
    grace: number("grace", 0, MAX_SECONDS) ?? 5,
    nodelay: values.nodelay === true,
    keepalive: values.keepalive === true,
    json: values.json === true,
    quiet: values.quiet === true,
    extra,
    fdCapNote: note,
  };
}
