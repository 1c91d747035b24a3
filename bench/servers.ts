/**
 * The servers a bench run starts: how to start each one (a model script, a
 * yardstick of bench.ts's own, socat or ncat), and a started server, stopped
 * by pid once its scenario is done, with a check that none of its processes
 * outlives it.
 *
 * @module
 */
import { sleep, within } from "../lib/time.ts";
import { isAlive, processTree } from "./procfs.ts";

/** The project root: where the model scripts and bench.ts are. */
const ROOT: string = decodeURIComponent(
  new URL("..", import.meta.url).pathname,
);

/** One server the bench can start: a model script or an outside reference. */
export interface ServerSpec {
  /** The name `--only` takes and the JSON carries. */
  name: string;
  /** The row label in tables and the chart. */
  label: string;
  /** A yardstick rather than one of the collection's models. */
  reference: boolean;
  /** Takes `--cpu-ms` (S5 runs only on servers that do). */
  cpuMs: boolean;
  /** The model script, checked for existence before the run. */
  script?: string;
  /** A program that must be on PATH. */
  program?: string;
  /**
   * The command line; `port` is 0 for servers that print a banner; a
   * `verbose` server logs a line per client (a model without `--quiet`).
   */
  command(
    port: number,
    cpuMs: number,
    program: string,
    verbose: boolean,
  ): string[];
  /** Prints a `listening on` banner with the real port (Deno scripts do). */
  banner: boolean;
  /**
   * The event loops that serve every client, fixed at start: N for a pool,
   * 1 for evented.ts; absent where each client gets its own, or waits for
   * the one before. S8 and S9 run only on the servers that have them.
   */
  workers?: number;
}

/**
 * A model of the collection: `SCRIPT 0 --quiet --grace 1 [--cpu-ms N]` plus
 * its own options (`--pool 2`), named `name` (default: the script's); not
 * `--quiet` when started verbose.
 */
export function model(
  script: string,
  options: string[] = [],
  name = script.replace(/\.ts$/, ""),
): ServerSpec {
  return {
    name,
    label: [script.replace(/\.ts$/, ""), ...options].join(" "),
    reference: false,
    cpuMs: true,
    script,
    banner: true,
    command: (_port, cpuMs, _program, verbose) => [
      Deno.execPath(),
      "run",
      "-A",
      ...shebangV8Flags(script),
      script,
      "0",
      ...(verbose ? [] : ["--quiet"]),
      "--grace",
      "1",
      ...options,
      ...(cpuMs ? ["--cpu-ms", String(cpuMs)] : []),
    ],
  };
}

/**
 * The `--v8-flags=...` on `script`'s shebang line, if any: a model that needs
 * V8 set up its way (threaded.ts: a terminated worker's heap pages go back to
 * the system at once) is measured the way it runs.
 */
export function shebangV8Flags(script: string): string[] {
  try {
    const first = Deno.readTextFileSync(`${ROOT}/${script}`).split("\n", 1)[0];
    return first.startsWith("#!")
      ? first.split(/\s+/).filter((arg) => arg.startsWith("--v8-flags="))
      : [];
  } catch {
    return []; // a missing script is reported when the run starts it
  }
}

/** One of bench.ts's own yardsticks: `bench.ts ARGS` (bench/yardsticks.ts). */
export function yardstick(
  name: string,
  label: string,
  args: string[],
): ServerSpec {
  return {
    name,
    label: `${label} (reference)`,
    reference: true,
    cpuMs: false,
    banner: true,
    command: () => [
      Deno.execPath(),
      "run",
      "-A",
      "--unstable-net", // reusePort, for the yardstick on N threads
      "bench.ts",
      ...args,
    ],
  };
}

// socat's defaults would measure two settings rather than socat: a listen
// backlog of 5 (Deno's listeners use 511), and 8 KiB blocks, which turn a
// 64 KiB echo into several writes whose last one Nagle's algorithm holds for
// the client's delayed ACK (40 ms per message in S3). The Deno servers read
// and write up to 64 KiB at a time; so does socat with -b 65536.
const SOCAT_TUNING = ["-b", "65536"];

/** socat forking a process per client that echoes through `address`. */
export function socat(name: string, address: string): ServerSpec {
  return {
    name,
    label: `socat fork ${address}`,
    reference: true,
    cpuMs: false,
    program: "socat",
    banner: false,
    command: (port, _cpuMs, socat) => [
      socat,
      ...SOCAT_TUNING,
      `TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork,backlog=511`,
      address,
    ],
  };
}

/** ncat running `/bin/cat` per client, inetd style. */
export function ncat(): ServerSpec {
  return {
    name: "ncat",
    label: "ncat --exec cat",
    reference: true,
    cpuMs: false,
    program: "ncat",
    banner: false,
    command: (port, _cpuMs, ncat) => [
      ncat,
      "--keep-open",
      "--exec",
      "/bin/cat",
      "--listen",
      "127.0.0.1",
      String(port),
    ],
  };
}

