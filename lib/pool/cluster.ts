/**
 * A pool of node:cluster worker processes, cluster.ts's plumbing: each
 * worker's side (serve its share of the clients, keep the others unread,
 * obey the primary) and the primary's (keep the workers with supervisor.ts's
 * policy: restart with backoff, give up after 5 failed starts, one banner once
 * all listen, a two-phase stop; and deal the waiting clients to workers with
 * room). Workers and primary pass sockets over node:cluster's IPC channel.
 *
 * @module
 */
import cluster from "node:cluster";
import type { ListenOptions, Server, Socket } from "node:net";
import process from "node:process";
import { fail, type ServerOptions } from "../cli.ts";
import { bindErrorText, listenOrExit } from "../listen.ts";
import * as log from "../log.ts";
import { onShutdownSignal } from "../signals.ts";
import { Backoff } from "./supervisor.ts";
import { NodeEchoServer } from "./node_serve.ts";
import { describeExit } from "../process/children.ts";
import { sleep, within } from "../time.ts";

/** Where the pool listens: node:net's form of the reserved address. */
type Address = ListenOptions & { path?: string };

/** Listens `server` on `address`; rejects with "cannot listen on X: why". */
function listenOn(server: Server, address: Address): Promise<void> {
  const { path, host: hostname = "", port = 0 } = address;
  const where = path ?? log.formatAddr({ transport: "tcp", hostname, port });
  return new Promise((resolve, reject) => {
    server.once("error", (error: NodeJS.ErrnoException) => {
      // In listen.ts's words, which know Deno's errors.
      const inUse = error.code === "EADDRINUSE";
      const why = inUse ? new Deno.errors.AddrInUse() : error;
      const text = bindErrorText(why, path !== undefined);
      reject(`cannot listen on ${path ? "unix:" : ""}${where}: ${text}`);
    }).listen(address, resolve);
  });
}

/**
 * Makes `listener` accept again. Out of file descriptors, Deno 2.9.6's
 * node:net stops accepting for good, with no error (a lone node:net server
 * under `ulimit -n 64` and 144 clients at once: 40 served, then none). Its
 * libuv port re-arms the accept on a second listen(): the clients waiting in
 * the backlog are then served (144 of 144). So whoever held more clients than
 * fit calls this as each one leaves.
 */
function rearmAccept(listener: Server | undefined): void {
  const handle = (listener as { _handle?: { listen?(backlog: number): void } })
    ?._handle;
  handle?.listen?.(511); // node:net's default backlog
}

/** What a worker learns from the environment variable {@linkcode ROLE}. */
interface Role {
  slot: number;
  address: Address;
  /** Its share of `--max-conns`. */
  share: number;
}

const ROLE = "CLUSTER_POOL_WORKER";

/**
 * This process as a worker of a {@linkcode ClusterPool}: serves at most its
 * share of clients, accepted (`listen`) or handed over by the primary, and
 * keeps the others, unread, until one of its own leaves; obeys the primary:
 * `accept` (the banner is out), `stop-accepting`, then `drain` (the clients
 * get `--grace` seconds) or `end` (now). A stop signal, or the primary's
 * death, drains too.
 */
export class ClusterWorker {
  /** The worker's echo server. */
  readonly server: NodeEchoServer;
  #role: Role = JSON.parse(process.env[ROLE]!);
  #waiting: Socket[] = []; // before the banner, or over the share: unread
  #accepting = false;
  #listener?: Server;
  #stopping = false;
  #drained?: Promise<void>;

