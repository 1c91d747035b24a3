/**
 * cluster.ts's plumbing around node:cluster. In the primary, a
 * {@linkcode ClusterMember} makes a forked worker a supervisor.ts PoolWorker
 * (commands.ts's words over node:cluster's IPC), and round-robin's
 * {@linkcode Dealer} deals the clients it accepts. In a worker,
 * {@linkcode ClusterWorker} serves its share through serve.ts's EchoServer
 * (node_serve.ts adapts the sockets), keeps the rest unread, and obeys.
 *
 * @module
 */
import cluster from "node:cluster";
import type { Server, Socket } from "node:net";
import process from "node:process";
import { fail, type ServerOptions } from "../cli.ts";
import { openFileLimit } from "../fd_limit.ts";
import { listenOrExit } from "../listen.ts";
import { describeExit } from "../process/children.ts";
import { EchoServer } from "../serve.ts";
import { onShutdownSignal } from "../signals.ts";
import { CommandedWorker, processWorker } from "./commands.ts";
import {
  type Address,
  connOf,
  listenOn,
  rearmAccept,
  type SocketHandler,
  socketHandler,
} from "./node_serve.ts";

/** What a worker learns from the environment variable {@linkcode ROLE}. */
interface Role {
  slot: number;
  address: Address;
  /** Its share of `--max-conns`. */
  share: number;
}

const ROLE = "CLUSTER_POOL_WORKER";

/**
 * The environment for `cluster.fork()` that makes worker `slot`. Throws (the
 * pool says "cannot start worker N: why", exit 1) when the primary lacks the
 * descriptors a worker costs it (IPC channel, pidfd, its socket being sent)
 * and a margin: short of them, Deno 2.9.6 throws out of node:cluster's own
 * handler (uncaught), or misses a worker's exit (with a margin of 5, once).
 */
export function workerEnv(
  slot: number,
  addr: Deno.Addr,
  share: number,
): Record<string, string> {
  const spare: Deno.FsFile[] = [];
  try {
    while (spare.length < 10) spare.push(Deno.openSync("/dev/null"));
  } catch { /* short */ }
  spare.forEach((file) => file.close());
  if (spare.length < 10) {
    const limit = openFileLimit(); // read once the spares are closed
    throw new Error(`out of file descriptors (ulimit -n ${limit ?? "?"})`);
  }
  const role: Role = { slot, address: workerAddress(addr), share };
  return { [ROLE]: JSON.stringify(role) };
}

/**
 * Finds the pool's address (port 0: a free one), or exits 1 with one line,
 * and frees it for node:cluster to bind; with a dealer, the primary's.
 */
export async function reserveAddress(
  options: ServerOptions,
  dealer?: Dealer,
): Promise<{ addr: Deno.Addr; close(): void }> {
  const probe = await listenOrExit(options);
  const addr = probe.addr;
  probe.close(); // Deno unlinks a Unix socket it closes; Node binds only then
  if (options.unix) await Deno.remove(options.unix).catch(() => {});
  if (dealer) await dealer.listen(workerAddress(addr), options.script);
  return { addr, close() {} };
}

function workerAddress(addr: Deno.Addr): Address {
  const where = addr as Deno.NetAddr | Deno.UnixAddr;
  return "path" in where
    ? { path: where.path }
    : { host: where.hostname, port: where.port };
}

/**
 * This process as a worker: serves at most its share of clients, accepted on
 * the pool's one socket (`listen`) or handed over by the primary, keeping the
 * rest unread until one of its own leaves. Obeys the primary's words
 * (commands.ts), and drains when the primary dies.
 */
export class ClusterWorker {
  /** Serves its clients: log, counts, drain. */
  readonly server: EchoServer;
  #role: Role = JSON.parse(process.env[ROLE]!);
  #waiting: Socket[] = []; // before the banner, or over the share: unread
  #serving = 0;
  #accepting = false;
  #refusing = false; // told to stop accepting
  #listener?: Server;
  #told = false; // the primary has given a stop word
  #stopping?: Promise<void>;
  #closed = Promise.withResolvers<never>(); // the "listener" EchoServer holds

