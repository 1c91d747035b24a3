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
 * - The child is a fresh `deno run forked.ts --child CPU_MS SOCKET` (a hidden
 *   role of this script), not a copy of the parent: ~25 ms to start instead
 *   of ~0.2 ms, and nothing shared, permissions included: the child may open
 *   one path, SOCKET, and nothing else (--no-prompt, --no-config), so the
 *   code that touches client bytes can open no file, socket or process.
 * - SOCKET is a Unix socket the parent listens on for this child alone, in a
 *   private directory; it accepts the child's one connection and relays the
 *   bytes between it and the client's, with backpressure and half-close both
 *   ways: two more copies per byte. (inetd hands a child the connection as
 *   its stdin and stdout; Deno reads a child's stdio on a blocking thread, a
 *   thread handoff per read, and a relay through pipes moved ~60 % as much.)
 * - A child ends when its socket closes, which is also what happens when the
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
 * comes ~25 ms after it connects (evented.ts: 0.6 ms). Four clients sending
 * 64 KiB messages get ~0.4x evented.ts's MB/s (bench.ts S3): the parent
 * makes four socket calls per message where evented.ts makes two, on one
 * thread for all clients (socat's fork + EXEC:cat, the same design in C with
 * the relay in each client's process, gets 0.6-0.7x). Each connected client
 * holds a child of ~11 MiB (PSS; 33 MiB RSS).
 */
import { parseServerArgs, serverUsage, usageError } from "./cli.ts";
import {
  forEachLine,
  spawnChildRole,
  spawnErrorText,
  terminateChild,
} from "./children.ts";
import { describeExit } from "./log.ts";
import { echo } from "./protocol.ts";
import { type Session, startServer } from "./server.ts";
import { within } from "./time.ts";

/** The hidden first argument that makes this script a child: `--child CPU_MS SOCKET`. */
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
  // The child: one client's echo over the socket its parent made for it, the
  // one thing it may open. The socket's end is the client's EOF, or the
  // parent's death.
  const [, cpuMs, path] = Deno.args;
  try {
    using parent = await Deno.connect({ transport: "unix", path });
    await echo(parent, parent, { bytesIn: 0, bytesOut: 0 }, Number(cpuMs));
  } catch (error) {
    // A broken connection means the parent stopped listening: the client is gone.
    if (
      !(error instanceof Deno.errors.BrokenPipe ||
        error instanceof Deno.errors.ConnectionReset)
    ) {
      console.error(`forked.ts child: ${(error as Error).message}`);
    }
    Deno.exit(1);
  }
  Deno.exit(0);
}

const spec = {
  script: "forked.ts",
  summary:
    "Process-per-client echo server: each client is served by a child process.",
  defaultMaxConns: 64,
  options: {
    exec: {
      type: "string",
      usage:
        `"CMD ARG..."     inetd mode: run CMD per client, the connection as its
                          stdin/stdout, its stderr into the log; words split as
                          sh does (quotes honoured), but no shell: no pipes,
                          variables or globs (use --exec "sh -c '...'")`,
    },
  },
} as const;
const options = await parseServerArgs(Deno.args, spec);
const exec = options.extra.exec === undefined
  ? undefined
  : parseExec(String(options.extra.exec), options.cpuMs);

// A private directory (mode 0700) for the sockets that link children to us,
// there only while a child is starting, so that a server killed with SIGKILL
// leaves nothing behind (but in those few milliseconds).
let socketDir: string | undefined;
let childrenConnecting = 0;

