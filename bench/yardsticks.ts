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
 *   process per client can move in Deno, which cannot hand the client's
 *   socket to a child.
 *
 * Each prints the same banner as the models and ends on SIGTERM.
 *
 * @module
 */
import { spawnChildRole } from "../children.ts";
import { pipe, relay } from "../relay.ts";

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
  const parent = await Deno.connect({ transport: "unix", path: Deno.args[0] });
  const buffer = new Uint8Array(64 * 1024);
  try {
    for (let n; (n = await parent.read(buffer)) !== null;) {
      for (let written = 0; written < n;) {
        written += await parent.write(buffer.subarray(written, n));
      }
    }
  } catch { /* the parent is gone */ }
`);

/** Live children of `--bare-relay`: as forked.ts's default --max-conns. */
const BARE_RELAY_CHILDREN = 64;

/** Runs the bare relay to a child process per client (`--bare-relay`). */
export async function bareRelay(): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const dir = Deno.makeTempDirSync({ prefix: "bench-relay-" });
  Deno.addSignalListener("SIGTERM", () => {
    Deno.removeSync(dir, { recursive: true });
    Deno.exit(0);
  });
  console.log(
    `listening on 127.0.0.1:${listener.addr.port} (bare relay, pid ${Deno.pid})`,
  );
  let clients = 0;
  let freed = Promise.withResolvers<void>();
  for (let id = 1;; id++) {
    while (clients >= BARE_RELAY_CHILDREN) await freed.promise;
    let client: Deno.Conn;
    try {
      client = await listener.accept();
    } catch {
      continue; // a client that reset before accept
    }
    clients++;
    bareRelayClient(client, `${dir}/${id}.sock`).finally(() => {
      clients--;
      freed.resolve();
      freed = Promise.withResolvers<void>();
    });
  }
}

/** One client of `--bare-relay`: its child, the link to it, the relay. */
async function bareRelayClient(client: Deno.Conn, path: string): Promise<void> {
  const listener = Deno.listen({ transport: "unix", path });
  const child = spawnChildRole(BARE_RELAY_CHILD, [path], {
    denoFlags: [
      `--allow-net=unix:${path}`,
      `--allow-read=${path}`,
      `--allow-write=${path}`,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  });
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

if (self.name?.startsWith(BARE_WORKER)) {
  await bareWorker(Number(self.name.slice(BARE_WORKER.length)));
}
