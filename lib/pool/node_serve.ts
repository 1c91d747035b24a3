/**
 * serve.ts's EchoServer over node:net sockets, the only ones Deno can pass
 * to another process (node:cluster, `send(message, socket)`); and node:net's
 * listen and accept, worded and worked around as listen.ts does for Deno's.
 *
 * @module
 */
import type { ListenOptions, Server, Socket } from "node:net";
import { bindErrorText } from "../listen.ts";
import { formatAddr } from "../log.ts";
import type { ClientHandler } from "../serve.ts";

/** Where the pool listens: node:net's form of the reserved address. */
export type Address = ListenOptions & { path?: string };

/** Listens `server` on `address`; rejects with "cannot listen on X: why". */
export function listenOn(server: Server, address: Address): Promise<void> {
  const { path, host: hostname = "", port = 0 } = address;
  const where = path ? `unix:${path}` : formatAddr({
    transport: "tcp",
    hostname,
    port,
  });
  return new Promise((resolve, reject) => {
    server.once("error", (error: NodeJS.ErrnoException) => {
      // In listen.ts's words, which know Deno's errors.
      const inUse = error.code === "EADDRINUSE";
      const why = inUse ? new Deno.errors.AddrInUse() : error;
      reject(`cannot listen on ${where}: ${bindErrorText(why, !!path)}`);
    }).listen(address, resolve);
  });
}

/**
 * Makes `listener` accept again. Out of file descriptors, Deno 2.9.6's
 * node:net stops accepting for good, silently (`ulimit -n 64`, 144 clients:
 * 40 served, then none); a second listen() re-arms it (144 of 144). Called
 * as each client leaves by whoever held more than fit.
 */
export function rearmAccept(listener: Server | undefined): void {
  const handle = (listener as { _handle?: { listen?(backlog: number): void } })
    ?._handle;
  handle?.listen?.(511); // node:net's default backlog
}

/** How a model serves one client on its node:net socket (cluster.ts's echo). */
export type SocketHandler = (socket: Socket) => void;

/** `socket` as the Deno.Conn that EchoServer.serve() names, tunes, closes. */
export function connOf(socket: Socket): Deno.Conn {
  const { remoteAddress: hostname, remotePort: port = 0 } = socket;
  const remoteAddr: Deno.Addr = hostname === undefined
    ? { transport: "unix", path: "" } // logged as unix#ID
    : { transport: "tcp", hostname, port };
  const conn = {
    remoteAddr,
    close: () => void socket.destroy(),
    setNoDelay: (on = true) => void socket.setNoDelay(on),
    setKeepAlive: (on = true) => void socket.setKeepAlive(on),
  };
  return conn as unknown as Deno.Conn;
}

/**
 * An EchoServer handler that runs `handler` on `socket` and settles once it
 * closes; rejects with a Deno error class if on an error, so that the log
 * names the reason as elsewhere.
 */
export function socketHandler(
  socket: Socket,
  handler: SocketHandler,
): ClientHandler {
  return (session) =>
    new Promise<void>((resolve, reject) => {
      Object.defineProperties(session, {
        bytesIn: { get: () => socket.bytesRead },
        bytesOut: { get: () => socket.bytesWritten - socket.writableLength },
      });
      let failure: Error | undefined;
      socket.on("error", (error) => failure ??= denoError(error));
      socket.on("close", () => failure ? reject(failure) : resolve());
      socket.allowHalfOpen = true; // the client's EOF ends only its direction
      handler(socket);
      socket.resume();
    });
}

/** A node:net error as the Deno error serve.ts's closeReason() names. */
function denoError(error: NodeJS.ErrnoException): Error {
  const { errors } = Deno;
  const code = error.code ?? "";
  if (code === "ECONNRESET") return new errors.ConnectionReset(error.message);
  if (code === "EPIPE") return new errors.BrokenPipe(error.message);
  if (code === "ECONNABORTED") {
    return new errors.ConnectionAborted(error.message);
  }
  if (code === "ETIMEDOUT") return new errors.TimedOut(error.message);
  return error;
}

/**
 * Frees a chunk once written. Deno 2.9.6 does not count node:net's read
 * buffers as V8 memory pressure, so they wait for a rare GC: a 256 MiB echo
 * grew the RSS by 163 MiB; detached once written, by 11 MiB.
 */
export function release(chunk: Uint8Array): void {
  const buffer = chunk.buffer as ArrayBuffer;
  if (chunk.byteOffset === 0 && chunk.byteLength === buffer.byteLength) {
    buffer.transfer(0); // detached: the memory goes back at once
  }
}