  /** Joins the pool; `handler` serves each client (cluster.ts's echo). */
  constructor(options: ServerOptions, readonly handler: SocketHandler) {
    // EchoServer's accept is never called: node:net accepts.
    const listener = {
      accept: () => this.#closed.promise,
      close: () => this.#closed.reject(new Deno.errors.BadResource()),
    } as unknown as Deno.Listener;
    this.#closed.promise.catch(() => {});
    const who = { pid: Deno.pid, worker: this.#role.slot };
    this.server = new EchoServer(options, listener, { who });
    process.on("message", (word: string, socket?: Socket) => {
      const [command, reason = "supervisor"] = String(word).split(" ");
      if (command === "client") return this.serve(socket!);
      if (command === "accept") this.#accept();
      this.#told ||= command !== "accept";
      if (command === "stop-accepting") this.#stopAccepting();
      if (command === "drain" || command === "end") {
        this.#stop(reason, command === "end");
      }
    });
    // A Ctrl-C signals the whole group: the primary then tells us the same,
    // so we wait for its word; stopping on our own and exiting before it
    // writes to us broke its pipe (Deno 2.9.6). Signalled alone, we stop 1 s
    // later.
    onShutdownSignal((signal, count) => {
      if (!process.connected) return this.#stop(signal, count > 1);
      setTimeout(() => this.#told || this.#stop(signal, count > 1), 1000);
    });
    // The primary's death (SIGKILL too) closes our channel to it: we drain
    // then, instead of node:cluster's exit(0). Deno 2.9.6 may miss it, so a
    // change of parent (to pid 1 or a subreaper) tells as well.
    cluster.worker!.exitedAfterDisconnect = true;
    process.on("disconnect", () => this.#stop("primary gone"));
    const parent = process.ppid;
    const lifeline = setInterval(() => {
      if (process.ppid !== parent) this.#stop("primary gone");
    }, 500);
    Deno.unrefTimer(lifeline);
  }

  /**
   * Serves `socket`, or keeps it unread until the banner is out or a client
   * leaves. (A full worker cannot stop accepting: Deno 2.9.6's node:net takes
   * every waiting connection, has no pause, and a close drops what it took.)
   */
  serve(socket: Socket): void {
    if (this.#refusing) return void socket.destroy();
    if (!this.#accepting || this.#serving >= this.#role.share) {
      return void this.#waiting.push(socket);
    }
    this.#serving++;
    const handler = socketHandler(socket, this.handler);
    this.server.serve(connOf(socket), handler).then(() => {
      this.#serving--;
      if (!this.#listener) this.#tell("closed"); // the primary deals: it counts
      const next = this.#waiting.shift();
      if (next) this.serve(next), rearmAccept(this.#listener);
    });
  }

  /**
   * Listens `listener` on the pool's socket and tells the primary; or tells
   * it why not and exits 1. Without a listener, the primary deals.
   */
  async listen(listener?: Server): Promise<void> {
    try {
      if (listener) await listenOn(listener, this.#role.address);
    } catch (why) {
      this.#tell({ failed: why });
      return void setTimeout(() => Deno.exit(1), 100); // the message first
    }
    listener?.on("error", (error) => this.server.log.error(`${error}`));
    this.#listener = listener;
    if (!listener) this.#accept(); // the primary deals only after the banner
    this.#tell("listening");
  }

  #accept(): void {
    this.#accepting = true;
    this.#waiting.splice(0).forEach((socket) => this.serve(socket));
  }

  /** Says `word` to the primary; a gone primary is the lifeline's business. */
  #tell(word: unknown): void {
    if (process.connected) process.send!(word, undefined, undefined, () => {});
  }

  #stopAccepting(): void {
    this.#refusing = true;
    this.#listener?.close();
    this.#waiting.splice(0).forEach((socket) => socket.destroy());
    this.server.stopAccepting().then(() => this.#tell("not-accepting"));
  }

  #stop(reason: string, now = false): void {
    if (!this.#refusing) this.#stopAccepting();
    this.#stopping ??= this.server.shutdown(reason).then(() => Deno.exit(0));
    if (now) this.server.shutdown(reason); // its second call ends clients now
  }
}

/**
 * A forked `cluster.Worker` as supervisor.ts drives it, over node:cluster's
 * IPC channel; its exit is reported with why it could not listen, if it said.
 */
export class ClusterMember extends CommandedWorker {
  readonly name: string;
  readonly fields: Record<string, unknown>;
  /** Listening, and the banner is out (the dealer may hand it clients). */
  accepting = false;
  /** Clients dealt to it and not closed yet (round-robin). */
  clients = 0;

  /** Takes the worker `cluster.fork()` just started as worker `slot`. */
  constructor(
    readonly worker: ReturnType<typeof cluster.fork>,
    slot: number,
    readonly share: number,
    readonly dealer?: Dealer,
  ) {
    super();
    const { pid } = worker.process;
    ({ name: this.name, fields: this.fields } = processWorker(slot, pid!));
    const started = performance.now();
    let error: string | undefined;
    dealer?.join(this);
    worker.on("message", (word) => {
      if (word?.failed) error = word.failed;
      else if (word === "closed") this.clients--, dealer?.feed();
      else this.answer(word);
    });
    // A failed write without a callback is an "error" event: uncaught, it
    // would end the primary. Our sends have callbacks; this is for the rest.
    worker.on("error", () => {});
    worker.on("exit", (code: number | null, signal: string | null) => {
      dealer?.leave(this);
      const status = { success: false, code: code ?? 1, signal } as const;
      const ms = performance.now() - started;
      const { text, fields } = describeExit(status as Deno.CommandStatus, ms);
      this.ended({ text, fields, error });
    });
  }

  /** Round-robin: only sockets go to it from now on (see Dealer.deal). */
  override accept(): void {
    this.accepting = true;
    if (this.dealer) this.dealer.feed();
    else super.accept();
  }

  /** The primary stops accepting too, before any worker says it has. */
  override stopAccepting(): Promise<void> {
    this.dealer?.close();
    return super.stopAccepting();
  }

  /** Sends the word; if the worker has gone meanwhile, its exit tells. */
  protected send(command: string): void {
    if (!this.worker.isConnected()) return;
    this.worker.send(command, undefined, undefined, () => {});
  }

  /** SIGKILL: it ignores a lone signal for 1 s, waiting for our word. */
  protected kill(): void {
    this.worker.process.kill("SIGKILL");
  }
}

/** Round-robin (UNP serv05): deals each client, unread, to the next with room. */
export class Dealer {
  #members: ClusterMember[] = [];
  #waiting: Socket[] = []; // accepted, unread: no worker has room yet
  #turn = 0;
  #spare?: Deno.FsFile; // a descriptor kept for passing sockets on
  #closed = false;

  /** Deals what `acceptor` accepts (created with pauseOnConnect). */
  constructor(readonly acceptor: Server) {
    acceptor.on("connection", (socket: Socket) => this.deal(socket));
  }

  /** Listens on `address`, or exits 1 with one line. */
  async listen(address: Address, script: string): Promise<void> {
    await listenOn(this.acceptor, address).catch((why) => fail(script, why));
    this.acceptor.on("error", (error) => console.error(`accept: ${error}`));
    this.#keepSpare();
  }

  /** A new worker, dealt to once its `accepting` is set. */
  join(member: ClusterMember): void {
    this.#members.push(member);
  }

  /** A worker that exited. */
  leave(member: ClusterMember): void {
    this.#members = this.#members.filter((other) => other !== member);
  }

  /**
   * Gives `socket` to the next worker in turn that has room, or keeps it.
   * Only sockets go from the primary to a worker while it serves: Deno 2.9.6
   * loses a socket sent right before or after another message.
   */
  deal(socket: Socket): void {
    const members = this.#members;
    for (let i = 0; i < members.length && !this.#closed; i++) {
      const member = members[this.#turn++ % members.length];
      if (member.accepting && member.clients < member.share) {
        if (this.#handOver(member, socket)) return;
        break; // no descriptor to pass it with: it waits for one
      }
    }
    if (this.#closed) socket.destroy();
    else this.#waiting.push(socket);
  }

  /**
   * Sends `socket` to `member`; false if it could not. A send takes a
   * descriptor for a moment, which a primary that accepted up to its limit
   * lacks: so it keeps one spare, frees it for each send, takes it back after.
   */
  #handOver(member: ClusterMember, socket: Socket): boolean {
    this.#spare?.close();
    this.#spare = undefined;
    try {
      member.worker.send("client", socket, undefined, () => this.feed());
      member.clients++;
      return true;
    } catch {
      return false; // EMFILE: node:net says "This handle type cannot be sent"
    } finally {
      this.#keepSpare();
    }
  }

  /** Deals the waiting clients, in order, to workers that have room now. */
  feed(): void {
    this.#waiting.splice(0).forEach((socket) => this.deal(socket));
    this.#keepSpare();
  }

  /** Takes the spare descriptor back; accepts again once nobody waits. */
  #keepSpare(): void {
    try {
      this.#spare ??= Deno.openSync("/dev/null");
    } catch { /* still out of descriptors: the next send frees some */ }
    if (this.#spare && this.#waiting.length === 0) rearmAccept(this.acceptor);
  }

  /** Accepts no more; the clients not dealt yet are closed. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.acceptor.close();
    this.#waiting.splice(0).forEach((socket) => socket.destroy());
  }
}
