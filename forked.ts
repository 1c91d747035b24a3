#!/usr/bin/env -S deno run --allow-net --allow-read --allow-write --allow-run
/**
 * Process-per-client echo server: every client is served by a child process.
 *
 * The classic Unix server (CS:APP's `echoserverp.c`, inetd): accept, start a
 * child that serves the client, go back to accept, reap children as they
 * exit. A child that crashes, leaks or burns CPU harms only its own client,
 * and clients run on every core; the price is a process start per client and
 * a process' memory per connected client: fine for tens of clients, not for
 * tens of thousands.
 *
 * How this differs from C's fork(). Deno cannot fork() and cannot hand a
 * socket to a child, so:
 * - The child is a fresh `deno run forked.ts --child CPU_MS` (a hidden role
 *   of this script), not a copy of the parent: ~25 ms to start instead of
 *   ~0.2 ms, and nothing shared, permissions included: the child has none
 *   (no --allow-*, --no-prompt, --no-config), so the code that touches client
 *   bytes can open no file, socket or process.
 * - The child serves the client over its stdin and stdout, as inetd's do, and
 *   the parent relays the bytes between the connection and the child's pipes,
 *   with backpressure and half-close both ways: two more copies per byte.
 * - A child ends when its stdin closes, which is also what happens when the
 *   parent dies, even by SIGKILL (C would use prctl(PR_SET_PDEATHSIG)). Each
 *   child leads its own process group, so a Ctrl-C reaches only the parent,
 *   which drains, and terminating a child ends whatever it started too.
 *
 * `--exec "CMD ARG..."` is inetd mode: CMD runs per client (words split as sh
 * splits them, quotes honoured, no shell run), the connection as its stdin and
 * stdout, its stderr in the server's log under the child's pid.
 *
 * Run:  deno run -A forked.ts 8080
 *       deno run -A forked.ts 8080 --exec "tr a-z A-Z"
 * Try:  two `nc 127.0.0.1 8080`: the log names a child pid for each
 *       (`ps -o pid,args --ppid SERVER_PID`). With `--cpu-ms 200`, two
 *       clients typing at once are both answered after 200 ms: two cores.
 *       `kill -9 CHILD_PID` ends only that client. With --exec,
 *       `printf 'hello\n' | nc -N 127.0.0.1 8080` prints HELLO (tr answers at
 *       EOF: it buffers when its output is not a terminal); `--exec cat`
 *       echoes line by line.
 *
 * Measured here (2 shared cores, Deno 2.9.6): starting and reaping a child
 * costs ~25 ms, as much as a `deno` child running an empty module
 * (`/bin/true`: ~1 ms; in C, fork+exit+wait 0.23 ms, fork+exec of /bin/true
 * 0.75 ms), so a new client's first echo
 * comes ~24 ms after it connects (evented.ts: 0.6 ms). One client streams
 * ~280 MiB/s each way (evented.ts: ~1.1 GiB/s; `--exec cat`: ~430 MiB/s): the
 * parent's relay is the bottleneck. Each connected client holds a child of
 * ~11 MiB (PSS; 33 MiB RSS).
 */
import {
  describeExit,
  echo,
  forEachLine,
  parseServerArgs,
  serverUsage,
  type Session,
  spawnChildRole,
  startServer,
  terminateChild,
  usageError,
} from "./protocol.ts";

/** The hidden first argument that makes this script a child: `--child CPU_MS`. */
const CHILD_ROLE = "--child";
/** Bytes relayed per read, each way. */
const RELAY_BUFFER = 64 * 1024;
/** How long a client that is still sending gets to see a child's end. */
const LINGER_MS = 1000;
/** How long a child whose client is gone gets to exit before SIGTERM. */
const EXIT_WAIT_MS = 1000;
/** How long a child gets between SIGTERM and SIGKILL. */
const KILL_AFTER_MS = 2000;

if (Deno.args[0] === CHILD_ROLE) {
  // The child: one client's echo over stdin/stdout, with no permission at
  // all. Stdin's EOF is the client's EOF, or the parent's death.
  const cpuMs = Number(Deno.args[1] ?? 0);
  try {
    await echo(Deno.stdin, Deno.stdout, { bytesIn: 0, bytesOut: 0 }, cpuMs);
  } catch (error) {
    // A broken pipe means the parent stopped listening: the client is gone.
    if (!(error instanceof Deno.errors.BrokenPipe)) {
      console.error(`forked.ts child: ${(error as Error).message}`);
    }
    Deno.exit(1);
  }
  Deno.exit(0);
}

