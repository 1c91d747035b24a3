/**
 * Finding the server to watch: the processes holding a port's or a path's
 * listening sockets, and the top of their tree; or why it cannot be watched.
 *
 * @module
 */
import * as proc from "./procfs.ts";
import { matchPath } from "./sockets.ts";

/** What to watch: a TCP port, a Unix socket path, or a process tree. */
export type Target = { port: number } | { unix: string } | { pid: number };

/** Why watching cannot start (or go on): one line, and the exit code. */
export class WatchError extends Error {
  constructor(message: string, readonly code = 1) {
    super(message);
  }
}

/**
 * The process to watch for a port or path: the top of the tree of processes
 * holding its listening sockets. Throws a WatchError saying why not.
 */
export function findRoot(target: { port: number } | { unix: string }): number {
  const where = "port" in target ? `port ${target.port}` : target.unix;
  let listeners: { inode: number; uid: number | undefined }[];
  if ("port" in target) {
    listeners = proc.tcpSockets(target.port)
      .filter((s) => s.state === proc.LISTEN && s.localPort === target.port);
  } else {
    const path = matchPath(proc.unixSockets(), target.unix);
    let uid: number | undefined;
    try {
      uid = Deno.statSync(target.unix).uid ?? undefined;
    } catch { /* removed after bind */ }
    listeners = proc.unixSockets()
      .filter((s) => s.listening && s.path === path)
      .map((s) => ({ inode: s.inode, uid }));
  }
  if (!listeners.length) {
    throw new WatchError(`nothing is listening on ${where}`);
  }
  const wanted = new Set(listeners.map((l) => l.inode));
  const holders: number[] = [];
  for (const pid of proc.allPids()) {
    try {
      if (proc.socketInodes(pid).some((inode) => wanted.has(inode))) {
        holders.push(pid);
      }
    } catch { /* another user's process */ }
  }
  if (!holders.length) {
    const uid = listeners.find((l) => l.uid !== undefined)?.uid;
    if (uid !== undefined && uid !== Deno.uid()) {
      const user = proc.userName(uid);
      throw new WatchError(
        `${where} is held by ${user}'s server, whose /proc entries you may ` +
          `not read: run watch.ts as ${user}, or with sudo`,
      );
    }
    throw new WatchError(`${where} is listening, but no process holds it`);
  }
  return topOf(holders);
}

/**
 * The highest ancestor of the holders that is still the same server: a
 * holder's parent that also holds the socket, or runs the same program.
 */
function topOf(holders: number[]): number {
  const set = new Set(holders);
  let top = Math.min(...holders);
  for (const pid of holders) {
    let at = pid;
    for (;;) {
      const parent = proc.stat(String(at))?.ppid ?? 0;
      if (parent <= 1) break;
      if (!set.has(parent) && program(parent) !== program(at)) break;
      at = parent;
    }
    top = depth(at) < depth(top) ? at : top;
  }
  return top;
}

/**
 * The program a process runs, enough to tell a worker from its parent's own
 * parent: the executable, its first word (`deno run` is not `deno test`) and
 * the script (`prefork.ts`), each without its directory.
 */
function program(pid: number): string {
  const argv = proc.cmdline(pid).map((arg) => arg.replace(/^.*\//, ""));
  const word = argv.slice(1).find((arg) => !arg.startsWith("-"));
  const script = argv.slice(1).find((arg) =>
    /\.(ts|js|mjs|cjs|py|rb|pl)$/.test(arg)
  );
  return [argv[0], word, script].join(" ");
}

function depth(pid: number): number {
  let n = 0;
  for (let at = pid; at > 1 && n < 1000; n++) {
    at = proc.stat(String(at))?.ppid ?? 0;
  }
  return n;
}