  /** Joins the pool, with the primary's command line. */
  constructor(options: ServerOptions) {
    this.server = new NodeEchoServer(options, this.#role.slot, () => {
      if (!this.#listener) this.#tell("closed"); // the primary deals: it counts
      const next = this.#waiting.shift();
      if (next) this.serve(next), rearmAccept(this.#listener);
    });
    process.on("message", (word, socket?: Socket) => {
      if (word === "client") this.serve(socket!);
      if (word === "accept") {
        this.#accepting = true;
        this.#waiting.splice(0).forEach((socket) => this.serve(socket));
      }
      if (word === "stop-accepting") this.#stopAccepting();
      if (word === "drain" || word === "end") this.#stop(word === "end");
    });
    onShutdownSignal((_, count) => this.#stop(count > 1));
    // The primary's death (SIGKILL too) closes our channel to it: we drain
    // then, instead of node:cluster's exit(0). Deno 2.9.6 may miss it, so a
    // change of parent (to pid 1 or a subreaper) tells as well.
    cluster.worker!.exitedAfterDisconnect = true;
    process.on("disconnect", () => this.#stop());
    const parent = process.ppid;
    const lifeline = setInterval(() => {
      if (process.ppid !== parent) this.#stop(), clearInterval(lifeline);
    }, 500);
    Deno.unrefTimer(lifeline);
  }

  /**
   * Serves `socket` (never read), or keeps it unread until the banner is out
   * or one of this worker's clients leaves. (A full worker cannot stop
   * accepting: Deno's node:net takes every waiting connection whenever it
   * can, has no pause, and closing the listener drops what it took.)
   */
  serve(socket: Socket): void {
    const { server } = this;
    const { share } = this.#role;
    if (this.#stopping) socket.destroy();
    else if (!this.#accepting || server.active >= share) {
      this.#waiting.push(socket);
    } else {
      server.serve(socket);
    }
  }

  /**
   * Listens `listener` on the pool's one socket (in a worker, node:cluster
   * makes listen() take a copy of the primary's) and tells the primary; or
   * tells it why not and exits 1. Without a listener, the primary deals.
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
    this.#accepting = !listener; // the primary deals only after the banner
    this.#tell("listening");
  }

  #tell(word: unknown): void {
    try {
      if (process.connected) process.send!(word);
    } catch { /* the primary is gone: the lifeline drains us */ }
  }

  #stopAccepting(): void {
    this.#stopping = true;
    this.#listener?.close();
    this.#waiting.splice(0).forEach((socket) => socket.destroy());
    this.#tell("not-accepting");
  }

  #stop(now = false): void {
    if (!this.#stopping) this.#stopAccepting();
    this.#drained ??= this.server.stop().then(() => Deno.exit(0));
    if (now) this.server.stop(); // its second call ends the clients at once
  }
}

/** The primary's side of one worker process. */
class Member {
  readonly name: string;
  readonly fields: { worker: number; workerPid?: number };
  accepting = false; // listening, and told the banner is out
  clients = 0; // dealt to it and not closed yet (round-robin)
  readonly notAccepting = Promise.withResolvers<void>();
  readonly gone = Promise.withResolvers<void>();

  constructor(
    readonly worker: ReturnType<typeof cluster.fork>,
    slot: number,
    readonly share: number,
  ) {
    this.name = `worker ${slot} (pid ${worker.process.pid})`;
    this.fields = { worker: slot, workerPid: worker.process.pid };
  }

  /** Sends a word, unless the worker is gone. */
  send(word: string): void {
    try {
      if (this.worker.isConnected()) this.worker.send(word);
    } catch { /* it exited just now (a broken pipe): its exit is handled */ }
  }
}

/**
 * The primary of N node:cluster workers: reserves the address, forks the
 * workers, prints the banner once all listen, restarts those that die
 * (0.1 s doubling to 5 s, reset after 10 s of health; 5 failed starts in a
 * row: exit 1 with one line), deals clients to workers with room, and stops
 * in two phases on SIGINT, SIGTERM or SIGHUP (a second one ends clients now).
 */
export class ClusterPool {
  /** The primary's log. */
  readonly log: log.Logger;
  #members: (Member | undefined)[] = [];
  #waiting: Socket[] = []; // accepted, unread: no worker has room yet
  #acceptor?: Server;
  #spare?: Deno.FsFile; // a descriptor kept for passing sockets on
  #addr?: Deno.Addr;
  #turn = 0;
  #listened = new Set<number>(); // the slots whose worker has listened
  #bannered = false;
  #stopping = false;
  #code = 0;
  #restarts = new AbortController();