const spec = {
  script: "forked.ts",
  model: "forked",
  summary:
    "Process-per-client echo server: each client is served by a child process.",
  defaultMaxConns: 64,
  options: { exec: { type: "string" } },
  optionsUsage:
    `  --exec "CMD ARG..."     inetd mode: run CMD per client, the connection as its
                          stdin/stdout, its stderr into the log; words split as
                          sh does (quotes honoured), but no shell: no pipes,
                          variables or globs (use --exec "sh -c '...'")`,
} as const;
const options = await parseServerArgs(Deno.args, spec);
const exec = options.extra.exec === undefined
  ? undefined
  : parseExec(String(options.extra.exec), options.cpuMs);

// What runs per client: the command of --exec, or this script as a child.
const startChild = exec
  ? () =>
    new Deno.Command(exec[0], {
      args: exec.slice(1),
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      detached: true, // its own process group, which Ctrl-C does not reach
    }).spawn()
  : () =>
    spawnChildRole(import.meta.filename ?? import.meta.url, [
      CHILD_ROLE,
      String(options.cpuMs),
    ]);

const server = await startServer(options, {
  model: "forked",
  banner: [
    exec
      ? `exec ${exec.map(shellQuote).join(" ")}`
      : "sandboxed deno child per client",
  ],
});

for await (const conn of server.clients()) {
  // Not awaited: like the parent after fork(), go straight back to accept.
  server.serve(conn, serveInChild);
}

/**
 * Serves one client through a child process: starts it, relays bytes both
 * ways until the child's output ends (or the client goes, or the server ends
 * the client), then makes sure the child has ended, and reaps it.
 */
async function serveInChild(session: Session): Promise<void> {
  const { id } = session;
  const log = server.log;
  if (session.signal.aborted) return; // a shutdown came first
  let child: Deno.ChildProcess;
  try {
    child = startChild();
  } catch (error) {
    const what = exec?.[0] ?? "child";
    log.error(`#${id} cannot start ${what}: ${spawnError(error)}`, { id });
    session.end("cannot start child");
    return;
  }
  const started = performance.now();
  const pid = child.pid;
  if (log.verbose) {
    log.event("spawned", `#${id} spawned child ${pid}`, { id, child: pid });
  }
  const stderrLogged = forEachLine(child.stderr, (line) => {
    const fields = { id, child: pid, line };
    log.event("stderr", `#${id} child ${pid}: ${line}`, fields, true);
  });
  const input = relayToChild(session, child.stdin);
  const output = relayToClient(child.stdout, session);

  // Done when the child's output has ended and was all sent, or when the
  // client is gone (a failure on either side), or when the server ends it.
  const clientFailed = input.then((error) =>
    error === undefined ? new Promise<never>(() => {}) : error
  );
  let terminated: Promise<Deno.CommandStatus> | undefined;
  const endedByServer = new Promise<void>((resolve) =>
    session.signal.addEventListener("abort", () => {
      // At once, before the closed connection reaches the child as EOF: once
      // the grace period is over, a shutdown terminates children.
      terminated = terminateChild(child, {
        killAfterMs: KILL_AFTER_MS,
        group: true,
      });
      resolve();
    }, { once: true })
  );
  const failure = await Promise.race([output, clientFailed, endedByServer]);
  if (failure === undefined && !session.signal.aborted) {
    // The child has said everything: tell the client (FIN). If it is still
    // sending (the child stopped early), give it a moment to see that before
    // the connection closes, so that it gets a clean end and not a reset.
    try {
      await session.conn.closeWrite();
    } catch { /* already gone */ }
    await within(input, LINGER_MS);
  }
  session.close(); // ends the input relay, which closes the child's stdin

  // A child whose client is gone gets a moment to see its EOF, then SIGTERM,
  // then SIGKILL; its process group with it, so that no grandchild is left.
  const status = await (terminated ?? terminateChild(child, {
    termAfterMs: EXIT_WAIT_MS,
    killAfterMs: KILL_AFTER_MS,
    group: true,
  }));
  await within(stderrLogged, 100); // its last words before its exit line
  if (log.verbose) {
    const { text, fields } = describeExit(status, performance.now() - started);
    log.event("reaped", `#${id} reaped child ${pid}: ${text}`, {
      id,
      child: pid,
      ...fields,
    });
  }
  if (failure !== undefined) throw failure; // names the close reason
}

