/**
 * A snapshot as text for people: the listening sockets and their queues, the
 * process tree with each process's clients, a summary line and what to
 * notice. Plain text: the caller decides whether to clear a terminal first.
 *
 * @module
 */
import type { Process, Snapshot } from "./snapshot.ts";

/** Clients listed under one process; the JSON has them all. */
const CLIENTS_SHOWN = 6;

/** The screen for one snapshot, `width` columns wide at most. */
export function render(s: Snapshot, intervalS: number, width = 100): string {
  const where = s.path !== null ? `unix:${s.path}` : `port ${s.port}`;
  const clock = s.time.slice(11, 19);
  const out: string[] = [
    `watch.ts: ${where}, server pid ${s.pid}, every ${intervalS} s` +
    ` (${clock} UTC, read in ${s.snapshotMs} ms)`,
    "",
  ];
  if (!s.listeners.length) out.push("  not listening (yet, or any more)");
  for (const l of s.listeners) {
    const pids = l.pids.length ? l.pids.join(", ") : "nobody";
    out.push(
      `  listening ${l.address}  ${l.waiting} waiting  held by pid ${pids}`,
    );
  }
  if (s.waitingPeers.length) {
    const shown = s.waitingPeers.slice(0, CLIENTS_SHOWN).join(", ");
    const more = s.waitingPeers.length - CLIENTS_SHOWN;
    out.push(
      `    in the backlog: ${shown}${more > 0 ? ` and ${more} more` : ""}`,
    );
  }
  if (s.backlogCeiling !== null && s.port !== null && s.waiting > 0) {
    out.push(
      `    (the backlog's limit is not in /proc, \`ss -lnt\` shows it: ` +
        `at most net.core.somaxconn, ${s.backlogCeiling})`,
    );
  }
  out.push(
    "",
    "  PID      PPID     ROLE     CPU%    RSS   THR  COMMAND",
  );
  for (const p of s.processes) out.push(...processLines(p, s.pid));
  out.push(
    "",
    `  ${count(s.clients, "client")} served, ${s.waiting} waiting in the ` +
      `backlog, ${count(s.processes.length, "process", "es")}, ` +
      `${count(s.threads, "thread")}, ${mib(s.rssKiB)} RSS`,
  );
  const lines = out.map((line) => clip(line, width));
  if (s.notice) lines.push(...wrap(`  Notice: ${s.notice}`, width));
  return lines.join("\n");
}

function processLines(p: Process, root: number): string[] {
  const indent = p.pid === root ? "" : "  ";
  const lines = [
    `  ${indent}${pad(p.pid, 9 - indent.length)}${pad(p.ppid, 9)}${
      pad(p.role, 8)
    }${right(p.cpuPercent.toFixed(1), 5)} ${right(mib(p.rssKiB), 9)} ${
      right(p.threads, 4)
    }  ${shortCommand(p.command)}`,
  ];
  if (p.namedThreads.length) {
    const named = p.namedThreads.map((t) => `${t.name} ${t.cpuPercent}%`);
    lines.push(`  ${indent}    threads: ${named.join(", ")}`);
  }
  for (const c of p.clients.slice(0, CLIENTS_SHOWN)) {
    const queues = c.recvQ === null
      ? "(no name, no queue sizes in /proc for a Unix socket)"
      : `Recv-Q ${c.recvQ}, Send-Q ${c.sendQ}`;
    lines.push(
      `  ${indent}    client ${c.peer}  ${queues}, seen ${c.seenSeconds} s`,
    );
  }
  const more = p.clients.length - CLIENTS_SHOWN;
  if (more > 0) lines.push(`  ${indent}    ... and ${more} more clients`);
  return lines;
}

/**
 * A command line without what every Deno child of this collection repeats
 * (the full path of deno, its permission and unstable flags).
 */
export function shortCommand(command: string): string {
  return command.split(" ")
    .filter((arg) => !/^--(allow|deny|unstable|no-prompt|no-config)/.test(arg))
    .map((arg, i) => i === 0 ? arg.replace(/^.*\//, "") : arg)
    .map((arg) => arg.replace(/^\/\S*\/([^/]+\.ts)$/, "$1"))
    .join(" ");
}

function count(n: number, word: string, suffix = "s"): string {
  return `${n} ${word}${n === 1 ? "" : suffix}`;
}

function mib(kib: number): string {
  return `${(kib / 1024).toFixed(1)} MiB`;
}

function pad(value: unknown, width: number): string {
  return String(value).padEnd(width);
}

function right(value: unknown, width: number): string {
  return String(value).padStart(width);
}

/** Words to lines of at most `width` columns, the rest indented. */
function wrap(text: string, width: number): string[] {
  const lines = [""];
  for (const word of text.trimStart().split(" ")) {
    const last = lines[lines.length - 1];
    if (last && `    ${last} ${word}`.length > width) lines.push(word);
    else lines[lines.length - 1] = last ? `${last} ${word}` : word;
  }
  return lines.map((line, i) => (i ? "    " : "  ") + line);
}

function clip(line: string, width: number): string {
  return line.length > width ? `${line.slice(0, width - 3)}...` : line;
}
