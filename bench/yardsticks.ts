/**
 * The yardsticks the models are measured against: the simplest Deno servers
 * that do the same job, with nothing else (no logging, limits, timeouts).
 *
 * - `bench.ts --bare-server`: one echo loop on one thread, the `bare` row;
 *   with THREADS > 1 the same loop on THREADS threads sharing the port
 *   (SO_REUSEPORT, as `threaded.ts --pool` does): the most any pool can gain
 *   over one thread on this machine, under this load.
 * - `bench.ts --bare-relay`: forked.ts's design and nothing else: per client,
 *   a child process that connects back to a Unix socket made for it and
 *   echoes over it, and a relay between the two connections. The most a
 *   process per client can move with Deno's own APIs, which cannot hand the
 *   client's socket to a child.
 * - `bench.ts --handoff`: the alternative, which Deno's own APIs cannot do
 *   but its Node compatibility layer can (Unix, Deno >= 2.8.1): per client,
 *   a fresh `node:child_process` child handed the client's socket with
 *   `child.send("socket", socket)`, echoing it with a bare loop; no relay.
 *
 * Each prints the same banner as the models and ends on SIGTERM.
 *
 * @module
 */
import type { Socket } from "node:net";
import { onlyTo } from "../lib/process/link.ts";
import { runAgain } from "../lib/role.ts";
import { pipe, relay } from "../lib/relay.ts";

/** The name of a bare server's Worker: this prefix, then the port. */
const BARE_WORKER = "bench-bare-";

/** Runs the bare echo loop on `threads` threads (`--bare-server [THREADS]`). */
export async function bareServer(threads: number): Promise<void> {
  const listener = Deno.listen({
    hostname: "127.0.0.1",
    port: 0,
    reusePort: threads > 1,
  });
  const { port } = listener.addr;
  for (let i = 1; i < threads; i++) {
    const worker = new Worker(import.meta.url, {
      type: "module",
      name: `${BARE_WORKER}${port}`,
    });
    await new Promise((resolve, reject) => {
      worker.onmessage = resolve;
      worker.onerror = (event) => {
        event.preventDefault();
        reject(new Error(`bare worker: ${event.message}`));
      };
    });
  }
  const how = threads > 1 ? `${threads} threads, ` : "";
  console.log(`listening on 127.0.0.1:${port} (bare, ${how}pid ${Deno.pid})`);
  await bareAcceptLoop(listener);
}

/** In a bare server's Worker: listen on the shared port, say so, serve. */
async function bareWorker(port: number): Promise<void> {
  const listener = Deno.listen({
    hostname: "127.0.0.1",
    port,
    reusePort: true,
  });
  (self as unknown as Worker).postMessage("listening");
  await bareAcceptLoop(listener);
}

async function bareAcceptLoop(listener: Deno.Listener): Promise<never> {
  for (;;) {
    try {
      bareEcho(await listener.accept());
    } catch { /* a client that reset before accept */ }
  }
}

/** Reads into one 64 KiB buffer and writes back what was read, to EOF. */
async function bareEcho(conn: Deno.Conn): Promise<void> {
  try {
    await pipe(conn, conn, undefined, false);
  } catch { /* reset */ }
  try {
    conn.close();
  } catch { /* closed */ }
}

/**
 * The child of `--bare-relay`: the bare echo loop over the socket to its
 * parent, as an inline module, so that it loads nothing else.
 */
const BARE_RELAY_CHILD = "data:application/javascript," + encodeURIComponent(`
  const parent = await Deno.connect({ transport: "unix", path: Deno.args[2] });
  const buffer = new Uint8Array(64 * 1024);
  try {
    for (let n; (n = await parent.read(buffer)) !== null;) {
      for (let written = 0; written < n;) {
        written += await parent.write(buffer.subarray(written, n));
      }
    }
  } catch { /* the parent is gone */ }
`);

/**
 * The live children of `--bare-relay` or `--handoff`: at most 64 (as
 * forked.ts's default --max-conns). On SIGTERM each one is ended and reaped
 * before the yardstick exits 0: a child orphaned on its way out would stay
 * a zombie until an init reaps it, which some do only every second or so.
 */
class LiveChildren {
  /** How many may live at once. */
  static readonly MAX = 64;
  #ends = new Map<Promise<unknown>, () => void>();
  #freed = Promise.withResolvers<void>();