/** Why `spec` cannot run here (its script or program is missing), if so. */
export function missing(spec: ServerSpec): string | undefined {
  if (spec.script && !isFile(`${ROOT}${spec.script}`)) {
    return `${spec.script} not found`;
  }
  if (spec.program && !which(spec.program)) {
    return `${spec.program} not on PATH`;
  }
  return undefined;
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** Where `program` is on PATH, or undefined. */
function which(program: string): string | undefined {
  return (Deno.env.get("PATH") ?? "").split(":")
    .map((dir) => `${dir}/${program}`)
    .find((path) => path.startsWith("/") && isFile(path));
}

/** A port nobody listens on now, for servers that cannot report port 0. */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

/** The servers running now: what an interrupted bench stops before it exits. */
const running = new Set<RunningServer>();

/** Stops every server still running (by pid), as an interrupted run must. */
export async function stopAllServers(): Promise<void> {
  await Promise.all([...running].map((server) => server.stop()));
}

/** A server started for one scenario, stopped (by pid) right after it. */
export class RunningServer {
  /** Where it listens, once ready. */
  host = "127.0.0.1";
  /** Its port, once ready. */
  port = 0;
  /** Called with each line the server prints after its banner, when set. */
  onLine?: (line: string) => void;
  #child: Deno.ChildProcess;
  #stderr = "";
  #output: Promise<void>;
  #exited = false;
  #bannerLine: Promise<string>;

  /** Spawns `argv` in the project root, its output read (and drained). */
  constructor(readonly spec: ServerSpec, argv: string[]) {
    this.#child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    running.add(this);
    const banner = Promise.withResolvers<string>();
    this.#bannerLine = banner.promise;
    this.#output = Promise.all([
      this.#readStdout(banner.resolve),
      this.#readStderr(),
    ]).then(() => {});
    this.#child.status.then(() => {
      this.#exited = true;
      banner.resolve("");
    });
  }

  /** The server's process id. */
  get pid(): number {
    return this.#child.pid;
  }

  /** The last line the server wrote on stderr: why it failed, usually. */
  get lastError(): string {
    return this.#stderr.trim().split("\n").pop() || "(no message)";
  }

  /** Resolves once the server accepts connections; rejects if it cannot. */
  async ready(knownPort: number): Promise<void> {
    const deadline = performance.now() + 20_000;
    if (this.spec.banner) {
      if (!(await within(this.#bannerLine, 20_000))) {
        throw new Error("no banner within 20 s");
      }
      const line = await this.#bannerLine;
      const match = line.match(/^listening on \[?([^\]\s]+?)\]?:(\d+)(?: |$)/);
      if (!match) throw new Error(`exited before listening: ${this.lastError}`);
      this.host = match[1];
      this.port = Number(match[2]);
      return;
    }
    // socat and ncat print nothing: knock until the port answers.
    this.port = knownPort;
    while (performance.now() < deadline && !this.#exited) {
      try {
        (await Deno.connect({ hostname: this.host, port: knownPort })).close();
        return;
      } catch {
        await sleep(20);
      }
    }
    throw new Error(`not listening: ${this.lastError}`);
  }

  /**
   * Stops the server by pid (SIGTERM, then SIGKILL) and checks in /proc that
   * none of its processes outlives it; any that does is killed, and named in
   * the list returned.
   */
  async stop(): Promise<string[]> {
    const tree = processTree(this.pid);
    const kill = (signal: Deno.Signal) => {
      try {
        this.#child.kill(signal);
      } catch { /* exited meanwhile */ }
    };
    if (!this.#exited) kill("SIGTERM");
    if (!(await within(this.#child.status, 10_000))) kill("SIGKILL");
    await this.#child.status;
    // Children of a server that exited cleanly are gone already, or about to
    // be (socat's and ncat's finish their client's last bytes first).
    const left = () => tree.filter((proc) => isAlive(proc));
    for (let waited = 0; left().length && waited < 3000; waited += 20) {
      await sleep(20);
    }
    const leftovers = left();
    for (const proc of leftovers) {
      try {
        Deno.kill(proc.pid, "SIGKILL");
      } catch { /* gone meanwhile */ }
    }
    // Whatever held the server's stdout and stderr is gone now.
    await within(this.#output, 1000);
    running.delete(this);
    return leftovers.map((proc) => `pid ${proc.pid} (${proc.command})`);
  }

  async #readStdout(bannerFound: (line: string) => void): Promise<void> {
    let banner: ((line: string) => void) | undefined = bannerFound;
    let partial = "";
    for await (
      const text of this.#child.stdout.pipeThrough(new TextDecoderStream())
    ) {
      // Drained even when nobody reads it, so that a chatty server never
      // blocks; split into lines only while the banner or `onLine` wants them.
      if (!banner && !this.onLine) {
        partial = ""; // a line cut here is not passed on, even in part
        continue;
      }
      partial += text;
      for (let end; (end = partial.indexOf("\n")) >= 0;) {
        const line = partial.slice(0, end);
        partial = partial.slice(end + 1);
        if (banner) {
          banner(line);
          banner = undefined;
        } else this.onLine?.(line);
      }
    }
  }

  async #readStderr(): Promise<void> {
    for await (
      const text of this.#child.stderr.pipeThrough(new TextDecoderStream())
    ) {
      this.#stderr = (this.#stderr + text).slice(-4096);
    }
  }
}

/**
 * Starts `spec` (with `--cpu-ms` when `cpuMs` is set, logging every client
 * when `verbose`) and waits until it accepts connections.
 */
export async function startServer(
  spec: ServerSpec,
  cpuMs = 0,
  verbose = false,
): Promise<RunningServer> {
  const port = spec.banner ? 0 : freePort();
  const program = spec.program ? which(spec.program) ?? spec.program : "";
  const argv = spec.command(port, cpuMs, program, verbose);
  const server = new RunningServer(spec, argv);
  try {
    await server.ready(port);
  } catch (error) {
    await server.stop();
    throw error;
  }
  return server;
}
