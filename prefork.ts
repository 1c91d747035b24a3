#!/usr/bin/env -S deno run -A --unstable-net
/**
 * Pre-forked echo server: a supervising parent and N worker processes that
 * all accept on the same port.
 *
 * The pre-forked pool (UNP's serv02, Apache's prefork, nginx's workers): N
 * server processes started once, up front, so no client waits for a process
 * to start, clients run on every core, and a crash is confined to one
 * worker's clients. The price is N processes' memory whether clients come or
 * not, and each worker is one event loop: a client that burns CPU stalls the
 * other clients of its worker. Deno's own APIs can neither fork nor share a
 * socket (cluster.ts uses its Node layer), so each worker binds the port with
 * SO_REUSEPORT (Linux) and the kernel hashes each connection to one of them.
 * More in docs/models/prefork.md.
 *
 * Run:  deno run -A prefork.ts 8080 --workers 4
 * Try:  `nc -N 127.0.0.1 8080` a few times: the log names the worker (and its
 *       pid) serving each. `kill -9` a worker: its clients are cut, the others
 *       go on, a new worker listens 0.1 s later. With `--cpu-ms 200`, two
 *       clients typing at once are answered together when on two workers,
 *       one after the other when on the same one.
 *
 * Copy with: lib/ (the folder, as it is)
 * Flags without deno.json: the shebang's (-A: --allow-run, which starts the
 * workers, is as much anyway, and /proc tells `ulimit -n` only then; each
 * worker may only listen on its port). MIT licensed; see LICENSE.
 */
import * as cli from "./lib/cli.ts";
import { echo } from "./lib/echo.ts";
import { listenOrExit } from "./lib/listen.ts";
import { formatAddr } from "./lib/log.ts";
import { ChildWorker, obeyParent } from "./lib/pool/child_worker.ts";
import * as pool from "./lib/pool/supervisor.ts";
import { role, roleArgs, runAgain } from "./lib/role.ts";
import { EchoServer } from "./lib/serve.ts";

if (role() === "worker") await worker();
else await parent();

/** The parent: starts N workers, keeps them at strength, stops them. */
async function parent(): Promise<void> {
  const options = await cli.parseServerArgs(Deno.args, spec());
  const size = pool.workersOf(options.extra);
  cli.refuseFewerConns(spec(), options, `${size} workers`, size);
  const script = import.meta.filename ?? import.meta.url;
  await pool.supervise({
    options,
    size,
    banner: [pool.workerCount(size)],
    fields: { workers: size },
    // Worker `slot`: this script again, allowed to listen on its port only.
    start(slot, addr) {
      const share = pool.shareOf(options.maxConns, size, slot);
      const args = [`${slot}`, ...pool.workerArgs(options, addr, share)];
      const child = new Deno.Command(Deno.execPath(), {
        args: runAgain(script, "worker", args, [
          `--allow-net=${formatAddr(addr)}`,
          "--unstable-net",
        ]),
        stdin: "piped", // the parent's commands; its end: the parent died
        stdout: "piped", // the worker's answers and log lines
        stderr: "piped",
        detached: true, // Ctrl-C reaches the parent, which stops the workers
      }).spawn();
      return new ChildWorker(slot, child);
    },
  });
}

/** A worker: an evented echo server on the shared port, obeying the parent. */
async function worker(): Promise<void> {
  const [slot, ...args] = roleArgs();
  const options = await cli.parseServerArgs(args, spec());
  const listener = await listenOrExit(
    options,
    (at) => Deno.listen({ ...at, reusePort: true }), // the kernel picks one
  );
  // A pool worker: the parent prints the one banner, and its word stops us.
  const who = { pid: Deno.pid, worker: +slot };
  const server = new EchoServer(options, listener, { who });
  await obeyParent(server); // until the banner is out
  for (;;) {
    const conn = await server.accept(); // null once told to stop
    if (!conn) break;
    server.serve(conn, (client) => echo(conn, conn, client, options.cpuMs));
  }
}

function spec(): cli.ModelSpec {
  return {
    script: "prefork.ts",
    summary:
      "Pre-forked echo server: a supervisor and N worker processes sharing the port.",
    defaultMaxConns: 10_000,
    fds: (extra) => ({ processes: pool.workersOf(extra) }),
    noUnix:
      "workers share a TCP port with SO_REUSEPORT, which Unix sockets lack",
    denoFlags: "-A --unstable-net",
    options: { workers: pool.WORKERS_OPTION },
  };
}
