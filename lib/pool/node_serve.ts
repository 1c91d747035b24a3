/**
 * The echo service over node:net sockets, with the log lines, `--idle-timeout`
 * and drain of server.ts's EchoServer. Deno's own sockets cannot leave their
 * process; node:net's can (node:cluster, `child_process`'s `send(message,
 * socket)`), so a process that shares a socket or is handed its clients that
 * way serves them here.
 *
 * @module
 */
import type { Socket } from "node:net";
import type { ServerOptions } from "../cli.ts";
import * as log from "../log.ts";
import { burnCpu } from "../echo.ts";
import { within } from "../time.ts";

/** Names why a client's connection ended, from a node:net error. */
function closeReason(error: NodeJS.ErrnoException): string {
  const code = error.code ?? "";
  if (["ECONNRESET", "EPIPE", "ECONNABORTED"].includes(code)) return "reset";
  return code === "ETIMEDOUT" ? "timed out" : `error: ${error.message}`;
}

/**
 * Frees a chunk that was read and has been written. Deno does not count
 * node:net's read buffers towards V8's memory pressure, so they wait for a
 * garbage collection that a small heap rarely has: a 256 MiB echo grew the
 * RSS by 163 MiB; detached once written, by 11 MiB (and ran a bit faster).
 */
function release(chunk: Uint8Array): void {
  const buffer = chunk.buffer as ArrayBuffer;
  if (chunk.byteOffset === 0 && chunk.byteLength === buffer.byteLength) {
    buffer.transfer(0); // detached: the memory goes back at once
  }
}

/**
 * Serves echo clients on node:net sockets with the log lines, `--idle-timeout`
 * and drain of server.ts's EchoServer. Never throws: a failing client closes
 * its own connection only.
 */
export class NodeEchoServer {
  /** The server's log. */
  readonly log: log.Logger;
  #ends = new Map<Socket, string | undefined>(); // each client: why we end it
  #drained: (() => void)[] = [];
  #stopping?: Promise<void>;
  #nextId = 1;

  /** A server for worker `worker`; `closed` runs as each client goes. */
  constructor(
    readonly options: ServerOptions,
    worker: number,
    readonly closed: () => void,
  ) {
    this.log = new log.Logger(options, { pid: Deno.pid, worker });
  }

  /** How many clients it serves now. */
  get active(): number {
    return this.#ends.size;
  }

  /**
   * Serves `socket` to the end: each chunk read is written back, and reading
   * pauses while the client does not read its echo (backpressure); the
   * client's half-close is passed on once all is sent.
   */
  serve(socket: Socket): void {
    if (this.#stopping) return void socket.destroy();
    const { options, log: logger } = this;
    const [id, started] = [this.#nextId++, performance.now()];
    const { remoteAddress: hostname, remotePort: port = 0 } = socket;
    const client = hostname === undefined
      ? `unix#${id}`
      : log.formatAddr({ transport: "tcp", hostname, port });
    this.#ends.set(socket, undefined);
    socket.allowHalfOpen = true; // the client's EOF ends only its direction
    if (options.nodelay) socket.setNoDelay(true);
    if (options.keepalive) socket.setKeepAlive(true);
    if (options.idleTimeout > 0) {
      socket.setTimeout(options.idleTimeout * 1000, () => {
        this.#end(socket, "idle timeout");
      });
    }
    if (logger.verbose) {
      const text = `#${id} ${client} connected`;
      logger.event("connected", text, { id, client, active: this.active });
    }
    socket.on("data", (chunk: Uint8Array) => {
      if (options.cpuMs > 0) burnCpu(options.cpuMs);
      if (!socket.write(chunk, () => release(chunk))) socket.pause();
    });
    socket.on("drain", () => socket.resume());
    socket.on("end", () => socket.end()); // once all that was read is sent
    socket.on("error", (error) => {
      if (!this.#ends.get(socket)) this.#ends.set(socket, closeReason(error));
    });
    socket.on("close", () => {
      const reason = this.#ends.get(socket) ?? "eof";
      this.#ends.delete(socket);
      const ms = Math.round((performance.now() - started) * 10) / 10;
      const [bytesIn, bytesOut] = [socket.bytesRead, socket.bytesWritten];
      if (logger.verbose) {
        const text = `#${id} ${client} closed (${reason}): ${
          log.formatBytes(bytesIn)
        } in, ${log.formatBytes(bytesOut)} out, ${log.formatMs(ms)}`;
        const fields = { id, client, reason, bytesIn, bytesOut, ms };
        logger.event("closed", text, fields);
      }
      if (this.active === 0) this.#drained.splice(0).forEach((done) => done());
      this.closed();
    });
    socket.resume();
  }

  #end(socket: Socket, reason: string): void {
    this.#ends.set(socket, reason);
    socket.destroy();
  }

  /**
   * Takes no more clients, lets those connected finish for `--grace`
   * seconds, then ends the rest; resolves once all are gone. A second call
   * ends them at once.
   */
  stop(): Promise<void> {
    const endAll = () => {
      for (const socket of this.#ends.keys()) this.#end(socket, "shutdown");
    };
    const allGone = () =>
      this.active === 0
        ? Promise.resolve()
        : new Promise<void>((resolve) => this.#drained.push(resolve));
    if (this.#stopping) return endAll(), this.#stopping;
    return this.#stopping = (async () => {
      await within(allGone(), this.options.grace * 1000);
      endAll();
      await allGone();
    })();
  }
}