  /** Ends the children and runs `cleanup` on SIGTERM, then exits 0. */
  constructor(cleanup = () => {}) {
    Deno.addSignalListener("SIGTERM", async () => {
      for (const end of this.#ends.values()) end();
      await Promise.all(this.#ends.keys());
      cleanup();
      Deno.exit(0);
    });
  }

  /** True while as many children live as may. */
  get full(): boolean {
    return this.#ends.size >= LiveChildren.MAX;
  }

  /** Resolves when the next child exits. */
  get freed(): Promise<void> {
    return this.#freed.promise;
  }

  /** Counts a child until `exited` settles; `end` ends it early. */
  add(exited: Promise<unknown>, end: () => void): void {
    this.#ends.set(exited, () => {
      try {
        end();
      } catch { /* exited meanwhile */ }
    });
    exited.finally(() => {
      this.#ends.delete(exited);
      this.#freed.resolve();
      this.#freed = Promise.withResolvers<void>();
    });
  }
}

/** Runs the bare relay to a child process per client (`--bare-relay`). */
export async function bareRelay(): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const dir = Deno.makeTempDirSync({ prefix: "bench-relay-" });
  const children = new LiveChildren(() => {
    Deno.removeSync(dir, { recursive: true });
  });
  console.log(
    `listening on 127.0.0.1:${listener.addr.port} (bare relay, pid ${Deno.pid})`,
  );
  for (let id = 1;; id++) {
    while (children.full) await children.freed;
    let client: Deno.Conn;
    try {
      client = await listener.accept();
    } catch {
      continue; // a client that reset before accept
    }
    bareRelayClient(client, `${dir}/${id}.sock`, children);
  }
}

/** One client of `--bare-relay`: its child, the link to it, the relay. */
async function bareRelayClient(
  client: Deno.Conn,
  path: string,
  children: LiveChildren,
): Promise<void> {
  const listener = Deno.listen({ transport: "unix", path });
  const child = new Deno.Command(Deno.execPath(), {
    args: runAgain(BARE_RELAY_CHILD, "child", [path], onlyTo(path)),
    stdin: "null",
    stdout: "null",
    stderr: "null",
    detached: true,
  }).spawn();
  children.add(child.status, () => child.kill("SIGKILL"));
  const link = await Promise.race([
    listener.accept(),
    child.status.then(() => null),
  ]).catch(() => null);
  listener.close();
  if (link) {
    try {
      await relay(client, link, { bytesIn: 0, bytesOut: 0 });
    } catch { /* reset */ }
    link.close();
  }
  client.close();
  await child.status;
}

/**
 * The child of `--handoff`: given the client's socket, it echoes it with
 * node:net's bare loop (`pipe`: a chunk read is written back, reading pauses
 * while the client does not read, its EOF ends our side once all is sent),
 * and exits when the socket closes, or when the parent is gone.
 */
const HANDOFF_CHILD = "data:application/javascript," + encodeURIComponent(`
  process.on("disconnect", () => process.exit(0));
  process.on("message", (message, socket) => {
    if (message !== "socket" || !socket) return;
    socket.on("error", () => {});
    socket.on("close", () => process.exit(0));
    socket.pipe(socket);
  });
`);

/** Runs the accept-and-hand-off server (`--handoff`). */
export async function handoff(): Promise<void> {
  // Loaded here, not by the bare loops' Workers, which share this module.
  const { fork } = await import("node:child_process");
  const { createServer } = await import("node:net");
  const children = new LiveChildren();
  const waiting: Socket[] = [];
  const handOff = (socket: Socket) => {
    if (socket.destroyed) return; // it left while it waited
    const child = fork(HANDOFF_CHILD, [], {
      stdio: ["ignore", "ignore", "ignore", "ipc"],
    });
    const exited = new Promise((resolve) => child.on("exit", resolve));
    children.add(exited, () => child.kill("SIGKILL"));
    exited.then(() => {
      while (waiting.length && !children.full) handOff(waiting.shift()!);
    });
    // Once sent, node:child_process closes the parent's copy of the socket.
    child.send("socket", socket, (error) => {
      if (!error) return;
      socket.destroy();
      child.kill("SIGKILL");
    });
  };
  // Paused: not a byte is read here, all of them are the child's to read.
  const server = createServer({ pauseOnConnect: true }, (socket) => {
    socket.on("error", () => {}); // a reset while it waits
    if (children.full) waiting.push(socket);
    else handOff(socket);
  });
  server.listen(0, "127.0.0.1", () => {
    const { port } = server.address() as { port: number };
    console.log(`listening on 127.0.0.1:${port} (handoff, pid ${Deno.pid})`);
  });
}

if (self.name?.startsWith(BARE_WORKER)) {
  await bareWorker(Number(self.name.slice(BARE_WORKER.length)));
}
