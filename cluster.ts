#!/usr/bin/env -S deno run -A
/**
 * Clustered echo server: N worker processes accept on ONE listening socket
 * (node:cluster), or a primary accepts and deals each client to the next.
 *
 * The classic pre-forked server (UNP serv02): the socket is bound once and
 * every worker accepts on it, so a worker stalled by a client takes no new
 * one, the others do; prefork.ts's workers (SO_REUSEPORT) get connections
 * hashed to them, busy or not. But the kernel wakes the worker that was last
 * active first, and it may take a whole burst (docs/models/cluster.md).
 * `--schedule round-robin` is UNP serv05: the primary accepts and deals each
 * client to the next worker with room, evenly but blind to load. Deno's own
 * sockets cannot leave their process; its Node layer passes them (Deno >=
 * 2.8.1, Unix): the one way to share a socket here, a Unix one too.
 *
 * Run:  deno run -A cluster.ts 8080 --workers 4 [--schedule round-robin]
 * Try:  `nc -N 127.0.0.1 8080` a few times: the log names each client's
 *       worker. `kill -9` a worker: only its clients are cut; a new one
 *       starts. With `--cpu-ms 3000`, type in one client, connect others:
 *       shared, each is taken at once; round-robin, every other one waits.
 *
 * Copy with: lib/ (the folder, as it is)
 * Flags without deno.json: the shebang's (workers run with -A whatever the
 * primary has). MIT licensed; see LICENSE. docs/models/cluster.md
 */
import cluster from "node:cluster";
import net from "node:net";
import * as cli from "./lib/cli.ts";
import { burnCpu } from "./lib/echo.ts";
import {
  ClusterMember,
  ClusterWorker,
  Dealer,
  reserveAddress,
  workerEnv,
} from "./lib/pool/cluster.ts";
import { release } from "./lib/pool/node_serve.ts";
import * as pool from "./lib/pool/supervisor.ts";
import { asRole, role, roleArgs } from "./lib/role.ts";

if (role() === "worker") await work(await parse(roleArgs()));
else await primary(await parse(Deno.args));

/** The echo (RFC 862) on a node:net socket: each chunk read is written back. */
function echo(socket: net.Socket, cpuMs: number): void {
  socket.on("data", (chunk: Uint8Array) => {
    burnCpu(cpuMs); // --cpu-ms: what each request costs the worker
    if (!socket.write(chunk, () => release(chunk))) socket.pause(); // full
  });
  socket.on("drain", () => socket.resume());
  socket.on("end", () => socket.end()); // half-close, once all is written
}

/** A worker: echoes the clients it accepts, or is handed, until told to stop. */
async function work(options: cli.ServerOptions): Promise<void> {
  // Its log lines, --max-conns share, --idle-timeout and drain: lib/.
  const worker = new ClusterWorker(
    options,
    (socket) => echo(socket, options.cpuMs),
  );
  if (schedule(options) === "round-robin") return worker.listen(); // handed
  // UNP serv02: in a worker, node:cluster makes listen() take a copy of the
  // primary's socket, so all accept on one.
  const server = net.createServer(
    { pauseOnConnect: true }, // read by whoever serves it, not before
    (socket) => worker.serve(socket),
  );
  await worker.listen(server);
}

/** The primary: forks the workers and keeps them; round-robin: deals too. */
async function primary(options: cli.ServerOptions): Promise<void> {
  const size = pool.workersOf(options.extra);
  // UNP serv05: the primary accepts, and deals each client to the next
  // worker with room; it waits here, unread, until one has.
  const dealer = schedule(options) === "round-robin"
    ? new Dealer(net.createServer({ pauseOnConnect: true }))
    : undefined;
  cluster.schedulingPolicy = cluster.SCHED_NONE; // shared: the workers accept
  // Deno 2.9.6 forks process.argv[1], a placeholder ($deno$node.mjs) when the
  // script runs from a URL: fork the script itself.
  cluster.setupPrimary({
    exec: import.meta.filename ?? import.meta.url,
    args: [...asRole("worker"), ...Deno.args], // the same command line
  });
  await pool.supervise({
    options,
    size,
    banner: [pool.workerCount(size), schedule(options)],
    fields: { workers: size, schedule: schedule(options) },
    reserve: (options) => reserveAddress(options, dealer),
    // Restarts, give-up, banner and stop: supervisor.ts's Pool.
    start: (slot, addr) => {
      const share = pool.shareOf(options.maxConns, size, slot);
      const worker = cluster.fork(workerEnv(slot, addr, share));
      return new ClusterMember(worker, slot, share, dealer);
    },
  });
}

function spec(): cli.ModelSpec {
  return {
    script: "cluster.ts",
    summary:
      "Clustered echo server: N worker processes accept on one shared socket.",
    defaultMaxConns: 10_000,
    fds: (extra) => ({ processes: pool.workersOf(extra) }),
    options: {
      workers: pool.WORKERS_OPTION,
      schedule: {
        type: "string",
        usage: `MODE         shared (default): every worker accepts on the one
                          socket; round-robin: the primary deals the clients out`,
      },
    },
  };
}

function schedule(options: cli.ServerOptions): string {
  return String(options.extra.schedule ?? "shared");
}

/** The command line, the same for the primary and its workers. */
async function parse(args: string[]): Promise<cli.ServerOptions> {
  const options = await cli.parseServerArgs(args, spec());
  if (!["shared", "round-robin"].includes(schedule(options))) {
    const why = `--schedule must be shared or round-robin, not "${
      schedule(options)
    }"`;
    cli.usageError("cluster.ts", why, cli.serverUsage(spec()));
  }
  const size = pool.workersOf(options.extra);
  cli.refuseFewerConns(spec(), options, pool.workerCount(size), size);
  return options;
}
