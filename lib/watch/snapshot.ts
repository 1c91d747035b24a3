/**
 * One picture of a running server, from /proc only: its listening sockets
 * and their accept queues, its process tree with roles, CPU, memory and
 * threads, and each accepted client under the process that holds it.
 *
 * @module
 */
import * as proc from "./procfs.ts";
import { type Role, roleOf } from "./roles.ts";
import { findRoot, type Target, WatchError } from "./find.ts";
import { noticeOf } from "./notice.ts";
import { type Sockets, socketsOf, somaxconn } from "./sockets.ts";

export { type Target, WatchError } from "./find.ts";

/** An accepted client connection. */
export interface Client {
  peer: string;
  /** Bytes the server has not read yet; null for a Unix socket. */
  recvQ: number | null;
  /** Bytes sent to the client, not yet acknowledged; null for Unix. */
  sendQ: number | null;
  /** Seconds since watch.ts first saw it. */
  seenSeconds: number;
}

/** A listening socket of the server. */
export interface Listener {
  address: string;
  /** Connections in its accept queue (the kernel's backlog). */
  waiting: number;
  /**
   * Its limit. /proc does not show it (only netlink does, as `ss -lnt`'s
   * Send-Q): null, and `backlogCeiling` bounds it.
   */
  backlog: number | null;
  pids: number[];
}

/** A thread with a name of its own (threaded.ts's `worker-N`). */
export interface NamedThread {
  tid: number;
  name: string;
  cpuPercent: number;
}

export interface Process {
  pid: number;
  ppid: number;
  role: Role;
  command: string;
  cpuPercent: number;
  rssKiB: number;
  threads: number;
  namedThreads: NamedThread[];
  /** Threads named as the process is (its own main one too): a C or Python
   * server's threads, which name none of their own. */
  plainThreads: number;
  clients: Client[];
}

export interface Snapshot {
  time: string;
  port: number | null;
  path: string | null;
  pid: number;
  waiting: number;
  clients: number;
  listeners: Listener[];
  /** Peers of the connections waiting in the accept queues. */
  waitingPeers: string[];
  /** net.core.somaxconn: no listener's backlog can exceed it. */
  backlogCeiling: number | null;
  processes: Process[];
  threads: number;
  rssKiB: number;
  /** One plain sentence of what to notice, or null. */
  notice: string | null;
  /** How long reading /proc took, in ms. */
  snapshotMs: number;
}

/** Threads every Deno (2.9.6) or Node process has: not worth naming. */
const RUNTIME_THREADS = new Set(["tokio-runtime-w", "V8 DefaultWorke"]);

/** Watches one server, remembering what the last snapshot saw. */
export class Watcher {
  /** Each process's descriptors and socket inodes, as last read. */
  #links = new Map<number, { fds: string; inodes: number[] }>();
  /** The server's socket inodes (listeners, clients) the last time. */
  #known = new Set<number>();
  #count = 0;
  #cpu = new Map<string, { ticks: number; at: number }>();
  #cpuNext = new Map<string, { ticks: number; at: number }>();
  #seen = new Map<number, number>();
  #rootStart: number;

  private constructor(
    readonly target: Target,
    readonly root: number,
    rootStart: number,
  ) {
    this.#rootStart = rootStart;
  }

  /** Finds the server; throws a WatchError when it cannot be watched. */
  static open(target: Target): Watcher {
    const root = "pid" in target ? target.pid : findRoot(target);
    const stat = proc.stat(String(root));
    if (!stat) throw new WatchError(`no process ${root}`);
    try {
      proc.fds(root);
    } catch { // not ours to read: say whose (with a port, findRoot did)
      const user = proc.userName(proc.status(root)?.uid ?? -1);
      throw new WatchError(
        `pid ${root} is ${user}'s, whose /proc entries you may not read: ` +
          `run watch.ts as ${user}, or with sudo`,
      );
    }
    return new Watcher(target, root, stat.start);
  }

  /** True while the server's first process still runs (not a reused pid). */
  get alive(): boolean {
    return proc.stat(String(this.root))?.start === this.#rootStart;
  }

