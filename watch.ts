#!/usr/bin/env -S deno run -A
/**
 * Watch a running server: who accepts, who serves, and who waits.
 *
 * Every second it reads Linux's /proc (nothing is installed, nothing is asked
 * of the server) and redraws one screen: each listening socket with the
 * connections waiting in its accept queue (the kernel's backlog), the
 * server's processes and threads with their role, CPU and memory, and each
 * accepted client under the process that holds it, with the bytes queued
 * each way. It works on every script here and on any Linux server: a C
 * server from a course, `nc -l`.
 *
 * Run:  deno run -A watch.ts 8080        (or --unix PATH, or --pid PID)
 * Try:  iterative.ts 8080 and two `nc 127.0.0.1 8080`: one client served,
 *       one waiting in the backlog. Then prefork.ts --workers 2 (two
 *       sockets) and cluster.ts --workers 2 (one socket, two holders).
 *
 * Copy with: lib/ (the folder, as it is)
 * Flags without deno.json: -A, the only way Deno reads all of /proc.
 * MIT licensed; see LICENSE.
 */
import { fail, numberOption, parseCommandLine, usageError } from "./lib/cli.ts";
import { sleep } from "./lib/time.ts";
import { render } from "./lib/watch/screen.ts";
import { type Target, Watcher, WatchError } from "./lib/watch/snapshot.ts";

const USAGE =
  `usage: deno run -A watch.ts PORT | --unix PATH | --pid PID [options]

A live picture of a running server from /proc: its listening sockets and
their backlog, its processes and threads, and its clients.

  PORT                the TCP port the server listens on (1 to 65535)
  --unix PATH         the Unix socket the server listens on
  --pid PID           the server's process (and its children)
  --interval SECONDS  time between snapshots (0.1 to 3600; default 1)
  --once              print one snapshot and exit
  --json              each snapshot as one JSON object on one line
  -h, --help          show this help`;

const script = "watch.ts";
const fault = (reason: string): never => usageError(script, reason, USAGE);
const { values, positionals } = await parseCommandLine(
  Deno.args,
  {
    unix: { type: "string" },
    pid: { type: "string" },
    interval: { type: "string" },
    once: { type: "boolean" },
    json: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  },
  script,
  USAGE,
);
if (positionals.length > 1) fault(`expected one PORT, got ${positionals}`);
const port = numberOption(positionals[0], "PORT", {
  min: 1,
  max: 65535,
  integer: true,
}, fault);
const pid = numberOption(values.pid, "--pid", {
  min: 1,
  max: 4_194_304, // the kernel's pid_max limit
  integer: true,
}, fault);
if (values.unix === "") fault("--unix needs a path");
const targets = [port, values.unix, pid].filter((t) => t !== undefined);
if (targets.length !== 1) fault("name one of PORT, --unix PATH or --pid PID");
const intervalS = numberOption(values.interval, "--interval", {
  min: 0.1,
  max: 3600,
}, fault) ?? 1;
if (Deno.build.os !== "linux") {
  fail(script, `reads Linux's /proc, and this is ${Deno.build.os}`);
}

const target: Target = port !== undefined
  ? { port }
  : pid !== undefined
  ? { pid }
  : { unix: String(values.unix) };
let watcher: Watcher;
try {
  watcher = Watcher.open(target);
} catch (error) {
  if (!(error instanceof WatchError)) throw error;
  fail(script, error.message, error.code);
}

// A terminal gets the screen redrawn in place; a pipe or file, plain text.
const terminal = Deno.stdout.isTerminal() && !values.json;
for (;;) {
  const started = performance.now();
  const snapshot = watcher.snapshot();
  if (!snapshot) {
    print(
      values.json
        ? JSON.stringify({ exited: true, pid: watcher.root })
        : `the server (pid ${watcher.root}) has exited: nothing left to watch`,
    );
    Deno.exit(0);
  }
  if (values.json) print(JSON.stringify(snapshot));
  else {
    const screen = render(snapshot, intervalS, terminal ? columns() : 100);
    print(terminal ? `\x1b[H\x1b[2J${screen}` : `${screen}\n`);
  }
  if (values.once) break;
  // The interval runs from one snapshot's start to the next one's.
  await sleep(Math.max(0, intervalS * 1000 - (performance.now() - started)));
}

/**
 * Writes a line. A reader that has gone (`watch.ts 8080 | head`) ends us:
 * console.log would not tell (Deno 2.9.6 drops its write errors).
 */
function print(text: string): void {
  const bytes = new TextEncoder().encode(`${text}\n`);
  try {
    for (let off = 0; off < bytes.length;) {
      off += Deno.stdout.writeSync(bytes.subarray(off));
    }
  } catch {
    Deno.exit(0);
  }
}

/** The terminal's width, or 100 when it cannot tell. */
function columns(): number {
  try {
    return Deno.consoleSize().columns;
  } catch {
    return 100;
  }
}
