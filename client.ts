#!/usr/bin/env -S deno run --allow-net --allow-read --allow-write --unstable-net
/**
 * Echo client: talk to an echo server by hand, check it once, or load it.
 *
 * Interactive (the default) is `nc -N`: stdin goes to the server and its echo
 * to stdout, byte for byte; at the end of stdin the client half-closes and
 * exits once the server has closed. `--udp` sends a datagram per line.
 * `--message` checks a server once. Load mode runs N connections that each
 * send a request and check its whole echo, M times or for a duration, and
 * reports rates, latencies and what went wrong (load.ts, which bench.ts uses).
 *
 * Run:  deno run -A client.ts 8080                       (type; Ctrl-D ends)
 * Try:  deno run -A client.ts 8080 --message hello
 *       deno run -A client.ts 8080 --connections 50 --requests 2000 --size 64
 *       deno run -A client.ts 8080 --connections 20 --duration 5 --new-connection
 *       deno run -A client.ts 8080 --udp --connections 8 --requests 1000
 *
 * docs/client.md has the measurements and the design of the load engine.
 *
 * Copy with: lib/ (the folder, as it is)
 * Flags without deno.json: the shebang's (--unstable-net for --udp;
 * --allow-read/--allow-write for --unix). MIT licensed; see LICENSE.
 */
import { lookup } from "node:dns/promises";
import {
  fail,
  numberOption,
  parseCommandLine,
  unbracket,
  usageError,
} from "./lib/cli.ts";
import { openFileLimit } from "./lib/fd_limit.ts";
import { bindAddressFor, RECEIVE_BUDGET } from "./lib/load/lanes.ts";
import { listenDatagramOrExit } from "./lib/listen.ts";
import {
  DEFAULT_UDP_TIMEOUT_MS,
  type Failures,
  type LoadOptions,
  type LoadReport,
  MAX_DATAGRAM,
  receiveBytes,
  runLoad,
  type Target,
} from "./lib/load/load.ts";
import { formatAddr } from "./lib/log.ts";
import { writeAll } from "./lib/echo.ts";
import { pipe } from "./lib/relay.ts";

const SCRIPT = "client.ts";
const DEFAULT_TIMEOUT_MS = 5000;
const DEFAULT_LOAD_TIMEOUT_MS = 10_000;

const USAGE = `usage: deno run -A client.ts [HOST] PORT [options]
       deno run -A client.ts --unix PATH [options]

Echo client: interactive (stdin to the server, its echo to stdout), one-shot
check, or load generator.

  HOST                 server address (default 127.0.0.1)
  PORT                 server port, 1 to 65535
  --unix PATH          connect to a Unix domain socket instead
  --udp                send datagrams: one per stdin line, or per request
  --timeout MS         how long to wait, 1 to 86400000: for a connect, an
                       echo, and interactive, for the server after the end of
                       stdin (default 5000); with --udp 1000 per datagram;
                       under a TCP load 10000 per request
  -h, --help           show this help

one-shot:
  --message TEXT       send TEXT, print the echo; exit 0 if it matches, 1 if not

load mode (any of these selects it):
  --connections N      parallel connections, or UDP senders, 1 to 10000
                       (default 1)
  --requests M         requests per connection, 1 to 1000000000 (default 1000)
  --duration SECONDS   send requests for this long instead of M each, 0.001
                       to 86400
  --size BYTES         bytes per request, 1 to 67108864; with --udp 0 to 65507
                       (default 64); memory: SIZE once, plus receive buffers
                       of at most 64 MiB in all (--udp: SIZE + 1 per sender)
  --new-connection     connect afresh for every request (the per-client cost)
  --json               print the report as one JSON object

Before a load, one message must come back within the timeout.

Exit status: 0 ok; 1 refused, unknown host, timeout, echo mismatch or errors
under load (lost datagrams are counted, not fatal); 2 bad arguments. Ctrl-C
ends a load and prints its report (exit 0 unless it found errors); a second
Ctrl-C exits 130 at once.`;

const LOAD_NUMBERS = ["connections", "requests", "duration", "size"];

/** What the command line asks for. */
type Command =
  | { mode: "interactive"; target: Target; timeoutMs?: number }
  | { mode: "message"; target: Target; timeoutMs?: number; message: string }
  | { mode: "load"; load: LoadOptions; json: boolean };

