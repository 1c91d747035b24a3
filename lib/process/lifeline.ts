/**
 * A server's lifeline: nothing it started outlives it, even a SIGKILL. C has
 * prctl(PR_SET_PDEATHSIG), Deno no prctl; so every child the server starts
 * carries a token in its environment (its own children inherit it), and a
 * watchdog process reads a pipe from the server. When the kernel closes that
 * pipe, however the server died, the watchdog removes the server's temp
 * directory and ends whatever carries the token: SIGTERM, then SIGKILL. It
 * also removes, when it starts, the directories of servers that died with
 * their watchdog (both killed at once).
 *
 * @module
 */
import { role, roleArgs, runAgain } from "../role.ts";
import { sleep, within } from "../time.ts";

if (import.meta.main && role() === "watchdog") {
  const [marker, dir] = roleArgs();
  if (dir) await removeDeadServersDirs(dir);
  // EOF or an error: the server closed the pipe, or died.
  await Deno.stdin.readable.pipeTo(new WritableStream()).catch(() => {});
  if (dir) await Deno.remove(dir, { recursive: true }).catch(() => {});
  await endCarriers(marker);
}

/** A running watchdog, and the environment that marks the server's children. */
export class Lifeline {
  private constructor(
    /** For every child: `LIFELINE_<token>=<server pid>`. */
    readonly env: Record<string, string>,
    private readonly watchdog: Deno.ChildProcess,
  ) {}

  /**
   * Starts the watchdog; throws as `Deno.Command.spawn` does. `dir`, the
   * server's temp directory if any, goes when the server dies; it must be
   * named `MODEL-PID-*`, so that a later watchdog can tell if its server runs.
   */
  static start(dir?: string): Lifeline {
    const name = `LIFELINE_${crypto.randomUUID().replaceAll("-", "")}`;
    const script = import.meta.filename ?? import.meta.url;
    // Deno reads /proc only with --allow-all; --allow-run, which killing
    // needs, grants as much anyway (a subprocess is not sandboxed).
    const args = [`${name}=`, dir ?? ""];
    const watchdog = new Deno.Command(Deno.execPath(), {
      args: runAgain(script, "watchdog", args, ["--allow-all"]),
      stdin: "piped", // the kernel closes it when the server dies, SIGKILL too
      stdout: "null",
      stderr: "inherit",
      detached: true, // a Ctrl-C at the terminal reaches the server only
    }).spawn();
    return new Lifeline({ [name]: String(Deno.pid) }, watchdog);
  }

  /**
   * For a server that stops: ends the watchdog, which ends what still carries
   * the token (a grandchild that left its group) and removes the directory,
   * and waits for it (at most 5 s).
   */
  async close(): Promise<void> {
    await this.watchdog.stdin.close().catch(() => {});
    await within(this.watchdog.status, 5000);
  }
}

/** Signals what carries `marker` until none is left, SIGKILL a second on. */
async function endCarriers(marker: string): Promise<void> {
  for (const signal of ["SIGTERM", "SIGKILL"] as const) {
    let pids = await carriers(marker);
    for (const pid of pids) {
      try {
        Deno.kill(pid, signal);
      } catch { /* gone meanwhile */ }
    }
    for (let waited = 0; pids.length && waited < 1000; waited += 50) {
      await sleep(50);
      pids = await carriers(marker);
    }
  }
}

/** The processes whose environment holds `marker` (`NAME=`); not zombies. */
async function carriers(marker: string): Promise<number[]> {
  const pids: number[] = [];
  for await (const { name } of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const environ = await Deno.readTextFile(`/proc/${name}/environ`);
      if (`\0${environ}`.includes(`\0${marker}`)) pids.push(Number(name));
    } catch { /* gone, or another user's */ }
  }
  return pids;
}

/**
 * Removes the directories next to `ours` named as it is (`MODEL-PID-*`),
 * owned by its user, whose PID no longer runs (a PID reused since keeps its
 * directory until that process ends).
 */
async function removeDeadServersDirs(ours: string): Promise<void> {
  const parent = ours.slice(0, ours.lastIndexOf("/"));
  const model = ours.slice(parent.length + 1).match(/^(.+)-\d+-/)?.[1];
  if (!model) return;
  const { uid } = await Deno.lstat(ours);
  const named = new RegExp(`^${RegExp.escape(model)}-(\\d+)-`);
  const running = (pid: string) =>
    Deno.stat(`/proc/${pid}`)
      .then(() => true, (error) => !(error instanceof Deno.errors.NotFound));
  for await (const entry of Deno.readDir(parent)) {
    const pid = entry.name.match(named)?.[1];
    if (!pid || !entry.isDirectory || (await running(pid))) continue;
    const path = `${parent}/${entry.name}`;
    try {
      if ((await Deno.lstat(path)).uid !== uid) continue;
      await Deno.remove(path, { recursive: true });
    } catch { /* gone meanwhile, or not ours to remove */ }
  }
}
