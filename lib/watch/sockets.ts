/**
 * A server's sockets in the kernel's tables (/proc/net/tcp, tcp6, unix):
 * its listeners and their accept queues, the connections waiting there, and
 * the accepted ones, by inode, for the process that holds each.
 *
 * @module
 */
import * as proc from "./procfs.ts";
import type { Target } from "./find.ts";

/** The server's sockets in the kernel's tables. */
export interface Sockets {
  port: number | null;
  path: string | null;
  listeners: { address: string; inode: number; waiting: number }[];
  clients: Map<
    number,
    { peer: string; recvQ: number | null; sendQ: number | null }
  >;
  waitingPeers: string[];
}

/** Reads the kernel's socket tables for the target's port or path. */
export function socketsOf(
  target: Target,
  held: Map<number, number[]>,
): Sockets {
  const found: Sockets = {
    port: null,
    path: null,
    listeners: [],
    clients: new Map(),
    waitingPeers: [],
  };
  if (!("port" in target)) {
    // A Unix path, or any socket the tree listens on (`--pid`).
    const unix = proc.unixSockets();
    const path = "unix" in target
      ? matchPath(unix, target.unix)
      : unix.find((s) => s.listening && held.has(s.inode))?.path;
    if (path !== undefined) {
      found.path = path;
      let waiting = 0;
      for (const s of unix) {
        if (s.path !== path || s.listening) continue;
        // A connection not yet accepted is in the table, held by no file.
        if (s.inode === 0) waiting++;
        else found.clients.set(s.inode, UNIX_PEER);
      }
      for (const s of unix) {
        if (s.path === path && s.listening) {
          found.listeners.push({
            address: `unix:${path}`,
            inode: s.inode,
            waiting,
          });
          waiting = 0; // one listener per path: the waiting are its own
        }
      }
      // waitingPeers stays empty: a Unix client bound to no path has no name.
      return found;
    }
    if ("unix" in target) return found;
  }
  const port = "port" in target
    ? target.port
    : proc.tcpSockets().find((s) => held.has(s.inode))?.localPort;
  if (port === undefined) return found;
  const tcp = proc.tcpSockets(port);
  found.port = port;
  for (const s of tcp) {
    if (s.localPort !== port) continue;
    if (s.state === proc.LISTEN) {
      found.listeners.push({
        address: s.local,
        inode: s.inode,
        waiting: s.rxQueue,
      });
    } else if (s.inode === 0) {
      if (s.state === ESTABLISHED || s.state === CLOSE_WAIT) {
        found.waitingPeers.push(s.remote); // or an orphan closing: skipped
      }
    } else {
      found.clients.set(s.inode, {
        peer: s.remote,
        recvQ: s.rxQueue,
        sendQ: s.txQueue,
      });
    }
  }
  return found;
}

/** A Unix client: no name (it bound no path), no queue sizes in /proc. */
const UNIX_PEER = { peer: "unix", recvQ: null, sendQ: null };
const ESTABLISHED = 0x01;
const CLOSE_WAIT = 0x08;

/** The path as the kernel recorded it at bind: as given, or absolute. */
export function matchPath(
  unix: proc.UnixSocket[],
  path: string,
): string | undefined {
  let absolute = path;
  try {
    absolute = Deno.realPathSync(path);
  } catch { /* gone: match as given */ }
  return unix.find((s) =>
    s.listening && (s.path === path || s.path === absolute)
  )
    ?.path;
}

export function somaxconn(): number | null {
  try {
    return Number(Deno.readTextFileSync("/proc/sys/net/core/somaxconn"));
  } catch {
    return null;
  }
}
