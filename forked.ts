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
 * Try:  two `nc -N 127.0.0.1 8080`: the log names a child pid for each. With
 *       `--cpu-ms 200`, two clients typing at once are both answered after
 *       200 ms: two cores. `kill -9 CHILD_PID` ends only that client.
 *
 * Copy with: lib/ (the folder, as it is)
 * Flags without deno.json: the shebang's (--allow-run starts the children).
 * MIT licensed; see LICENSE.
 */
import * as cli from "./lib/cli.ts";
import { echo } from "./lib/echo.ts";
import { listenOrExit } from "./lib/listen.ts";
import { connectBack, LinkedChildren, onlyTo } from "./lib/process/link.ts";
import { serveInChild } from "./lib/process/serve_in_child.ts";
import { role, roleArgs, runAgain } from "./lib/role.ts";
import { EchoServer, type Session } from "./lib/serve.ts";

if (role() === "child") {
  // The child: one client's echo over the socket made for it, the one path
  // it may open. Its end is the client's EOF, or the parent's death.
  const [cpuMs, socket] = roleArgs();
  const counters = { bytesIn: 0, bytesOut: 0 }; // the parent counts and logs
  await connectBack(socket, (parent) => echo(parent, parent, counters, +cpuMs));
}

const options = await cli.parseServerArgs(Deno.args, spec());
const command = commandLine(options); // --exec or --sh-exec, split
const script = import.meta.filename ?? import.meta.url;
const children = await LinkedChildren.open(options.script, !command);
const listener = await listenOrExit(options, (at) => Deno.listen(at));
const what = command ? `exec ${command.join(" ")}` : "sandboxed deno child";
const server = new EchoServer(options, listener, {
  banner: [`${what} per client`],
  onStop: () => children.close(), // once every child is reaped
});
const inChild = (client: Session) =>
  serveInChild(client, children, server.log, spawnChild, command?.[0]);

for (;;) {
  const conn = await server.accept(); // null once a stop signal came
  if (!conn) break;
  server.serve(conn, inChild); // not awaited: as after fork(), back to accept
}

/**
 * fork() and exec() in one: this script again as a sandboxed child that may
 * open only `socket` (where it connects back), or --exec's command, whose
 * stdin and stdout are the client's bytes. It leads a process group of its
 * own, which a Ctrl-C at the terminal does not reach: we end it.
 */
function spawnChild(socket: string | undefined, env: Record<string, string>) {
  const [program, args] = command ? [command[0], command.slice(1)] : [
    Deno.execPath(),
    runAgain(script, "child", [`${options.cpuMs}`, socket!], onlyTo(socket!)),
  ];
  return new Deno.Command(program, {
    args,
    stdin: command ? "piped" : "null",
    stdout: command ? "piped" : "null",
    stderr: "piped", // logged, line by line
    env, // the lifeline's mark: nothing outlives a SIGKILLed server
    detached: true,
  }).spawn();
}

/**
 * The command run per client: --exec's words (split on whitespace, no shell,
 * as ncat does) or `/bin/sh -c` --sh-exec; exits 2 on a bad one.
 */
function commandLine({ extra, cpuMs }: cli.ServerOptions) {
  const { exec, "sh-exec": sh } = extra as Record<string, string | undefined>;
  if (exec === undefined && sh === undefined) return undefined;
  const name = exec === undefined ? "--sh-exec" : "--exec";
  const fault = (why: string): never =>
    cli.usageError("forked.ts", why, cli.serverUsage(spec()));
  const both = exec !== undefined && sh !== undefined;
  if (both) fault("--exec and --sh-exec exclude each other");
  if (!(exec ?? sh)!.trim()) fault(`${name} needs a command`);
  const shell = exec?.match(/['"\\|&;<>()$`]/)?.[0];
  if (shell) fault(`--exec runs no shell: for ${shell}, use --sh-exec`);
  if (cpuMs > 0) fault(`--cpu-ms does not apply to ${name}: CMD does the work`);
  return exec?.trim().split(/\s+/) ?? ["/bin/sh", "-c", sh!];
}

function spec(): cli.ModelSpec {
  return {
    script: "forked.ts",
    summary: "Process-per-client echo server: a child process per client.",
    defaultMaxConns: 64,
    // Measured: the client's socket, its child's stderr, pidfd, and socket
    // with its listener and a spare while it connects back; or its pipes.
    fds: (extra) => ({
      perClient: (extra.exec ?? extra["sh-exec"]) === undefined ? 6 : 5,
    }),
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