  /** A pool of `size` workers; `banner` words follow the model's name. */
  constructor(
    readonly options: ServerOptions,
    readonly size: number,
    readonly banner: string[],
    readonly fields: Record<string, unknown>,
  ) {
    this.log = new log.Logger(options);
    // First of all: from now on no signal can kill us and leave workers.
    onShutdownSignal((signal, count) =>
      count === 1 ? this.stop(signal) : this.#tellAll("end")
    );
  }

  /**
   * Finds the address (port 0 becomes a free one) and frees it for the pool
   * to bind; exits 1 with one line if it is taken. With `acceptor`, listens
   * on it: the primary accepts, and deals the clients to the workers.
   */
  async reserve(acceptor?: Server): Promise<void> {
    const probe = await listenOrExit(this.options);
    this.#addr = probe.addr;
    probe.close(); // Deno unlinks a Unix socket it closes; Node binds only then
    if (this.options.unix) await Deno.remove(this.options.unix).catch(() => {});
    if (!acceptor) return;
    await listenOn(acceptor, this.#address())
      .catch((why) => fail(this.options.script, why));
    acceptor.on("error", (error) => this.log.error(`accept: ${error}`));
    this.#acceptor = acceptor;
    this.#keepSpare();
  }

  #address(): Address {
    const addr = this.#addr as Deno.NetAddr | Deno.UnixAddr;
    if ("path" in addr) return { path: addr.path };
    return { host: addr.hostname, port: addr.port };
  }

  /** Starts the workers; the banner follows once every one listens. */
  start(): void {
    for (let slot = 1; slot <= this.size; slot++) this.#keep(slot);
  }

