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
 * SO_REUSEPORT (Linux) and the kernel hashes each connection to one of them. More in docs/models/prefork.md.
 *
 * Run:  deno run -A prefork.ts 8080 --workers 4
 * Try:  `nc 127.0.0.1 8080` a few times: the log names the worker (and its
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
import { ChildWorker } from "./lib/pool/child_worker.ts";
import { forEachLine } from "./lib/process/children.ts";
import * as cli from "./lib/cli.ts";
import { formatAddr } from "./lib/log.ts";
import { obey } from "./lib/pool/commands.ts";
import { onShutdownSignal, startServer } from "./lib/serve.ts";
import {
  shareOf,
  supervise,
  workerCount,
  WORKERS_OPTION,
  workersOf,
} from "./lib/pool/supervisor.ts";

/** The hidden first argument that makes this script a worker: `--as-worker N`. */
const WORKER_ROLE = "--as-worker";

/** A worker: an evented echo server on the shared port, obeying its parent. */
async function serveAsWorker(n: number, options: cli.ServerOptions) {
  // Until we listen, a stop request finds nobody to drain.
  let obeying = (_command: string): void => Deno.exit(0);
  onShutdownSignal((signal, count) =>
    obeying(count === 1 ? `drain ${signal}` : "end")
  );
  const server = await startServer(options, {
    who: { pid: Deno.pid, worker: n },
    reusePort: true,
    signals: false,
    announce: false,
  });
  obeying = obey(server, (word) => {
    if (word === "stopped") Deno.exit(0);
    console.log(word); // to the parent, which reads our stdout
  });
  // Commands come on stdin; its end means the parent died: drain.
  await forEachLine(Deno.stdin.readable, obeying);
  obeying("drain supervisor");
}

const spec: cli.ModelSpec = {
  script: "prefork.ts",
  summary:
    "Pre-forked echo server: a supervisor and N worker processes sharing the port.",
  defaultMaxConns: 10_000,
  fdProcesses: workersOf,
  noUnix: "workers share a TCP port with SO_REUSEPORT, which Unix sockets lack",
  denoFlags: "-A --unstable-net",
  options: { workers: WORKERS_OPTION },
};

if (Deno.args[0] === WORKER_ROLE) {
  const options = await cli.parseServerArgs(Deno.args.slice(2), spec);
  await serveAsWorker(Number(Deno.args[1]), options);
} else {
  const options = await cli.parseServerArgs(Deno.args, spec);
  const size = workersOf(options.extra);
  cli.refuseFewerConns(spec, options, `${size} workers`, size);
  const flags = (["nodelay", "keepalive", "json", "quiet"] as const)
    .filter((flag) => options[flag]).map((flag) => `--${flag}`);
  const script = import.meta.filename ?? import.meta.url;
  await supervise({
    options,
    size,
    banner: [workerCount(size)],
    fields: { workers: size },
    // Each worker: this script again, allowed to listen on its port only.
    start: (slot, addr) =>
      new ChildWorker(slot, script, [
        ...[WORKER_ROLE, `${slot}`, `${addr.port}`, "--host", addr.hostname],
        ...["--max-conns", `${shareOf(options.maxConns, size, slot)}`],
        ...["--idle-timeout", `${options.idleTimeout}`, ...flags],
        ...["--cpu-ms", `${options.cpuMs}`, "--grace", `${options.grace}`],
      ], [`--allow-net=${formatAddr(addr)}`, "--unstable-net"]),
  });
}
