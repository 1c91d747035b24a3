/**
 * The one plain sentence a class should notice in a snapshot.
 *
 * @module
 */
import type { Snapshot } from "./snapshot.ts";

/** One plain sentence for a class: the most telling fact on screen. */
export function noticeOf(s: Snapshot): string | null {
  const plural = (n: number, word: string) =>
    `${n} ${word}${n === 1 ? "" : word.endsWith("s") ? "es" : "s"}`;
  if (s.waiting > 0) {
    const verb = s.waiting === 1 ? "waits" : "wait";
    return `${plural(s.waiting, "client")} ${verb} in the kernel's backlog: ` +
      "connected, not yet accepted.";
  }
  const queued = s.processes.flatMap((p) => p.clients)
    .find((c) => (c.sendQ ?? 0) + (c.recvQ ?? 0) > 0);
  if (queued?.sendQ) {
    return `${queued.sendQ} bytes to ${queued.peer} wait in the kernel: ` +
      "that client is not reading what it is sent (backpressure).";
  }
  if (queued?.recvQ) {
    return `${queued.recvQ} bytes from ${queued.peer} wait in the kernel, ` +
      "not yet read: the server is busy, or holds back.";
  }
  if (s.listeners.length > 1) {
    return `${s.listeners.length} listening sockets on one port ` +
      "(SO_REUSEPORT): the kernel picks one per new client; each has its own queue.";
  }
  const holders = s.listeners[0]?.pids ?? [];
  if (holders.length > 1) {
    const workers = s.processes
      .filter((p) => holders.includes(p.pid) && p.role === "worker").length;
    const who = workers === holders.length
      ? `${workers} workers`
      : `${holders.length} processes (${workers} workers)`;
    return `one listening socket held by ${who}: whichever accepts first ` +
      "takes the next client.";
  }
  const dealer = s.processes[0];
  if (
    holders.length === 1 && holders[0] === dealer?.pid &&
    dealer.clients.length === 0 && s.clients > 0
  ) {
    return "the parent holds the one listening socket and none of the " +
      "clients: it accepts each one and hands it to a worker.";
  }
  const children = s.processes.filter((p) => p.role === "child").length;
  if (children > 0 && s.clients > 0) {
    return `${plural(children, "child process")} for ${
      plural(s.clients, "client")
    }: ` +
      "a process per client.";
  }
  const named = s.processes.reduce((n, p) => n + p.namedThreads.length, 0);
  if (named > 0) {
    return `${plural(named, "worker thread")} in one process: a thread per ` +
      "client, or a pool.";
  }
  const [only] = s.processes;
  if (s.clients > 1 && s.processes.length === 1) {
    // Deno has 2 threads named as its process; a thread per client adds one
    // each (a C or Python server's threads carry their process's name).
    return only.plainThreads > s.clients
      ? `${s.clients} clients in one process of ${only.plainThreads} ` +
        "like-named threads: a thread per client."
      : `${s.clients} clients, one process, no thread per client: ` +
        "an event loop serves them all.";
  }
  return null;
}