async function parseClientArgs(args: string[]): Promise<Command> {
  const fault = (reason: string): never => usageError(SCRIPT, reason, USAGE);
  const { values, positionals } = await parseCommandLine(
    args,
    {
      unix: { type: "string" },
      udp: { type: "boolean" },
      timeout: { type: "string" },
      message: { type: "string" },
      connections: { type: "string" },
      requests: { type: "string" },
      duration: { type: "string" },
      size: { type: "string" },
      "new-connection": { type: "boolean" },
      json: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
    SCRIPT,
    USAGE,
  );
  const number = (name: string, min: number, max: number, integer = true) =>
    numberOption(values[name], `--${name}`, { min, max, integer }, fault);
  const udp = values.udp === true;
  let target: Target = { host: "", port: 0, unix: values.unix as string };
  if (values.unix !== undefined) {
    if (positionals.length) fault("--unix and HOST/PORT exclude each other");
    if (values.unix === "") fault("--unix needs a path");
    if (udp) fault("--udp and --unix exclude each other");
  } else {
    if (positionals.length === 0) fault("PORT is required");
    if (positionals.length > 2) {
      fault(`expected [HOST] PORT, got ${positionals.join(" ")}`);
    }
    const limits = { min: 1, max: 65535, integer: true };
    const port = numberOption(positionals.at(-1), "PORT", limits, fault)!;
    const host = unbracket(positionals.length === 2 ? positionals[0] : "");
    if (positionals.length === 2 && host === "") fault("HOST is empty");
    target = { host: host || "127.0.0.1", port, udp };
  }
  const timeoutMs = number("timeout", 1, 86_400_000, false);
  const loadMode = values["new-connection"] ||
    LOAD_NUMBERS.some((name) => values[name] !== undefined);
  if (values.json && (values.message !== undefined || !loadMode)) {
    fault("--json applies to load mode only");
  }
  if (values.message !== undefined) {
    if (loadMode) fault("--message and load options exclude each other");
    const message = values.message as string;
    return { mode: "message", target, timeoutMs, message };
  }
  if (!loadMode) return { mode: "interactive", target, timeoutMs };
  if (values.requests !== undefined && values.duration !== undefined) {
    fault("--requests and --duration exclude each other");
  }
  if (udp && values["new-connection"]) {
    fault("--new-connection does not apply to --udp");
  }
  const duration = number("duration", 0.001, 86_400, false);
  const requests = number("requests", 1, 1e9);
  const maxSize = udp ? MAX_DATAGRAM : 64 * 1024 ** 2;
  const connections = number("connections", 1, 10_000) ?? 1;
  const size = number("size", udp ? 0 : 1, maxSize) ?? 64;
  // Each UDP sender receives into a buffer of its own, whole datagrams: the
  // one product that could outgrow memory (TCP's buffers shrink instead).
  const buffers = receiveBytes(connections, size, udp);
  if (buffers > RECEIVE_BUDGET) {
    fault(
      `--connections ${connections} x --size ${size} needs ${
        mib(buffers)
      } of datagram buffers (${size + 1} B per sender), more than the ${
        mib(RECEIVE_BUDGET)
      } bound`,
    );
  }
  return {
    mode: "load",
    json: values.json === true,
    load: {
      ...target,
      connections,
      requests: requests ?? (duration === undefined ? 1000 : undefined),
      duration,
      size,
      newConnection: values["new-connection"] === true,
      // A server that stops answering mid-run must not hold the client
      // forever: a request unanswered this long counts as an error.
      timeoutMs: timeoutMs ?? (udp ? undefined : DEFAULT_LOAD_TIMEOUT_MS),
    },
  };
}

/** Bytes in MiB, for messages: `62.5 MiB`. */
function mib(bytes: number): string {
  return `${Math.round(bytes / 1024 ** 2 * 10) / 10} MiB`;
}

/** How the target reads in messages: `127.0.0.1:8080`, `unix:/tmp/e.sock`. */
function targetName(target: Target): string {
  if (target.unix !== undefined) return `unix:${target.unix}`;
  const transport = target.udp ? "udp" : "tcp";
  return formatAddr({ transport, hostname: target.host, port: target.port });
}

/** Says why a connect or a send failed, in a few words. */
function connectErrorText(error: unknown, timeoutMs: number): string {
  if (error instanceof Deno.errors.ConnectionRefused) {
    return "connection refused";
  }
  if (error instanceof Deno.errors.NotFound) return "no such socket";
  if (
    error instanceof Deno.errors.TimedOut ||
    (error instanceof DOMException &&
      (error.name === "AbortError" || error.name === "TimeoutError"))
  ) return `timed out after ${timeoutMs} ms`;
  if (/lookup|resolve|getaddrinfo|name or service/i.test(String(error))) {
    return "unknown host";
  }
  if (error instanceof Deno.errors.NotCapable) {
    return "not permitted by Deno (run with --allow-net, or --allow-read --allow-write for --unix)";
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return "permission denied";
  }
  const message = error instanceof Error ? error.message : String(error);
  return message.replace(/ \(os error \d+\)$/, "").toLowerCase();
}

/** What ended a connection that had been made, as a load failure names it. */
function droppedText(error: unknown, timeoutMs: number): string {
  if (
    error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.ConnectionAborted ||
    error instanceof Deno.errors.BrokenPipe
  ) return "reset by the server after connecting";
  if (error instanceof Deno.errors.UnexpectedEof) {
    return "closed by the server before echoing";
  }
  return `failed: ${connectErrorText(error, timeoutMs)}`;
}

/** Connects to `target` or exits 1 with one line saying why. */
async function connectOrExit(
  target: Target,
  timeoutMs: number,
): Promise<Deno.Conn> {
  try {
    if (target.unix !== undefined) {
      return await Deno.connect({ transport: "unix", path: target.unix });
    }
    return await Deno.connect({
      hostname: target.host,
      port: target.port,
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (error) {
    const where = targetName(target);
    fail(
      SCRIPT,
      error instanceof Deno.errors.ConnectionReset
        ? `connection to ${where} ${droppedText(error, timeoutMs)}`
        : `cannot connect to ${where}: ${connectErrorText(error, timeoutMs)}`,
    );
  }
}

/** A UDP socket for talking to `target`, and the target's address. */
async function datagramSocketOrExit(
  target: Target,
): Promise<{ socket: Deno.DatagramConn; to: Deno.NetAddr }> {
  let hostname = target.host;
  if (!/^[\d.]+$|:/.test(hostname)) { // a name: its address, IPv4 first
    const found = await lookup(hostname, { all: true }).catch(() =>
      fail(SCRIPT, `cannot reach ${targetName(target)}: unknown host`)
    );
    hostname = (found.find((each) => each.family === 4) ?? found[0]).address;
  }
  const socket = listenDatagramOrExit({
    script: SCRIPT,
    host: bindAddressFor(hostname),
    port: 0,
  });
  return { socket, to: { transport: "udp", hostname, port: target.port } };
}

/**
 * Waits for the next datagram from `to` on `socket`, or exits 1 when none
 * comes within `timeoutMs`.
 */
async function answerOrExit(
  socket: Deno.DatagramConn,
  to: Deno.NetAddr,
  target: Target,
  timeoutMs: number,
): Promise<Uint8Array> {
  const buffer = new Uint8Array(MAX_DATAGRAM + 1024);
  const timer = setTimeout(() => {
    fail(SCRIPT, `no answer from ${targetName(target)} within ${timeoutMs} ms`);
  }, timeoutMs);
  try {
    for (;;) {
      const [data, from] = await socket.receive(buffer);
      const source = from as Deno.NetAddr;
      if (source.port === to.port && source.hostname === to.hostname) {
        return data.slice();
      }
    }
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Sends `sent` to `target` and returns what came back, and the address that
 * answered: one datagram (UDP); everything until the server closes after our
 * half-close (`whole`); or as many bytes as were sent. Exits 1 with one line
 * saying what the server did instead: nothing within `timeoutMs`, a close or
 * a reset.
 */
async function exchangeOrExit(
  target: Target,
  sent: Uint8Array,
  timeoutMs: number,
  whole: boolean,
): Promise<[echoed: Uint8Array, address: string]> {
  if (target.udp) {
    const { socket, to } = await datagramSocketOrExit(target);
    await socket.send(sent, to);
    const answer = await answerOrExit(socket, to, target, timeoutMs);
    socket.close();
    return [answer, to.hostname];
  }
  const conn = await connectOrExit(target, timeoutMs);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    conn.close();
  }, timeoutMs);
  try {
    const sending = writeAll(conn, sent).then(() =>
      whole ? conn.closeWrite() : undefined
    );
    sending.catch(() => {}); // the read below fails the same way
    let echoed = new Uint8Array(sent.length);
    if (whole) echoed = await new Response(conn.readable).bytes();
    for (let got = 0; !whole && got < sent.length;) {
      const n = await conn.read(echoed.subarray(got));
      if (n === null) throw new Deno.errors.UnexpectedEof();
      got += n;
    }
    // Read to its end, the connection is closed: a send still under way fails
    // then, and what came back (compared by the caller) says what happened.
    if (!whole) await sending;
    return [echoed, (conn.remoteAddr as Deno.NetAddr).hostname ?? ""];
  } catch (error) {
    const where = targetName(target);
    return fail(
      SCRIPT,
      timedOut
        ? `no ${
          whole ? "complete " : ""
        }echo from ${where} within ${timeoutMs} ms`
        : `connection to ${where} ${droppedText(error, timeoutMs)}`,
    );
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the timer, or at the end of its readable */ }
  }
}

/** Writes all of `bytes` to stdout; exits 0 once stdout's reader has gone. */
async function toStdout(bytes: Uint8Array): Promise<void> {
  try {
    await writeAll(Deno.stdout, bytes);
  } catch {
    Deno.exit(0);
  }
}

/**
 * Interactive TCP or Unix: stdin to the server, the server to stdout, until
 * the server closes (after our half-close at stdin EOF, or on its own). A
 * server silent for `timeoutMs` after stdin's end is given up on.
 */
async function interactive(
  target: Target,
  timeoutMs = DEFAULT_TIMEOUT_MS,
): Promise<void> {
  const conn = await connectOrExit(target, timeoutMs);
  const where = targetName(target);
  let stdinEnded = false;
  let giveUp: ReturnType<typeof setTimeout> | undefined;
  const waitForServer = () => {
    clearTimeout(giveUp);
    if (!stdinEnded) return; // a person may take their time to type
    giveUp = setTimeout(() => {
      fail(
        SCRIPT,
        `${where} neither answered nor closed within ${timeoutMs} ms after the end of input`,
      );
    }, timeoutMs);
  };
  const sending = (async () => {
    // Then a half-close, like `nc -N`: the server sees EOF, echoes the rest.
    await pipe(Deno.stdin, conn);
    stdinEnded = true;
    waitForServer();
  })();
  sending.catch(() => {}); // a failed send (the server went away) shows below
  const stdout = {
    write: async (bytes: Uint8Array) => {
      waitForServer(); // an answer: the server may take its time again
      await toStdout(bytes);
      return bytes.length;
    },
    closeWrite: () => Promise.resolve(),
  };
  try {
    await pipe(conn, stdout, () => {}, false);
  } catch (error) {
    fail(SCRIPT, `connection to ${where} ${droppedText(error, 0)}`);
  }
  if (!stdinEnded) {
    console.error(`${SCRIPT}: the server closed the connection`);
  }
  Deno.exit(0);
}

/** Interactive UDP: each stdin line is one datagram; each answer is printed. */
async function interactiveDatagrams(
  target: Target,
  timeoutMs = DEFAULT_UDP_TIMEOUT_MS,
): Promise<void> {
  const { socket, to } = await datagramSocketOrExit(target);
  for await (const line of stdinLines()) {
    if (line.length > MAX_DATAGRAM) {
      fail(
        SCRIPT,
        `a line of ${line.length} bytes does not fit in a datagram (at most ${MAX_DATAGRAM})`,
      );
    }
    await socket.send(line, to).catch((error) =>
      fail(
        SCRIPT,
        `cannot send to ${targetName(target)}: ${connectErrorText(error, 0)}`,
      )
    );
    await toStdout(await answerOrExit(socket, to, target, timeoutMs));
  }
  socket.close();
  Deno.exit(0);
}

/** Stdin split after each newline, the newline kept; the last line may lack one. */
async function* stdinLines(): AsyncGenerator<Uint8Array> {
  const chunk = new Uint8Array(64 * 1024);
  let pending = new Uint8Array(0);
  for (let n; (n = await Deno.stdin.read(chunk)) !== null;) {
    const joined = new Uint8Array(pending.length + n);
    joined.set(pending);
    joined.set(chunk.subarray(0, n), pending.length);
    let start = 0;
    for (let end; (end = joined.indexOf(0x0a, start)) >= 0; start = end + 1) {
      yield joined.slice(start, end + 1);
    }
    pending = joined.slice(start);
  }
  if (pending.length) yield pending;
}

/** One-shot: send the message, print the echo, exit 0 if it matches. */
async function oneShot(
  target: Target,
  message: string,
  timeoutMs?: number,
): Promise<void> {
  const sent = new TextEncoder().encode(message);
  if (target.udp && sent.length > MAX_DATAGRAM) {
    fail(
      SCRIPT,
      `the message does not fit in a datagram (at most ${MAX_DATAGRAM} bytes)`,
    );
  }
  const wait = timeoutMs ??
    (target.udp ? DEFAULT_UDP_TIMEOUT_MS : DEFAULT_TIMEOUT_MS);
  const [echoed] = await exchangeOrExit(target, sent, wait, true);
  await toStdout(echoed);
  await toStdout(new Uint8Array([0x0a]));
  const length = Math.min(echoed.length, sent.length);
  let differ = echoed.findIndex((byte, i) => i < length && byte !== sent[i]);
  if (differ < 0 && echoed.length < sent.length) {
    // The same words as load mode's for a server that closes early.
    fail(
      SCRIPT,
      `connection to ${targetName(target)} closed by the server before ` +
        `echoing: ${echoed.length} bytes back for ${sent.length} sent`,
    );
  }
  if (differ < 0 && echoed.length !== sent.length) differ = length;
  if (differ >= 0) {
    fail(
      SCRIPT,
      `the echo differs from the message: ${echoed.length} bytes back ` +
        `for ${sent.length} sent, first difference at byte ${differ}`,
    );
  }
  Deno.exit(0);
}

/** Load mode: run, print the report, exit 1 on mismatches or errors. */
async function load(options: LoadOptions, json: boolean): Promise<void> {
  const where = targetName(options);
  // One round trip first, so that a server that is not there, or does not
  // echo, is one line now, not thousands of counted errors or a long wait.
  const timeoutMs = options.timeoutMs ??
    (options.udp ? DEFAULT_UDP_TIMEOUT_MS : DEFAULT_TIMEOUT_MS);
  const probe = new TextEncoder().encode("probe\n");
  // Its address is the one that answered: the load asks no name service.
  const [, host] = await exchangeOrExit(options, probe, timeoutMs, false);
  const room = connectionRoom();
  const stop = new AbortController();
  let interrupts = 0;
  Deno.addSignalListener("SIGINT", () => {
    // The first Ctrl-C ends the run and reports it; the second exits now.
    if (++interrupts > 1) Deno.exit(130);
    stop.abort();
  });
  const progress = Deno.stderr.isTerminal() ? progressLine(options) : undefined;
  const report = await runLoad({
    ...options,
    host,
    signal: stop.signal,
    onProgress: progress,
  });
  if (progress) progress(-1);
  console.log(
    json ? JSON.stringify(report) : formatReport(options, report, where),
  );
  if (report.mismatches > 0) {
    fail(
      SCRIPT,
      `${report.mismatches} of ${report.requests} echoes differed from what was sent`,
    );
  }
  if (report.errors > 0) {
    fail(
      SCRIPT,
      `${report.errors} requests failed: ${
        failuresText(report.failures, timeoutMs, room)
      }`,
    );
  }
  if (report.requests === 0 && !stop.signal.aborted) {
    fail(
      SCRIPT,
      options.udp
        ? `no answer from ${where}: all ${report.lost} datagrams lost`
        : `no request completed against ${where}`,
    );
  }
  Deno.exit(0);
}

/**
 * The open file limit (`ulimit -n`) and how many more sockets it leaves room
 * for now, when /proc tells (with -A only, as openFileLimit says).
 */
function connectionRoom(): { limit: number; room: number } | undefined {
  const limit = openFileLimit();
  if (limit === undefined) return undefined;
  try {
    const open = [...Deno.readDirSync("/proc/self/fd")].length;
    return { limit, room: Math.max(0, limit - open) };
  } catch {
    return undefined;
  }
}

/** The failures of a load, by cause, in words. */
function failuresText(
  failures: Failures,
  timeoutMs: number,
  files?: { limit: number; room: number },
): string {
  const fdLimit = files
    ? `ulimit -n ${files.limit} allows about ${files.room} connections`
    : "see ulimit -n";
  return [
    failures.refused && `${failures.refused} connects refused`,
    failures.reset && `${failures.reset} reset by the server after connecting`,
    failures.closed && `${failures.closed} closed by the server before echoing`,
    failures.timedOut &&
    `${failures.timedOut} with no echo within ${timeoutMs} ms`,
    failures.tooManyFiles &&
    `${failures.tooManyFiles} with too many open files (${fdLimit})`,
    failures.other && `${failures.other} failed otherwise`,
  ].filter(Boolean).join(", ");
}

/**
 * The live progress line on a terminal's stderr: called with the requests
 * done so far, and with -1 to clear it.
 */
function progressLine(options: LoadOptions): (done: number) => void {
  const started = performance.now();
  let last = { at: started, done: 0 };
  const total = options.connections * (options.requests ?? 0);
  return (done) => {
    let text = "\r\x1b[K";
    if (done >= 0) {
      const now = performance.now();
      const rate = (done - last.done) / ((now - last.at) / 1000);
      last = { at: now, done };
      const of = options.duration === undefined
        ? `${Math.floor((done / total) * 100)}%`
        : `${((now - started) / 1000).toFixed(1)}/${options.duration} s`;
      text += `${done} requests (${of}), ${Math.round(rate)}/s`;
    }
    try {
      Deno.stderr.writeSync(new TextEncoder().encode(text));
    } catch { /* stderr gone */ }
  };
}

/**
 * The report for people. Sizes are in bytes and rates in MB/s of 10^6 bytes,
 * so that size times requests per second gives the rate shown.
 */
function formatReport(
  options: LoadOptions,
  report: LoadReport,
  where: string,
): string {
  const { latencyMs: l } = report;
  const kind = options.udp
    ? "UDP"
    : options.newConnection
    ? "a new connection per request"
    : "persistent connections";
  const perRequest = report.requests
    ? ` (${(report.cpuMs * 1000 / report.requests).toFixed(1)} µs per request)`
    : "";
  return [
    `${report.connections} x ${
      report.size.toLocaleString("en-US")
    } B requests to ${where} (${kind}): ${report.requests} in ${
      report.seconds.toFixed(3)
    } s`,
    `  requests/s   ${report.requestsPerSecond}`,
    `  MB/s         ${report.mbPerSecond} (payload each way; 1 MB = 1,000,000 B)`,
    `  latency      p50 ${l.p50} ms, p90 ${l.p90} ms, p99 ${l.p99} ms, max ${l.max} ms`,
    `  errors       ${report.errors}`,
    `  mismatches   ${report.mismatches}`,
    ...(report.lost === undefined ? [] : [`  lost         ${report.lost}`]),
    `  client CPU   ${report.cpuMs} ms${perRequest}`,
  ].join("\n");
}

if (import.meta.main) {
  // This client speaks no TLS, but Deno's own update check (500 ms into a
  // run, when due) reads NODE_EXTRA_CA_CERTS, and warns when it cannot, as
  // at the open file limit: noise that hides the real cause. (Without env
  // permission, as by the shebang, it stays; DENO_NO_UPDATE_CHECK=1 helps.)
  const extraCerts = { name: "env", variable: "NODE_EXTRA_CA_CERTS" } as const;
  if (Deno.permissions.querySync(extraCerts).state === "granted") {
    Deno.env.delete(extraCerts.variable);
  }
  const command = await parseClientArgs(Deno.args);
  if (command.mode === "load") await load(command.load, command.json);
  else if (command.mode === "message") {
    await oneShot(command.target, command.message, command.timeoutMs);
  } else if (command.target.udp) {
    await interactiveDatagrams(command.target, command.timeoutMs);
  } else await interactive(command.target, command.timeoutMs);
}