  /** Reads /proc once; undefined when the server has exited. */
  snapshot(): Snapshot | undefined {
    const began = performance.now();
    if (!this.alive) return undefined;
    const now = proc.uptime();
    const tree = processTree(this.root);
    let inodes: Map<number, number[]>; // pid -> socket inodes
    let sockets: Sockets;
    if ("pid" in this.target) { // the tree's sockets say which port
      inodes = this.#inodes(tree, false);
      sockets = socketsOf(this.target, holders(inodes));
    } else {
      sockets = socketsOf(this.target, new Map());
      inodes = this.#inodes(tree, true, sockets);
    }
    const held = holders(inodes);
    const listeners: Listener[] = sockets.listeners.map((s) => ({
      address: s.address,
      waiting: s.waiting,
      backlog: null,
      pids: held.get(s.inode) ?? [],
    }));
    const listening = new Set(listeners.flatMap((l) => l.pids));
    // A client socket inherited by several processes counts once, for the
    // deepest: the one that serves it.
    const owner = new Map<number, number>();
    for (const p of tree) {
      for (const inode of inodes.get(p.pid) ?? []) {
        if (sockets.clients.has(inode)) owner.set(inode, p.pid);
      }
    }
    const seen = new Map<number, number>();
    const processes = tree.map(({ pid, stat, parent }): Process => {
      const argv = proc.cmdline(pid);
      const threads = this.#threads(pid, stat, now);
      const clients: Client[] = [];
      for (const inode of inodes.get(pid) ?? []) {
        if (owner.get(inode) !== pid) continue;
        const since = this.#seen.get(inode) ?? now;
        seen.set(inode, since);
        const socket = sockets.clients.get(inode)!;
        clients.push({ ...socket, seenSeconds: round(now - since) });
      }
      clients.sort((a, b) => b.seenSeconds - a.seenSeconds);
      const place = {
        isRoot: pid === this.root,
        hasChildren: tree.some((p) => p.parent === pid),
        holdsListener: listening.has(pid),
      };
      return {
        pid,
        ppid: parent ?? stat.ppid,
        role: roleOf(argv, place.isRoot ? [] : proc.environNames(pid), place),
        command: argv.join(" ") || stat.name,
        cpuPercent: this.#percent(String(pid), stat, now),
        rssKiB: proc.status(pid)?.rssKiB ?? 0,
        threads: threads.count,
        namedThreads: threads.named,
        plainThreads: threads.plain,
        clients,
      };
    });
    this.#seen = seen;
    // What this snapshot read is the next one's start; gone pids are dropped.
    [this.#cpu, this.#cpuNext] = [this.#cpuNext, new Map()];
    const clients = processes.reduce((n, p) => n + p.clients.length, 0);
    const waiting = listeners.reduce((n, l) => n + l.waiting, 0);
    const snapshot: Snapshot = {
      time: new Date().toISOString(),
      port: "port" in this.target ? this.target.port : sockets.port,
      path: "unix" in this.target ? this.target.unix : sockets.path,
      pid: this.root,
      waiting,
      clients,
      listeners,
      waitingPeers: sockets.waitingPeers,
      backlogCeiling: somaxconn(),
      processes,
      threads: processes.reduce((n, p) => n + p.threads, 0),
      rssKiB: processes.reduce((n, p) => n + p.rssKiB, 0),
      notice: null,
      snapshotMs: 0,
    };
    snapshot.notice = noticeOf(snapshot);
    snapshot.snapshotMs = round(performance.now() - began);
    return snapshot;
  }

  /**
   * The socket inodes each process of `tree` holds. Reading every
   * descriptor's link is most of a snapshot's cost with many clients, so a
   * process whose descriptors are the same numbers as last time keeps last
   * time's inodes, if the kernel's table agrees: each of the server's sockets
   * still has a holder and none that was known has gone. Otherwise, and
   * every tenth snapshot anyway, every link is read again.
   */
  #inodes(tree: Member[], reuse: boolean, sockets?: Sockets) {
    const read = (reuse: boolean) => {
      const inodes = new Map<number, number[]>();
      const links = new Map<number, { fds: string; inodes: number[] }>();
      for (const { pid } of tree) {
        let names: string[] = [];
        try {
          names = proc.fds(pid);
        } catch { /* another user's child: shown without its sockets */ }
        const fds = names.join(" ");
        const last = this.#links.get(pid);
        const mine = reuse && last?.fds === fds
          ? last.inodes
          : proc.socketInodes(pid, names);
        inodes.set(pid, mine);
        links.set(pid, { fds, inodes: mine });
      }
      this.#links = links; // the tree's only: gone processes are forgotten
      return inodes;
    };
    reuse &&= this.#count++ % 10 !== 0;
    let inodes = read(reuse);
    if (!sockets) return inodes;
    const wanted = new Set([
      ...sockets.listeners.map((l) => l.inode),
      ...sockets.clients.keys(),
    ]);
    const held = new Set([...inodes.values()].flat());
    const agrees = [...wanted].every((inode) => held.has(inode)) &&
      [...this.#known].every((inode) => !held.has(inode) || wanted.has(inode));
    if (reuse && !agrees) inodes = read(false);
    this.#known = wanted;
    return inodes;
  }

  /** CPU % of one core since the last snapshot (the first: since start). */
  #percent(key: string, stat: proc.Stat, now: number): number {
    const last = this.#cpu.get(key);
    this.#cpuNext.set(key, { ticks: stat.cpuTicks, at: now });
    const [ticks, seconds] = last
      ? [stat.cpuTicks - last.ticks, now - last.at]
      : [stat.cpuTicks, now - stat.start / proc.TICKS_PER_SECOND];
    if (seconds <= 0) return 0;
    return round(ticks / proc.TICKS_PER_SECOND / seconds * 100);
  }

  #threads(pid: number, stat: proc.Stat, now: number) {
    const tids = proc.tasks(pid);
    const named: NamedThread[] = [];
    let plain = 1;
    for (const tid of tids) {
      if (tid === pid) continue;
      const task = proc.stat(`${pid}/task/${tid}`);
      if (task?.name === stat.name) plain++;
      if (!task || task.name === stat.name || RUNTIME_THREADS.has(task.name)) {
        continue;
      }
      const cpuPercent = this.#percent(`${pid}/${tid}`, task, now);
      named.push({ tid, name: task.name, cpuPercent });
    }
    return { count: tids.length, named, plain };
  }
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}

/** Which processes hold each socket inode. */
function holders(inodes: Map<number, number[]>): Map<number, number[]> {
  const held = new Map<number, number[]>();
  for (const [pid, mine] of inodes) {
    for (const inode of mine) held.set(inode, [...held.get(inode) ?? [], pid]);
  }
  return held;
}

interface Member {
  pid: number;
  stat: proc.Stat;
  parent?: number;
}

/** `root` and its descendants, parents before children. */
function processTree(root: number): Member[] {
  const tree: Member[] = [];
  for (const queue: [number, number?][] = [[root]]; queue.length;) {
    const [pid, parent] = queue.shift()!;
    const stat = proc.stat(String(pid));
    if (!stat) continue;
    tree.push({ pid, stat, parent });
    for (const child of proc.children(pid)) queue.push([child, pid]);
  }
  return tree;
}
