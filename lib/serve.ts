/**
 * What a server does around the model's own calls, the way csapp.c wraps
 * accept(): an {@linkcode EchoServer} takes the listener the model bound,
 * prints the banner, accepts within `--max-conns` and through per-connection
 * errors, serves each client with its log lines and `--idle-timeout`, and on
 * SIGINT, SIGTERM or SIGHUP drains for `--grace` seconds and exits 0.
 *
 * @module
 */
import type { ServerOptions } from "./cli.ts";
import {
  formatAddr,
  formatBytes,
  formatMs,
  Logger,
  tenths,
  type Who,
} from "./log.ts";
import type { Counters } from "./echo.ts";
import { onShutdownSignal } from "./signals.ts";
import { sleep, within } from "./time.ts";

/** One connected client, from accept to close. */
export class Session implements Counters {
  bytesIn = 0;
  bytesOut = 0;
  /** When the client was accepted (performance.now()). */
  readonly started: number = performance.now();
  #ended = new AbortController();
  #closed = false;

  /** Wraps an accepted connection; `client` names it in log lines. */
  constructor(
    readonly id: number,
    readonly conn: Deno.Conn,
    readonly client: string,
  ) {}

  /**
   * Aborted, with the reason, when the server ends this client (idle timeout,
   * shutdown): a handler that holds a child or a worker releases it then.
   */
  get signal(): AbortSignal {
    return this.#ended.signal;
  }

  /** Ends the client from outside: aborts `signal`, closes the connection. */
  end(reason: string): void {
    if (!this.#ended.signal.aborted) this.#ended.abort(reason);
    this.close();
  }

  /** Closes the connection once; later calls do nothing. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch { /* already closed by the peer's reset */ }
  }
}

/** How a model serves one client: move its bytes, counted in the session. */
export type ClientHandler = (session: Session) => Promise<void>;

/** Names why a client's connection ended, from the error its I/O raised. */
export function closeReason(error: unknown): string {
  if (error instanceof Deno.errors.ConnectionReset) return "reset";
  if (error instanceof Deno.errors.BrokenPipe) return "reset";
  if (error instanceof Deno.errors.ConnectionAborted) return "reset";
  if (error instanceof Deno.errors.TimedOut) return "timed out";
  return `error: ${error instanceof Error ? error.message : String(error)}`;
}

/** How a server is started, besides its command line. */
export interface StartOptions {
  /**
   * Who serves: shown on every log line (default: this process). A pool
   * worker (`who.worker` set) prints no banner and leaves the stop signals to
   * its supervisor, which prints the one banner and tells it when to stop.
   */
  who?: Who;
  /** More words for the banner, after the model name. */
  banner?: string[];
  /** Runs after clients are drained and closed, before exit. */
  onStop?: () => Promise<void> | void;
  /**
   * Numbers the next client (default: 1, 2, 3... per server). Workers that
   * share a port pass a shared counter, so that `#id` is unique in the process.
   */
  nextId?: () => number;
}

/** A listening echo server: accept its clients, serve them. */
export class EchoServer {
  /** The bound address (the real port when 0 was asked). */
  readonly addr: Deno.Addr;
  /** The server's log. */
  readonly log: Logger;
  #active = new Set<Session>();
  #slotWaiters: (() => void)[] = [];
  #drained: (() => void)[] = [];
  #stopping = false;
  #accepting?: Promise<Deno.Conn>;
  #shutdown?: Promise<void>;
  #nextId = 1;
  #idleMarks = new Map<Session, { moved: number; at: number }>();

  /**
   * Takes over the bound `listener`: registers the stop signals, then prints
   * the banner (neither in a pool worker: see {@linkcode StartOptions.who}).
   */
  constructor(
    /** The parsed command line. */
    readonly options: ServerOptions,
    readonly listener: Deno.Listener,
    readonly start: StartOptions = {},
  ) {
    this.log = new Logger(options, start.who);
    this.addr = listener.addr;
    // Handlers first: whoever has seen the banner may signal at once.
    if (start.who?.worker === undefined) {
      onShutdownSignal((signal) =>
        this.shutdown(signal).then(() => Deno.exit(0))
      );
      this.log.banner(options, this.addr, start.banner ?? []);
    }
    if (options.idleTimeout > 0) this.#watchIdle(options.idleTimeout * 1000);
  }

  /**
   * The next client: waits for a free `--max-conns` slot first (the others
   * wait in the kernel's backlog), survives per-connection accept errors, and
   * resolves null once the server stops.
   */
  async accept(): Promise<Deno.Conn | null> {
    while (!this.#stopping) {
      if (this.#active.size >= this.options.maxConns) {
        await new Promise<void>((resolve) => this.#slotWaiters.push(resolve));
        continue;
      }
      const conn = await this.#acceptOne();
      if (conn) return conn;
    }
    return null;
  }

  async #acceptOne(): Promise<Deno.Conn | null> {
    for (let failures = 0;; failures++) {
      try {
        this.#accepting = this.listener.accept();
        return await this.#accepting;
      } catch (error) {
        if (this.#stopping || error instanceof Deno.errors.BadResource) {
          return null;
        }
        // A client that resets before it is accepted makes accept() fail
        // (NotConnected, denoland/deno#8499): that is the client's business.
        if (error instanceof Deno.errors.NotConnected) continue;
        if (error instanceof Deno.errors.ConnectionAborted) continue;
        this.log.error(`accept failed: ${(error as Error).message}`);
        // Out of file descriptors and the like: back off instead of spinning.
        await sleep(Math.min(1000, 10 * 2 ** failures));
      }
    }
  }

