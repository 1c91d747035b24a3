/**
 * Yardstick for threaded.ts's memory: the least a Worker per client costs in
 * Deno, with no project code. Per connection, a bare Worker (a `data:`
 * module) that posts every buffer it is sent back over a MessagePort; the
 * main thread moves each chunk the client sends to it, writes what comes back
 * to the socket, and terminates the worker at the client's end, once the
 * worker has answered its end of stream (so nothing is still queued to it).
 * One chunk in flight per client: bounded, if slower than threaded.ts.
 *
 * Run beside threaded.ts under the same load and compare the RSS each keeps
 * per client served (docs/models/threaded.md, "Memory"):
 *
 *   deno run -A bench/bare_worker.ts [PORT]
 *
 * Prints a banner like the models', ends on SIGTERM or SIGINT.
 *
 * @module
 */

const WORKER = "data:text/javascript," + encodeURIComponent(`
  onmessage = ({ data: port }) => {
    port.onmessage = ({ data }) =>
      data === "eof" ? port.postMessage("eof") : port.postMessage(data, [data.buffer]);
  };
`);

/** Serves one client on a Worker of its own, to its end of stream. */
async function serve(conn: Deno.Conn): Promise<void> {
  const worker = new Worker(WORKER, { type: "module" });
  const { port1, port2 } = new MessageChannel();
  worker.postMessage(port2, [port2]);
  let answer = Promise.withResolvers<Uint8Array | "eof">();
  port1.onmessage = ({ data }) => answer.resolve(data);
  const next = (message: Uint8Array | "eof") => {
    answer = Promise.withResolvers();
    if (message === "eof") port1.postMessage(message);
    else port1.postMessage(message, [message.buffer as ArrayBuffer]);
    return answer.promise;
  };
  try {
    for (;;) {
      const buffer = new Uint8Array(64 * 1024);
      const n = await conn.read(buffer);
      if (n === null) break;
      const echoed = await next(buffer.subarray(0, n)) as Uint8Array;
      for (let done = 0; done < echoed.length;) {
        done += await conn.write(echoed.subarray(done));
      }
    }
    await next("eof"); // the worker has taken everything it was sent
  } catch { /* reset */ }
  port1.close();
  worker.terminate();
  try {
    conn.close();
  } catch { /* closed */ }
}

if (import.meta.main) {
  const port = Number(Deno.args[0] ?? 0);
  const listener = Deno.listen({ hostname: "127.0.0.1", port });
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    Deno.addSignalListener(signal, () => Deno.exit(0));
  }
  console.log(
    `listening on 127.0.0.1:${listener.addr.port} (bare worker per client, pid ${Deno.pid})`,
  );
  for (;;) {
    try {
      serve(await listener.accept());
    } catch { /* a client that reset before accept */ }
  }
}
