/**
 * A server's lifeline: nothing it started outlives it, even when it dies by
 * SIGKILL. In C a child asks for that itself, prctl(PR_SET_PDEATHSIG), and
 * Deno has no prctl; so every child the server starts carries a token in its
 * environment (its own children inherit it), and a watchdog process holds a
 * pipe from the server. When the server dies, however it dies, the kernel
 * closes the pipe, and the watchdog removes the server's temp directory and
 * ends every process that still carries the token: SIGTERM, then SIGKILL.
 * When it starts, the watchdog also removes the temp directories of servers
 * that died with their watchdog (both killed at once).
 *
 * @module
 */
import { role, roleArgs, runAgain } from "../role.ts";
import { sleep, within } from "../time.ts";

/** How long the watchdog gives the orphans between SIGTERM and SIGKILL. */
const KILL_AFTER_MS = 1000;

if (import.meta.main && role() === "watchdog") {
  const [marker, dir] = roleArgs();
  if (dir) await removeDeadServersDirs(dir);
  await untilStdinCloses(); // the server closed it, or died
  if (dir) await Deno.remove(dir, { recursive: true }).catch(() => {});
  await endCarriers(marker);
}

/** A running watchdog, and the environment that marks the server's children. */
export class Lifeline {
  /** Use {@linkcode Lifeline.start}. */
  private constructor(
    /** Environment for every child: `LIFELINE_<token>=<server pid>`. */
    readonly env: Record<string, string>,
    readonly watchdog: Deno.ChildProcess,
  ) {}

  /**
   * Starts the watchdog. `dir`, the server's temp directory if it has one,
   * is removed when the server dies; it must be named `MODEL-PID-*` (PID the
   * server's), so that a later watchdog can tell whether its server lives.
   * Throws like `Deno.Command.spawn` when the watchdog cannot be started.
   */
  static start(dir?: string): Lifeline {
    const token = Array.from(
      crypto.getRandomValues(new Uint8Array(8)),
      (byte) => byte.toString(16).padStart(2, "0"),
    ).join("");
    const name = `LIFELINE_${token}`;
    const script = import.meta.filename ?? import.meta.url;
    // Deno reads /proc only with --allow-all; --allow-run, which killing
    // needs, grants as much anyway (a subprocess is not sandboxed).
    const args = [`${name}=`, dir ?? ""];
    const watchdog = new Deno.Command(Deno.execPath(), {
      args: runAgain(script, "watchdog", args, ["--allow-all"]),
      // The kernel closes this pipe when the server dies, SIGKILL included
      // (what prctl(PR_SET_PDEATHSIG) does in C, which Deno lacks).
      stdin: "piped",
      stdout: "null",
      stderr: "inherit",
      detached: true, // a Ctrl-C at the terminal reaches the server only
    }).spawn();
    return new Lifeline({ [name]: String(Deno.pid) }, watchdog);
  }

  /**
   * For a server that stops: ends the watchdog, which ends whatever carries
   * the token still (a grandchild that left its process group) and removes
   * the directory, and waits for it (at most 5 s).
   */
  async close(): Promise<void> {
    await this.watchdog.stdin.close().catch(() => {});
    await within(this.watchdog.status, 5000);
  }
}

/** Signals every process that carries `marker`, until none is left. */
async function endCarriers(marker: string): Promise<void> {
  for (const signal of ["SIGTERM", "SIGKILL"] as const) {
    let pids = await carriers(marker);
    for (const pid of pids) {
      try {
        Deno.kill(pid, signal);
      } catch { /* gone meanwhile */ }
    }
    for (let waited = 0; pids.length && waited < KILL_AFTER_MS; waited += 50) {
      await sleep(50);
      pids = await carriers(marker);
    }
  }
}

/** The processes whose environment holds `marker` (`NAME=`); not zombies. */
async function carriers(marker: string): Promise<number[]> {
  const pids: number[] = [];
  const decoder = new TextDecoder();
  for await (const entry of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const environ = await Deno.readFile(`/proc/${entry.name}/environ`);
      if (`\0${decoder.decode(environ)}`.includes(`\0${marker}`)) {
        pids.push(Number(entry.name));
      }
    } catch { /* gone, or another user's */ }
  }
  return pids;
}

/**
 * Removes the directories next to `ours` named as it is (`MODEL-PID-*`),
 * owned by the same user, whose PID no longer runs. A PID reused since by
 * another process keeps its directory until that process ends.
 */
async function removeDeadServersDirs(ours: string): Promise<void> {
  const parent = ours.slice(0, ours.lastIndexOf("/"));
  const model = ours.slice(parent.length + 1).match(/^(.+)-\d+-/)?.[1];
  if (!model) return;
  const { uid } = await Deno.lstat(ours);
  const named = new RegExp(`^${RegExp.escape(model)}-(\\d+)-`);
  for await (const entry of Deno.readDir(parent)) {
    const pid = entry.name.match(named)?.[1];
    if (!pid || !entry.isDirectory || (await exists(`/proc/${pid}`))) continue;
    const path = `${parent}/${entry.name}`;
    try {
      if ((await Deno.lstat(path)).uid !== uid) continue;
      await Deno.remove(path, { recursive: true });
    } catch { /* gone meanwhile, or not ours to remove */ }
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (error) {
    return !(error instanceof Deno.errors.NotFound);
  }
}

/**
 * In the watchdog: resolves when stdin reaches EOF or fails, that is when
 * the server has closed it or has died.
 */
async function untilStdinCloses(): Promise<void> {
  const buffer = new Uint8Array(256);
  try {
    while ((await Deno.stdin.read(buffer)) !== null) {
      // not data: the pipe only tells that the parent is alive
    }
  } catch { /* a broken pipe is a closed one */ }
}
