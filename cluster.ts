#!/usr/bin/env -S deno run -A
/**
 * Clustered echo server: N worker processes accept on ONE listening socket
 * (node:cluster), or a primary accepts and passes each client to the next.
 *
 * The seeds' pre-forked pool done exactly (UNP serv02): the socket is bound
 * once and every worker accepts on it, so its one queue gives each connection
 * to whichever worker asks first, an idle one, never a busy one; prefork.ts's
 * workers (SO_REUSEPORT) get connections hashed to them blindly, busy or not.
 * `--schedule round-robin` is UNP serv05: the primary accepts and deals each
 * client to the next worker, evenly but blind to load, one more hop each.
 * Deno's own sockets cannot leave their process; its Node compatibility
 * layer passes them between processes (Unix, Deno >= 2.8.1): the one way to
 * share a socket here, a Unix one too. Clients over --max-conns (the total)
 * wait unread: round-robin, in the primary for any worker; shared, in the
 * worker that took them, as Deno's node:net cannot stop accepting.
 *
 * Run:  deno run -A cluster.ts 8080 --workers 4 [--schedule round-robin]
 * Try:  `nc 127.0.0.1 8080` a few times: the log names each client's worker.
 *       `kill -9` a worker: only its clients are cut; a new one starts. With
 *       `--cpu-ms 3000`, type in one client, connect others: shared, each is
 *       taken at once; round-robin, every other one waits for the busy one.
 *
 * Copy with: lib/ (the folder, as it is)
 * Flags without deno.json: the shebang's (Deno runs the workers with -A
 * whatever the primary has). MIT licensed; see LICENSE. docs/models/cluster.md
 */
import cluster from "node:cluster";
import net from "node:net";
import * as cli from "./lib/cli.ts";
import { ClusterPool, ClusterWorker } from "./lib/pool/cluster.ts";
import {
  workerCount,
  WORKERS_OPTION,
  workersOf,
} from "./lib/pool/supervisor.ts";

/** A worker: echoes the clients it accepts, or is handed, until told to stop. */
async function work(options: cli.ServerOptions): Promise<void> {
  const worker = new ClusterWorker(options);
  if (schedule(options) === "round-robin") return worker.listen(); // handed
  // UNP serv02: every worker accepts on the one socket. In a worker,
  // node:cluster makes listen() take a copy of the primary's socket.
  const listener = net.createServer(
    { pauseOnConnect: true }, // read by whoever serves it, not before
    (socket) => worker.serve(socket), // or kept, unread, while it is full
  );
  await worker.listen(listener);
}

/** The primary: keeps the workers; in round-robin, accepts and deals. */
async function primary(options: cli.ServerOptions): Promise<void> {
  const size = workersOf(options.extra);
  const pool = new ClusterPool(
    options,
    size,
    [workerCount(size), schedule(options)],
    { workers: size, schedule: schedule(options) },
  );
  if (schedule(options) === "round-robin") {
    // UNP serv05: the primary accepts, and each client goes to the next
    // worker with room, or waits here, unread, until one has.
    await pool.reserve(net.createServer(
      { pauseOnConnect: true },
      (socket) => pool.deal(socket),
    ));
  } else {
    await pool.reserve();
    cluster.schedulingPolicy = cluster.SCHED_NONE; // the workers share it
  }
  pool.start();
}

const spec: cli.ModelSpec = {
  script: "cluster.ts",
  summary:
    "Clustered echo server: N worker processes accept on one shared socket.",
  defaultMaxConns: 10_000,
  fdProcesses: workersOf,
  options: {
    workers: WORKERS_OPTION,
    schedule: {
      type: "string",
      usage: `MODE         shared (default): every worker accepts on the one
                          socket; round-robin: the primary deals the clients out`,
    },
  },
};

function schedule(options: cli.ServerOptions): string {
  return String(options.extra.schedule ?? "shared");
}

const options = await cli.parseServerArgs(Deno.args, spec);
const fault = (why: string) =>
  cli.usageError(spec.script, why, cli.serverUsage(spec));
if (!["shared", "round-robin"].includes(schedule(options))) {
  fault(`--schedule must be shared or round-robin, not "${schedule(options)}"`);
}
const size = workersOf(options.extra);
cli.refuseFewerConns(spec, options, workerCount(size), size);
await (cluster.isPrimary ? primary(options) : work(options));
