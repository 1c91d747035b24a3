#!/usr/bin/env -S deno run --allow-net --allow-read --allow-write --allow-run
/**
 * Process-per-client echo server: every client is served by a child process.
 *
 * The classic Unix server (CS:APP's `echoserverp.c`, inetd): accept, start a
 * child that serves the client, go back to accept, reap children as they
 * exit. A child that crashes, leaks or burns CPU harms only its own client,
 * and clients use every core; the price is a process start (~25 ms) and a
 * process per client: fine for tens of clients, not tens of thousands. Deno
 * cannot fork(), and no socket reaches a sandboxed child: the parent relays.
 *
 * Run:  deno run -A forked.ts 8080
 *       deno run -A forked.ts 8080 --exec "tr a-z A-Z"   (inetd: CMD per client)
 *       deno run -A forked.ts 8080 --sh-exec "tr a-z A-Z | rev"
 * Try:  two `nc 127.0.0.1 8080`: the log names a child pid for each. With
 *       `--cpu-ms 200`, two clients typing at once are both answered after
 *       200 ms: two cores. `kill -9 CHILD_PID` ends only that client.
 *
 * Copy with: lib/ (the folder, as it is)
 * Flags without deno.json: the shebang's (--allow-run starts the children).
 * MIT licensed; see LICENSE.
 */
import {
  type ChildLink,
  connectBack,
  LinkedChildren,
} from "./lib/process/link.ts";
import {
  forEachLine,
  spawnErrorText,
  terminateChild,
} from "./lib/process/children.ts";
import { type ModelSpec, parseServerArgs } from "./lib/cli.ts";
import { type ServerOptions, serverUsage, usageError } from "./lib/cli.ts";
import { describeExit } from "./lib/log.ts";
import { echo } from "./lib/echo.ts";
import { pipe } from "./lib/relay.ts";
import { type Session, startServer } from "./lib/serve.ts";
import { within } from "./lib/time.ts";

const CHILD_ROLE = "--child"; // the hidden role: `--child CPU_MS SOCKET`

if (Deno.args[0] === CHILD_ROLE) {
  // The child: one client's echo over the socket made for it, the one path
  // it may open. Its end is the client's EOF, or the parent's death.
  const [, cpuMs, socket] = Deno.args;
  const counters = { bytesIn: 0, bytesOut: 0 }; // the parent counts and logs
  await connectBack(socket, (parent) => echo(parent, parent, counters, +cpuMs));
}

const options = await parseServerArgs(Deno.args, spec());
const command = commandLine(options);
const role = { // this script again, as `--child CPU_MS SOCKET`
  script: import.meta.filename ?? import.meta.url,
  args: [CHILD_ROLE, String(options.cpuMs)],
};
const children = await LinkedChildren.open(options.script, command ?? role);
const what = command ? `exec ${command.join(" ")}` : "sandboxed deno child";
const server = await startServer(options, {
  banner: [`${what} per client`],
  onStop: () => children.close(),
});

for await (const conn of server.clients()) {
  // Not awaited: like the parent after fork(), go straight back to accept.
  server.serve(conn, serveInChild);
}

/**
 * Serves one client through a child: starts it, relays both ways until the
 * child's output ends or either side fails, ends the child and reaps it.
 */
async function serveInChild(session: Session): Promise<void> {
  const { id, signal } = session;
  const log = server.log;
  const child = await children.start(String(id), signal).catch((error) => {
    const what = command?.[0] ?? "child";
    log.error(`#${id} cannot start ${what}: ${spawnErrorText(error)}`, { id });
    session.end("cannot start child");
  });
  if (!child) return; // a shutdown came first, or it could not start
  const { process, link } = child;
  const [pid, startedAt] = [process.pid, performance.now()];
  const who = { id, child: pid };
  if (log.verbose) log.event("spawned", `#${id} spawned child ${pid}`, who);
  const stderrLogged = forEachLine(process.stderr, (line) => {
    log.event("stderr", `#${id} child ${pid}: ${line}`, { ...who, line }, true);
  });
  // A shutdown or idle timeout ends the child at once; a child whose client
  // is gone gets a second to exit. Then SIGTERM, then SIGKILL, to its
  // process group, so that no grandchild is left.
  const end = (termAfterMs: number) =>
    terminateChild(process, { termAfterMs, killAfterMs: 2000, group: true });
  let ended: Promise<Deno.CommandStatus> | undefined;
  signal.addEventListener("abort", () => ended = end(0), { once: true });

  const failure = await relayWith(session, link).catch((error) => error);
  session.close(); // the child reads EOF, or fails to write
  const status = await (ended ?? end(1000));
  await within(stderrLogged, 100); // its last words before its exit line
  const { text, fields } = describeExit(status, performance.now() - startedAt);
  const reaped = `#${id} reaped child ${pid}: ${text}`;
  if (log.verbose) log.event("reaped", reaped, { ...who, ...fields });
  if (failure !== undefined) throw failure;
}

/**
 * Relays between the client and its child until the child's output ended
 * and was all sent; a client still sending gets a second to see that end
 * (a clean close, not a reset). Rejects on either side's first failure,
 * and if the child ends before it connects.
 */
async function relayWith(session: Session, linking: Promise<ChildLink>) {
  const link = await linking;
  const toChild = pipe(session.conn, link, (n) => session.bytesIn += n);
  const toClient = pipe(link, session.conn, (n) => session.bytesOut += n);
  try {
    await Promise.race([toClient, toChild.then(() => toClient)]);
    await within(toChild, 1000);
  } finally {
    link.close();
  }
}

/**
 * The command run per client: --exec's words (split on whitespace, no shell,
 * as ncat does) or `/bin/sh -c` --sh-exec; exits 2 on a bad one.
 */
function commandLine({ extra, cpuMs }: ServerOptions): string[] | undefined {
  const { exec, "sh-exec": sh } = extra as Record<string, string | undefined>;
  if (exec === undefined && sh === undefined) return undefined;
  const name = exec === undefined ? "--sh-exec" : "--exec";
  const fault = (why: string): never =>
    usageError("forked.ts", why, serverUsage(spec()));
  if (exec !== undefined && sh !== undefined) {
    fault("--exec and --sh-exec exclude each other");
  }
  if (!(exec ?? sh)!.trim()) fault(`${name} needs a command`);
  const shell = exec?.match(/['"\\|&;<>()$`]/)?.[0];
  if (shell) fault(`--exec runs no shell: for ${shell}, use --sh-exec`);
  if (cpuMs > 0) fault(`--cpu-ms does not apply to ${name}: CMD does the work`);
  return exec?.trim().split(/\s+/) ?? ["/bin/sh", "-c", sh!];
}

function spec(): ModelSpec {
  return {
    script: "forked.ts",
    summary: "Process-per-client echo server: a child process per client.",
    defaultMaxConns: 64,
    // Measured: the client's socket, its child's stderr, pidfd, and socket
    // with its listener and a spare while it connects back; or its pipes.
    fdsPerClient: (extra) =>
      (extra.exec ?? extra["sh-exec"]) === undefined ? 6 : 5,
    options: {
      exec: {
        type: "string",
        usage: `"CMD ARG..."     inetd mode: run CMD per client (split on
                          whitespace, no shell) on the connection`,
      },
      "sh-exec": {
        type: "string",
        usage: `"COMMAND"     the same, COMMAND run by /bin/sh -c`,
      },
    },
  };
}