const server = await startServer(options, {
  banner: [
    exec
      ? `exec ${exec.map(shellQuote).join(" ")}`
      : "sandboxed deno child per client",
  ],
  onStop: () => {
    if (socketDir) Deno.removeSync(socketDir, { recursive: true });
    socketDir = undefined;
  },
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
  let started: StartedChild;
  try {
    started = exec ? startCommand(exec) : startDenoChild(id);
  } catch (error) {
    const what = exec?.[0] ?? "child";
    log.error(`#${id} cannot start ${what}: ${spawnErrorText(error)}`, { id });
    session.end("cannot start child");
    return;
  }
  const { child } = started;
  const startedAt = performance.now();
  const pid = child.pid;
  if (log.verbose) {
    log.event("spawned", `#${id} spawned child ${pid}`, { id, child: pid });
  }
  const stderrLogged = forEachLine(child.stderr, (line) => {
    const fields = { id, child: pid, line };
    log.event("stderr", `#${id} child ${pid}: ${line}`, fields, true);
  });
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

  // The child's end of the relay: its socket once it has connected, or its
  // pipes (--exec). A child that dies or is ended before connecting has none.
  const link = await Promise.race([
    started.link,
    child.status.then(() => null),
    endedByServer.then(() => null),
  ]);
  const failure = link
    ? await relay(session, link, endedByServer)
    : session.signal.aborted
    ? undefined
    : new Error("the child ended before it connected");
  session.close(); // ends the input relay, which ends the child's input
  link?.close();

  // A child whose client is gone gets a moment to see its EOF, then SIGTERM,
  // then SIGKILL; its process group with it, so that no grandchild is left.
  const status = await (terminated ?? terminateChild(child, {
    termAfterMs: EXIT_WAIT_MS,
    killAfterMs: KILL_AFTER_MS,
    group: true,
  }));
  started.abandon();
  await within(stderrLogged, 100); // its last words before its exit line
  if (log.verbose) {
    const { text, fields } = describeExit(
      status,
      performance.now() - startedAt,
    );
    log.event("reaped", `#${id} reaped child ${pid}: ${text}`, {
      id,
      child: pid,
      ...fields,
    });
  }
  if (failure !== undefined) throw failure; // names the close reason
}

/**
 * Relays between the client and the child, both ways, until the child's
 * output has ended and was all sent (resolves undefined), or the client is
 * gone (resolves with the error), or the server ends the client.
 */
async function relay(
  session: Session,
  link: ChildLink,
  endedByServer: Promise<void>,
): Promise<unknown> {
  const input = relayToChild(session, link);
  const output = relayToClient(link, session);
  const clientFailed = input.then((error) =>
    error === undefined ? new Promise<never>(() => {}) : error
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
  return failure;
}

/** A child just started, and how to reach it. */
interface StartedChild {
  child: Deno.ChildProcess;
  /** Resolves once the child can be talked to. */
  link: Promise<ChildLink>;
  /** Gives up waiting for the link (the child is reaped). */
  abandon(): void;
}

/**
 * The child's side of the relay, whatever carries it: the child's input, and
 * its output read into a buffer of our own.
 */
interface ChildLink {
  /** Reads the child's next output; the view is valid until the next read. */
  read(): Promise<Uint8Array | null>;
  /** Writes all of `bytes` to the child's input. */
  write(bytes: Uint8Array): Promise<void>;
  /** Ends the child's input: its EOF. */
  endInput(): Promise<void>;
  /** Releases both ways. */
  close(): void;
}

/**
 * Starts this script as a sandboxed child that connects back to a socket
 * made for it alone: the one path its permissions name. A Unix socket rather
 * than the child's stdin and stdout, because Deno reads and writes a process's
 * stdio on a blocking thread, a thread handoff per read (measured, one client
 * streaming: 208 MiB/s each way through pipes, 318 through a socket).
 */
function startDenoChild(id: number): StartedChild {
  socketDir ??= Deno.makeTempDirSync({ prefix: "forked-" });
  const path = `${socketDir}/${id}.sock`;
  const listener = Deno.listen({ transport: "unix", path });
  childrenConnecting++;
  // One connection, and the listener (and its file) is gone: nobody else
  // can reach the child through it. The last child to connect takes the
  // directory with it.
  const stopListening = () => {
    try {
      listener.close(); // Deno removes the socket file too
    } catch { /* closed already */ }
  };
  const settled = () => {
    stopListening();
    if (--childrenConnecting === 0 && socketDir) {
      Deno.removeSync(socketDir, { recursive: true });
      socketDir = undefined;
    }
  };
  let child: Deno.ChildProcess;
  try {
    child = spawnChildRole(import.meta.filename ?? import.meta.url, [
      CHILD_ROLE,
      String(options.cpuMs),
      path,
    ], {
      denoFlags: [
        `--allow-net=unix:${path}`,
        `--allow-read=${path}`,
        `--allow-write=${path}`,
      ],
      stdin: "null", // the socket's end tells the child that we are gone
      stdout: "null",
    });
  } catch (error) {
    settled();
    throw error;
  }
  const link = listener.accept().finally(settled).then(socketLink);
  link.catch(() => {}); // closed unaccepted: the child died or was ended
  return { child, link, abandon: stopListening };
}

/** Starts --exec's command, its stdin and stdout the link. */
function startCommand(command: string[]): StartedChild {
  const child = new Deno.Command(command[0], {
    args: command.slice(1),
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    detached: true, // its own process group, which Ctrl-C does not reach
  }).spawn();
  return { child, link: Promise.resolve(pipeLink(child)), abandon() {} };
}

/** The link over a connected socket. */
function socketLink(conn: Deno.Conn): ChildLink {
  const buffer = new Uint8Array(RELAY_BUFFER);
  return {
    async read() {
      const n = await conn.read(buffer);
      return n === null ? null : buffer.subarray(0, n);
    },
    async write(bytes) {
      for (let off = 0; off < bytes.length;) {
        off += await conn.write(bytes.subarray(off));
      }
    },
    endInput: () => conn.closeWrite(),
    close() {
      try {
        conn.close();
      } catch { /* closed */ }
    },
  };
}

/** The link over a command's stdin and stdout pipes (web streams). */
function pipeLink(child: Deno.ChildProcess): ChildLink {
  const writer = child.stdin.getWriter();
  // A BYOB reader reads into our buffer and hands it back with each chunk:
  // one buffer for the whole stream, not one per chunk.
  const reader = child.stdout.getReader({ mode: "byob" });
  let buffer = new ArrayBuffer(RELAY_BUFFER);
  return {
    async read() {
      const { value, done } = await reader.read(new Uint8Array(buffer));
      if (done) return null;
      buffer = value.buffer as ArrayBuffer;
      return value;
    },
    // Resolves once the pipe took the bytes, so the buffer is free again and
    // a child that does not read holds the client back.
    write: (bytes) => writer.write(bytes),
    endInput: () => writer.close(),
    close() {
      writer.close().catch(() => {});
      reader.cancel().catch(() => {});
    },
  };
}

/**
 * Copies the client's bytes into the child until the client's EOF, then ends
 * the child's input. If the child stops reading (it exited), the rest of the
 * client's bytes are read and dropped. Resolves with the error if reading
 * from the client fails, else undefined.
 */
async function relayToChild(
  session: Session,
  link: ChildLink,
): Promise<unknown> {
  const buffer = new Uint8Array(RELAY_BUFFER);
  let childReads = true;
  try {
    for (;;) {
      const n = await session.conn.read(buffer);
      if (n === null) return undefined;
      session.bytesIn += n;
      if (!childReads) continue;
      try {
        await link.write(n === buffer.length ? buffer : buffer.subarray(0, n));
      } catch {
        childReads = false;
      }
    }
  } catch (error) {
    return error;
  } finally {
    link.endInput().catch(() => {}); // already ended when the child is gone
  }
}

/**
 * Copies the child's output to the client until it ends, every byte written
 * before it resolves. Resolves with the error if writing to the client fails
 * (the link is then closed: the child's next write fails), else undefined.
 */
async function relayToClient(
  link: ChildLink,
  session: Session,
): Promise<unknown> {
  try {
    for (;;) {
      const chunk = await link.read();
      if (chunk === null) return undefined;
      for (let off = 0; off < chunk.length;) {
        off += await session.conn.write(chunk.subarray(off));
      }
      session.bytesOut += chunk.length;
    }
  } catch (error) {
    link.close();
    return error;
  }
}

/** Quotes `word` for sh when it needs it: shows how --exec was split. */
function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word)
    ? word
    : `'${word.replaceAll("'", `'\\''`)}'`;
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
