/**
 * What Linux's /proc says about a process tree and the machine: the processes
 * a server started (and whether one outlived it), their memory and CPU time,
 * and what the machine is. Off Linux every reading is empty or zero.
 *
 * @module
 */
import { sleep } from "../lib/time.ts";

/** One process: enough to find it again, and to tell a reused pid apart. */
interface Proc {
  pid: number;
  /** Start time in clock ticks since boot: tells a reused pid apart. */
  start: number;
  /** Its command name (`/proc/PID/comm`). */
  command: string;
}

/** Clock ticks per second of /proc/PID/stat times (USER_HZ, 100 on Linux). */
const TICK_MS = 10;

/** The fields of /proc/PID/stat after the command name, or undefined. */
function statFields(pid: number | "self"): string[] | undefined {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  } catch {
    return undefined; // exited
  }
}

/** `pid` and all its descendants, read from /proc/PID/task/TID/children. */
export function processTree(pid: number): Proc[] {
  const tree: Proc[] = [];
  for (const stack = [pid]; stack.length;) {
    const next = stack.pop()!;
    const fields = statFields(next);
    if (!fields) continue;
    let command = "";
    try {
      command = Deno.readTextFileSync(`/proc/${next}/comm`).trim();
    } catch { /* exited */ }
    tree.push({ pid: next, start: Number(fields[19]), command });
    try {
      for (const task of Deno.readDirSync(`/proc/${next}/task`)) {
        const children = Deno.readTextFileSync(
          `/proc/${next}/task/${task.name}/children`,
        );
        for (const child of children.split(" ")) {
          if (child.trim()) stack.push(Number(child));
        }
      }
    } catch { /* exited while we looked */ }
  }
  return tree;
}

/** True while the process exists (a zombie too: nobody reaped it yet). */
export function isAlive(proc: Proc): boolean {
  const fields = statFields(proc.pid);
  return fields !== undefined && Number(fields[19]) === proc.start;
}

/**
 * Memory of the whole tree (threads and Workers included), in bytes: the sum
 * of each process's RSS, and of its PSS, which splits pages that processes
 * share (the deno executable, libc) among them instead of counting them in
 * full for each: the fairer sum for a tree of processes.
 */
export function treeMemory(pid: number): { rss: number; pss: number } {
  let rss = 0;
  let pss = 0;
  for (const proc of processTree(pid)) {
    try {
      const status = Deno.readTextFileSync(`/proc/${proc.pid}/status`);
      rss += Number(status.match(/^VmRSS:\s+(\d+) kB/m)?.[1] ?? 0) * 1024;
      const rollup = Deno.readTextFileSync(`/proc/${proc.pid}/smaps_rollup`);
      pss += Number(rollup.match(/^Pss:\s+(\d+) kB/m)?.[1] ?? 0) * 1024;
    } catch { /* exited */ }
  }
  return { rss, pss };
}

/** CPU time of a process and of its reaped children, in ms. */
export function cpuMs(pid: number | "self"): number {
  const fields = statFields(pid);
  if (!fields) return 0;
  // utime, stime, cutime, cstime (fields 14-17 of proc(5)).
  return (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) +
    Number(fields[14])) * TICK_MS;
}

/** CPU time of a server: every live process of its tree, and reaped ones. */
export function treeCpuMs(pid: number): number {
  return processTree(pid).reduce((sum, proc) => sum + cpuMs(proc.pid), 0);
}

/** A number from /proc/meminfo (`MemTotal`, `MemAvailable`), in bytes. */
export function meminfoBytes(field: string): number | undefined {
  try {
    const kb = Deno.readTextFileSync("/proc/meminfo")
      .match(new RegExp(`^${field}:\\s+(\\d+) kB`, "m"))?.[1];
    return kb === undefined ? undefined : Number(kb) * 1024;
  } catch {
    return undefined; // not Linux
  }
}

/** The machine a run measured, for the report's header. */
export interface Machine {
  cpus: number;
  cpuModel: string;
  memoryGiB: number;
  os: string;
  deno: string;
  v8: string;
  /** When the run started, ISO 8601 to the second. */
  date: string;
}

/** Describes this machine and this Deno. */
export function describeMachine(): Machine {
  let cpuModel = "unknown CPU";
  try {
    cpuModel = Deno.readTextFileSync("/proc/cpuinfo")
      .match(/^model name\s*:\s*(.+)$/m)?.[1].trim() ?? cpuModel;
  } catch { /* not Linux */ }
  const memory = meminfoBytes("MemTotal") ?? 0;
  return {
    cpus: navigator.hardwareConcurrency,
    cpuModel,
    memoryGiB: Math.round(memory / 1024 ** 3 * 10) / 10,
    os: `${Deno.build.os} ${Deno.osRelease()}`,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    date: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
  };
}

/**
 * The RSS of `pid`'s tree, in bytes, once it has settled: its lowest reading
 * once no lower one came for `quietMs` (V8 shrinks an idle heap some 8 s
 * after its last collection), or after `maxMs`. Polled: nothing announces it.
 */
export async function settledRss(
  pid: number,
  quietMs: number,
  maxMs = 3 * quietMs,
): Promise<number> {
  const started = performance.now();
  let lowest = treeMemory(pid).rss;
  let since = started;
  while (
    performance.now() - since < quietMs &&
    performance.now() - started < maxMs
  ) {
    await sleep(Math.min(250, quietMs / 4));
    const now = treeMemory(pid).rss;
    if (now < lowest - 256 * 1024) since = performance.now();
    lowest = Math.min(lowest, now);
  }
  return lowest;
}