  /**
   * Gives `socket` (accepted here, never read) to the next worker in turn
   * that has room, or keeps it until one has. Only sockets go from the
   * primary to a worker while it serves: Deno 2.9.6 loses a socket sent
   * right before or after another message.
   */
  deal(socket: Socket): void {
    for (let i = 0; i < this.size && !this.#stopping; i++) {
      const member = this.#members[this.#turn++ % this.size];
      if (member?.accepting && member.clients < member.share) {
        if (this.#handOver(member, socket)) return;
        break; // no descriptor to pass it with: it waits for one
      }
    }
    if (this.#stopping) socket.destroy();
    else this.#waiting.push(socket);
  }

  /**
   * Sends `socket` to `member`; false if it could not (the socket stays
   * here). A send takes a descriptor for a moment (a copy of the socket's),
   * and a primary that accepted up to its limit would have none: so it keeps
   * one spare, frees it for each send, and takes it back after (then deals
   * again).
   */
  #handOver(member: Member, socket: Socket): boolean {
    this.#spare?.close();
    this.#spare = undefined;
    try {
      member.worker.send("client", socket, undefined, () => this.#feed());
      member.clients++;
      return true;
    } catch {
      return false; // EMFILE: node:net says "This handle type cannot be sent"
    } finally {
      this.#keepSpare();
    }
  }

  /** Takes the spare descriptor back; accepts again once nobody waits. */
  #keepSpare(): void {
    try {
      this.#spare ??= Deno.openSync("/dev/null");
    } catch { /* still out of descriptors: the next send frees some */ }
    if (this.#spare && this.#waiting.length === 0) rearmAccept(this.#acceptor);
  }

  /** Runs a worker in `slot`, and another when it exits, until the stop. */
  #keep(slot: number, backoff = new Backoff()): void {
    const { options: { maxConns }, size } = this;
    const started = performance.now();
    // The shares differ by one at most and add up to --max-conns.
    const share = Math.floor(maxConns / size) +
      (slot <= maxConns % size ? 1 : 0);
    const address = this.#address();
    const role: Role = { slot, address, share };
    const worker = cluster.fork({ [ROLE]: JSON.stringify(role) });
    const member = this.#members[slot - 1] = new Member(worker, slot, share);
    let [listened, error] = [false, undefined as string | undefined];
    worker.on("message", (word) => {
      if (word === "closed") {
        member.clients--;
        this.#feed();
      }
      if (word === "listening" && !this.#stopping) {
        listened = true;
        this.#listened.add(slot);
        if (this.#bannered) this.#admit(member);
        else if (this.#listened.size === size) this.#printBanner();
      }
      if (word === "not-accepting") member.notAccepting.resolve();
      if (word?.failed) error = word.failed;
    });
    worker.on("exit", (code: number | null, signal: string | null) => {
      if (this.#members[slot - 1] === member) delete this.#members[slot - 1];
      member.notAccepting.resolve();
      member.gone.resolve();
      if (this.#stopping) return;
      const ran = performance.now() - started;
      const { text, fields } = describeExit(
        { success: false, code: code ?? 1, signal: signal as Deno.Signal },
        ran,
      );
      const delay = backoff.next(listened, ran);
      if (delay === undefined) {
        const times = `${backoff.policy.attempts} times in a row`;
        return this.#giveUp(
          error ?? `${member.name} ${text} before listening, ${times}`,
        );
      }
      const why = listened
        ? ""
        : ` before listening${error ? ` (${error})` : ""}`;
      this.log.event(
        "worker-exited",
        `${member.name} ${text}${why}; restarting in ${delay} ms`,
        { ...member.fields, ...fields, restartMs: delay },
        true,
      );
      sleep(delay, this.#restarts.signal).then(() => {
        if (this.#stopping) return;
        this.#keep(slot, backoff);
      });
    });
  }

  /** Deals the waiting clients, in order, to workers that have room now. */
  #feed(): void {
    this.#waiting.splice(0).forEach((socket) => this.deal(socket));
    this.#keepSpare();
  }

  #admit(member: Member): void {
    const text = `${member.name} listening`;
    this.log.event("worker-listening", text, member.fields);
    member.accepting = true;
    if (this.#acceptor) this.#feed(); // it serves at once
    else member.send("accept");
  }

  #printBanner(): void {
    const { options: { model, maxConns, fdCapNote } } = this;
    this.#bannered = true;
    const words = [model, ...this.banner, `pid ${Deno.pid}`];
    const fields = { model, maxConns, ...this.fields };
    this.log.listening(this.#addr!, words, fields);
    if (fdCapNote) this.log.event("max-conns", fdCapNote, { maxConns }, true);
    this.#members.forEach((member) => member && this.#admit(member));
  }

  #giveUp(reason: string): void {
    try {
      console.error(`${this.options.script}: ${reason}`);
    } catch { /* stderr closed */ }
    this.#code = 1;
    this.stop("giving up");
  }

  #tellAll(word: string): void {
    for (const member of this.#members) member?.send(word);
  }

  /**
   * The two-phase stop: every worker stops accepting, then "stopping" is
   * logged, then each drains for `--grace` seconds (5 s more and it is
   * killed); exits once all are gone.
   */
  async stop(reason: string): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    this.#restarts.abort();
    this.#acceptor?.close();
    const { grace } = this.options;
    const live = this.#members.filter((member) => member !== undefined);
    for (const member of live) {
      if (member.accepting) member.send("stop-accepting");
      else member.worker.process.kill("SIGTERM"); // no client yet
    }
    await Promise.all(live.map((member) => member.notAccepting.promise));
    this.#waiting.splice(0).forEach((socket) => socket.destroy());
    this.log.event(
      "stopping",
      `stopping (${reason}): ${live.length} worker(s) no longer accept; their clients get ${grace} s to finish`,
      { reason, workers: live.length, grace },
      true,
    );
    this.#tellAll("drain");
    const gone = Promise.all(live.map((member) => member.gone.promise));
    if (!(await within(gone, grace * 1000 + 5_000))) {
      live.forEach((member) => member.worker.process.kill("SIGKILL"));
    }
    await gone;
    this.log.event("stopped", "stopped", {}, true);
    Deno.exit(this.#code);
  }
}