/**
 * Copies the client's bytes into the child's stdin until the client's EOF,
 * then closes the child's stdin: the child's EOF. If the child stops reading
 * (it exited), the rest of the client's bytes are read and dropped. Resolves
 * with the error if reading from the client fails, else undefined.
 */
async function relayToChild(
  session: Session,
  stdin: WritableStream<Uint8Array>,
): Promise<unknown> {
  const writer = stdin.getWriter();
  const buffer = new Uint8Array(RELAY_BUFFER);
  let childReads = true;
  try {
    for (;;) {
      const n = await session.conn.read(buffer);
      if (n === null) return undefined;
      session.bytesIn += n;
      if (!childReads) continue;
      try {
        // Resolves once the pipe took the bytes, so the buffer is free again
        // and a child that does not read holds the client back.
        await writer.write(
          n === buffer.length ? buffer : buffer.subarray(0, n),
        );
      } catch {
        childReads = false;
      }
    }
  } catch (error) {
    return error;
  } finally {
    writer.close().catch(() => {}); // already closed when the child is gone
  }
}

/**
 * Copies the child's stdout to the client until it ends, every byte written
 * before it resolves. Resolves with the error if writing to the client fails
 * (the child's stdout is then closed: its next write fails), else undefined.
 */
async function relayToClient(
  stdout: ReadableStream<Uint8Array>,
  session: Session,
): Promise<unknown> {
  // A BYOB reader reads into our buffer and hands it back with each chunk:
  // one buffer for the whole stream, not one per chunk.
  const reader = stdout.getReader({ mode: "byob" });
  let buffer = new ArrayBuffer(RELAY_BUFFER);
  try {
    for (;;) {
      const { value, done } = await reader.read(new Uint8Array(buffer));
      if (done) return undefined;
      for (let off = 0; off < value.length;) {
        off += await session.conn.write(value.subarray(off));
      }
      session.bytesOut += value.length;
      buffer = value.buffer as ArrayBuffer;
    }
  } catch (error) {
    reader.cancel().catch(() => {});
    return error;
  }
}

/** Resolves when `promise` settles or after `ms`, whichever is first. */
async function within(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    promise.catch(() => {}),
    new Promise<void>((resolve) => timer = setTimeout(resolve, ms)),
  ]);
  clearTimeout(timer);
}

/** Quotes `word` for sh when it needs it: shows how --exec was split. */
function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word)
    ? word
    : `'${word.replaceAll("'", `'\\''`)}'`;
}

/** Why a command could not be started, in a few words. */
function spawnError(error: unknown): string {
  if (error instanceof Deno.errors.NotFound) return "command not found";
  if (error instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (error instanceof Deno.errors.NotCapable) {
    return "not permitted by Deno (run with --allow-run)";
  }
  return error instanceof Error ? error.message : String(error);
}

/**
 * Reads `--exec`'s command line into words, as sh would split it without
 * expanding anything: blanks separate words, '...' is literal, "..." is
 * literal but for \" \\ \$ \`, a backslash escapes the next character.
 * Exits 2 on an empty or unterminated command, or one that needs a shell.
 */
function parseExec(line: string, cpuMs: number): string[] {
  const fault = (reason: string): never =>
    usageError(spec.script, reason, serverUsage(spec));
  const words: string[] = [];
  let word: string | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === " " || c === "\t" || c === "\n") {
      if (word !== undefined) words.push(word);
      word = undefined;
    } else if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) fault(`--exec: unterminated ' quote`);
      word = (word ?? "") + line.slice(i + 1, end);
      i = end;
    } else if (c === '"') {
      word ??= "";
      for (i++;; i++) {
        if (i >= line.length) fault(`--exec: unterminated " quote`);
        if (line[i] === '"') break;
        if (line[i] === "\\" && '"\\$`'.includes(line[i + 1])) i++;
        word += line[i];
      }
    } else if (c === "\\") {
      if (i + 1 >= line.length) fault("--exec: nothing after the last \\");
      word = (word ?? "") + line[++i];
    } else if ("|&;<>()$`".includes(c)) {
      fault(
        `--exec runs no shell, so ${c} means nothing: quote it, or use --exec "sh -c '...'"`,
      );
    } else {
      word = (word ?? "") + c;
    }
  }
  if (word !== undefined) words.push(word);
  if (words.length === 0) fault("--exec needs a command");
  if (cpuMs > 0) {
    fault("--cpu-ms does not apply with --exec: CMD does the work");
  }
  return words;
}