  /**
   * Serves one client with `handler`: logs its connect and close, enforces
   * `--idle-timeout`, counts it for the drain. Never rejects.
   */
  async serve(conn: Deno.Conn, handler: ClientHandler): Promise<void> {
    const id = this.start.nextId?.() ?? this.#nextId++;
    const client = clientName(conn, id);
    const session = new Session(id, conn, client);
    this.#active.add(session);
    if (this.#stopping) session.end("shutdown");
    const { log, options } = this;
    if (options.nodelay || options.keepalive) setSocketOptions(conn, options);
    if (log.verbose) {
      const active = this.#active.size;
      log.event("connected", `#${id} ${client} connected`, {
        id,
        client,
        active,
      });
    }
    let reason = "eof";
    try {
      await handler(session);
    } catch (error) {
      reason = closeReason(error);
    }
    if (session.signal.aborted) reason = String(session.signal.reason);
    session.close();
    this.#active.delete(session);
    this.#idleMarks.delete(session);
    if (log.verbose) logClosed(log, session, reason);
    this.#slotWaiters.shift()?.();
    if (this.#active.size === 0) {
      this.#drained.splice(0).forEach((resolve) => resolve());
    }
  }

  /**
   * Closes the listener; resolves once new clients are refused, while the
   * connected go on (a pool's workers all stop accepting before "stopping").
   */
  async stopAccepting(): Promise<void> {
    this.#closeListener();
    await this.#accepting?.catch(() => {});
  }

  #closeListener(): void {
    this.#stopping = true;
    try {
      this.listener.close();
    } catch { /* already closed */ }
    this.#slotWaiters.splice(0).forEach((resolve) => resolve());
  }

  /**
   * Stops accepting, lets clients finish for `--grace`, ends the rest, runs
   * `onStop`. A second call ends the remaining clients at once.
   */
  shutdown(why: string): Promise<void> {
    if (this.#shutdown) this.#endAll("shutdown");
    else this.#closeListener();
    return this.#shutdown ??= this.#drain(why);
  }

  async #drain(why: string): Promise<void> {
    const { log, options } = this;
    // close() cancels a pending accept; the socket goes once that settles.
    await this.#accepting?.catch(() => {});
    const waiting = this.#active.size;
    log.event(
      "stopping",
      waiting
        ? `stopping (${why}): ${waiting} client(s) get ${options.grace} s to finish`
        : `stopping (${why})`,
      { reason: why, clients: waiting, grace: options.grace },
      true,
    );
    const allDone = () =>
      this.#active.size === 0
        ? Promise.resolve()
        : new Promise<void>((resolve) => this.#drained.push(resolve));
    await within(allDone(), options.grace * 1000);
    this.#endAll("shutdown");
    await allDone();
    await this.start.onStop?.();
    log.event("stopped", "stopped", {}, true);
  }

  #endAll(reason: string): void {
    for (const session of this.#active) session.end(reason);
  }

  #watchIdle(idleMs: number): void {
    // One sweep for all clients: the hot path only counts bytes, as it must.
    const tick = Math.min(1000, Math.max(20, idleMs / 10));
    const timer = setInterval(() => {
      const now = performance.now();
      for (const session of this.#active) {
        const moved = session.bytesIn + session.bytesOut;
        const mark = this.#idleMarks.get(session);
        const at = mark ? now : session.started;
        if (!mark || mark.moved !== moved) {
          this.#idleMarks.set(session, { moved, at });
        } else if (now - mark.at >= idleMs) {
          session.end("idle timeout");
        }
      }
    }, tick);
    Deno.unrefTimer(timer);
  }
}

function clientName(conn: Deno.Conn, id: number): string {
  const addr = conn.remoteAddr;
  // Unix clients are usually unnamed; the session number tells them apart.
  if (addr.transport === "unix") {
    return addr.path ? `unix:${addr.path}` : `unix#${id}`;
  }
  return formatAddr(addr);
}

function logClosed(log: Logger, session: Session, reason: string): void {
  const { id, client, bytesIn, bytesOut } = session;
  const ms = performance.now() - session.started;
  log.event(
    "closed",
    `#${id} ${client} closed (${reason}): ${formatBytes(bytesIn)} in, ${
      formatBytes(bytesOut)
    } out, ${formatMs(ms)}`,
    { id, client, reason, bytesIn, bytesOut, ms: tenths(ms) },
  );
}

function setSocketOptions(conn: Deno.Conn, options: ServerOptions): void {
  if (conn.remoteAddr.transport !== "tcp") return;
  const tcp = conn as Deno.TcpConn;
  if (options.nodelay) tcp.setNoDelay(true);
  if (options.keepalive) tcp.setKeepAlive(true);
}
