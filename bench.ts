#!/usr/bin/env -S deno run --allow-all
/**
 * bench.ts: every echo server model side by side on the same load.
 *
 * The course notes behind this collection make claims: an iterative server
 * makes the next client wait; a process per client is expensive to create;
 * threads are cheaper; a pool removes the creation cost; an event loop stalls
 * when a client needs CPU while threads and processes use every core. This
 * script makes each claim a number, the way Stevens' UNP chapter 30 compares
 * its server designs in one table: it starts every model on port 0, drives it
 * with client.ts's load engine through the same seven scenarios, and prints a
 * table per scenario, then the project's speed targets as ratios of this run.
 *
 * References run in the same scenarios: `bare`, the simplest echo loop Deno
 * allows (what the shared module's features are measured against), socat and
 * ncat when installed, and the rates at which Deno can start a child process
 * and a Worker that do nothing (the most a process or a Worker per client can
 * reach).
 *
 * Run:  deno task bench                    (everything: about 5 minutes)
 *       deno task bench --rounds 3 --svg bench.svg   (medians; 15 minutes)
 *       deno run -A bench.ts --only evented,bare --scenarios S2,S3
 *       deno run -A bench.ts --quick               (a smoke run, under a minute)
 * Read: one run's rows are comparable with each other; a busy machine makes
 *       every number noisy, so compare ratios, not absolute figures.
 */
import { type LoadOptions, runLoad } from "./client.ts";
import { fail, numberOption, parseCommandLine, usageError } from "./cli.ts";
import { spawnChildRole } from "./children.ts";
import { onShutdownSignal } from "./server.ts";

const SCRIPT = "bench.ts";
const ROOT = decodeURIComponent(new URL(".", import.meta.url).pathname);
const CPUS = navigator.hardwareConcurrency;

// ---------------------------------------------------------------------------
// The servers under test
// ---------------------------------------------------------------------------

/** One server the bench can start: a model script or an outside reference. */
interface ServerSpec {
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
  /** The command line; `port` is 0 for scripts that print a banner. */
  command(port: number, cpuMs: number, program: string): string[];
  /** Prints a `listening on` banner with the real port (Deno scripts do). */
  banner: boolean;
}

function modelServer(
  name: string,
  script: string,
  label: string,
  extra: string[] = [],
): ServerSpec {
  return {
    name,
    label,
    reference: false,
    cpuMs: true,
    script,
    banner: true,
    command: (_port, cpuMs) => [
      Deno.execPath(),
      "run",
      "-A",
      script,
      "0",
      "--quiet",
      "--grace",
      "1",
      ...extra,
      ...(cpuMs ? ["--cpu-ms", String(cpuMs)] : []),
    ],
  };
}

// socat's defaults would measure two settings rather than socat: a listen
// backlog of 5 (Deno's listeners use 511), and 8 KiB blocks, which turn a
// 64 KiB echo into several writes whose last one Nagle's algorithm holds for
// the client's delayed ACK (40 ms per message in S3). The Deno servers read
// and write up to 64 KiB at a time; so does socat with -b 65536.
const SOCAT_TUNING = ["-b", "65536"];

function serverSpecs(workers: number): ServerSpec[] {
  return [
    {
      name: "bare",
      label: "bare (reference)",
      reference: true,
      cpuMs: false,
      banner: true,
      command: () => [Deno.execPath(), "run", "-A", SCRIPT, "--bare-server"],
    },
    {
      name: "bare-pool",
      label: `bare, ${workers} threads (reference)`,
      reference: true,
      cpuMs: false,
      banner: true,
      command: () => [
        Deno.execPath(),
        "run",
        "-A",
        "--unstable-net",
        SCRIPT,
        "--bare-server",
        String(workers),
      ],
    },
    {
      name: "bare-relay",
      label: "bare relay (reference)",
      reference: true,
      cpuMs: false,
      banner: true,
      command: () => [Deno.execPath(), "run", "-A", SCRIPT, "--bare-relay"],
    },
    modelServer("evented", "evented.ts", "evented"),
    modelServer("iterative", "iterative.ts", "iterative"),
    modelServer("forked", "forked.ts", "forked"),
    modelServer("threaded", "threaded.ts", "threaded"),
    modelServer(
      "threaded-pool",
      "threaded.ts",
      `threaded --pool ${workers}`,
      ["--pool", String(workers)],
    ),
    modelServer(
      "prefork",
      "prefork.ts",
      `prefork --workers ${workers}`,
      ["--workers", String(workers)],
    ),
    {
      name: "socat-pipe",
      label: "socat fork PIPE",
      reference: true,
      cpuMs: false,
      program: "socat",
      banner: false,
      command: (port, _cpuMs, socat) => [
        socat,
        ...SOCAT_TUNING,
        `TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork,backlog=511`,
        "PIPE",
      ],
    },
    {
      name: "socat-exec",
      label: "socat fork EXEC:cat",
      reference: true,
      cpuMs: false,
      program: "socat",
      banner: false,
      command: (port, _cpuMs, socat) => [
        socat,
        ...SOCAT_TUNING,
        `TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork,backlog=511`,
        "EXEC:cat",
      ],
    },
    {
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
    },
  ];
}

const SERVER_NAMES = serverSpecs(2).map((spec) => spec.name);

/** Where `program` is on PATH, or undefined. */
function which(program: string): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (!dir) continue;
    try {
      const path = `${dir}/${program}`;
      if (Deno.statSync(path).isFile) return path;
    } catch { /* not in this directory */ }
  }
  return undefined;
}

/** A port nobody listens on now, for servers that cannot report port 0. */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

/** The servers running now: what an interrupted bench stops before it exits. */
const runningServers = new Set<RunningServer>();

/** A server started for one scenario, stopped (by pid) right after it. */
class RunningServer {
  host = "127.0.0.1";
  port = 0;
  #child: Deno.ChildProcess;
  #stderr = "";
  #output: Promise<void>;
  #exited = false;
  #bannerLine: Promise<string>;

  constructor(readonly spec: ServerSpec, argv: string[]) {
    this.#child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    runningServers.add(this);
    let bannerFound: (line: string) => void = () => {};
    this.#bannerLine = new Promise((resolve) => bannerFound = resolve);
    this.#output = Promise.all([
      this.#readStdout(bannerFound),
      this.#readStderr(),
    ]).then(() => {});
    this.#child.status.then(() => {
      this.#exited = true;
      bannerFound("");
    });
  }

  get pid(): number {
    return this.#child.pid;
  }

  /** The last line the server wrote on stderr: why it failed, usually. */
  get lastError(): string {
    return this.#stderr.trim().split("\n").pop() ?? "";
  }

  /** Resolves once the server accepts connections; rejects if it cannot. */
  async ready(knownPort: number): Promise<void> {
    const deadline = performance.now() + 20_000;
    if (this.spec.banner) {
      const line = await withTimeout(this.#bannerLine, 20_000, "timeout");
      const match = line.match(/^listening on \[?([^\]\s]+?)\]?:(\d+)(?: |$)/);
      if (!match) {
        throw new Error(
          line === "timeout"
            ? "no banner within 20 s"
            : `exited before listening: ${this.lastError || "(no message)"}`,
        );
      }
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
        await delay(20);
      }
    }
    throw new Error(`not listening: ${this.lastError || "(no message)"}`);
  }

  /**
   * Stops the server by pid (SIGTERM, then SIGKILL) and checks in /proc that
   * none of its processes outlives it; any that does is killed and reported.
   */
  async stop(): Promise<string[]> {
    const tree = processTree(this.pid);
    if (!this.#exited) {
      try {
        this.#child.kill("SIGTERM");
      } catch { /* exited meanwhile */ }
    }
    if (!(await settlesWithin(this.#child.status, 10_000))) {
      try {
        this.#child.kill("SIGKILL");
      } catch { /* exited meanwhile */ }
    }
    await this.#child.status;
    // Children of a server that exited cleanly are gone already, or about to
    // be (socat's and ncat's finish their client's last bytes first).
    const left = () => tree.filter((proc) => isAlive(proc));
    for (let waited = 0; left().length && waited < 3000; waited += 20) {
      await delay(20);
    }
    const leftovers = left();
    for (const proc of leftovers) {
      try {
        Deno.kill(proc.pid, "SIGKILL");
      } catch { /* gone meanwhile */ }
    }
    // Whatever held the server's stdout and stderr is gone now.
    await settlesWithin(this.#output, 1000);
    runningServers.delete(this);
    return leftovers.map((proc) => `pid ${proc.pid} (${proc.command})`);
  }

  async #readStdout(bannerFound: (line: string) => void): Promise<void> {
    let first = true;
    let partial = "";
    for await (
      const text of this.#child.stdout.pipeThrough(new TextDecoderStream())
    ) {
      if (!first) continue; // drained, so that a chatty server never blocks
      partial += text;
      const end = partial.indexOf("\n");
      if (end >= 0) {
        first = false;
        bannerFound(partial.slice(0, end));
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

/** Starts `spec` and waits until it accepts connections. */
async function startServer(
  spec: ServerSpec,
  cpuMs = 0,
): Promise<RunningServer> {
  const port = spec.banner ? 0 : freePort();
  const program = spec.program ? which(spec.program) ?? spec.program : "";
  const server = new RunningServer(spec, spec.command(port, cpuMs, program));
  try {
    await server.ready(port);
  } catch (error) {
    await server.stop();
    throw error;
  }
  return server;
}

// ---------------------------------------------------------------------------
// What /proc says about a process tree
// ---------------------------------------------------------------------------

interface Proc {
  pid: number;
  /** Start time in clock ticks since boot: tells a reused pid apart. */
  start: number;
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
function processTree(pid: number): Proc[] {
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
function isAlive(proc: Proc): boolean {
  const fields = statFields(proc.pid);
  return fields !== undefined && Number(fields[19]) === proc.start;
}

/**
 * Memory of the whole tree (threads and Workers included), in bytes: the sum
 * of each process's RSS, and of its PSS, which splits pages that processes
 * share (the deno executable, libc) among them instead of counting them in
 * full for each: the fairer sum for a tree of processes.
 */
function treeMemory(pid: number): { rss: number; pss: number } {
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

/** CPU time of a process and its reaped children, ms. */
function cpuMs(pid: number | "self"): number {
  const fields = statFields(pid);
  if (!fields) return 0;
  // utime, stime, cutime, cstime (fields 14-17 of proc(5)).
  return (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) +
    Number(fields[14])) * TICK_MS;
}

/** CPU time of a server: every live process of its tree, and reaped ones. */
function treeCpuMs(pid: number): number {
  return processTree(pid).reduce((sum, proc) => sum + cpuMs(proc.pid), 0);
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/** How long and how big the runs are. */
interface Settings {
  /** Seconds of load per timed run. */
  duration: number;
  /** Seconds of unmeasured load before each timed run. */
  warmup: number;
  /** Idle clients S6 tries to hold. */
  idleClients: number;
  /** Seconds the first client of S7 stays idle. */
  holdSeconds: number;
  /** Times each scenario runs on each server (the median row is kept). */
  rounds: number;
  /** S7 repetitions (the median is reported). */
  waitRepeats: number;
  /** N of `threaded --pool N` and `prefork --workers N`. */
  workers: number;
  quick: boolean;
}

/** One server's numbers in one scenario. Absent numbers are null. */
interface Row {
  server: string;
  label: string;
  reference: boolean;
  /** Why there are no numbers (the server failed to start, ...). */
  note?: string;
  [metric: string]: unknown;
}

/** What a scenario measured on one server: a row without its name. */
type Numbers = Omit<Row, "server" | "label" | "reference">;

interface Scenario {
  id: string;
  title: string;
  /** What the load is, for the table heading. */
  load: string;
  /** Server flag: `--cpu-ms` of S5. */
  cpuMs?: number;
  run(
    server: RunningServer,
    settings: Settings,
    status: Status,
  ): Promise<Numbers>;
}

/** Shows what is running now (the progress line). */
type Status = (text: string) => void;

/** The progress line: shown on a terminal, cleared before other output. */
interface Progress {
  show: Status;
  clear(): void;
}

const MESSAGE = 64;
const BULK = 64 * 1024;

/**
 * Runs client.ts's load engine against `server`: a short unmeasured warm-up
 * (so that neither the server's nor the load engine's code runs cold), then
 * the measured run, with the CPU time both processes spent on it.
 */
async function measuredLoad(
  server: RunningServer,
  settings: Settings,
  status: Status,
  options: Partial<LoadOptions>,
): Promise<Numbers> {
  const base: LoadOptions = {
    host: server.host,
    port: server.port,
    connections: 1,
    size: MESSAGE,
    duration: settings.duration,
    // A client that waits (iterative) shows up as latency, not as an error.
    timeoutMs: settings.duration * 1000 + 10_000,
    ...options,
  };
  if (settings.warmup > 0) {
    status("warming up");
    await runLoad({ ...base, duration: settings.warmup });
  }
  const loadBefore = cpuMs("self");
  const serverBefore = treeCpuMs(server.pid);
  const report = await runLoad({
    ...base,
    onProgress: (done) => status(`${done} requests`),
  });
  const loadCpu = cpuMs("self") - loadBefore;
  const serverCpu = treeCpuMs(server.pid) - serverBefore;
  const perRequest = (ms: number) =>
    report.requests ? ms * 1000 / report.requests : null;
  return {
    requestsPerSecond: report.requestsPerSecond,
    mbPerSecond: report.mbPerSecond,
    p50Ms: report.requests ? report.latencyMs.p50 : null,
    p99Ms: report.requests ? report.latencyMs.p99 : null,
    requests: report.requests,
    errors: report.errors,
    mismatches: report.mismatches,
    seconds: report.seconds,
    // CPU of the load process and of the server (all its processes) over
    // the same run: the load engine must not be what limits the rate, and
    // a model can use more than one core only if the load leaves it some.
    loadCpuMs: loadCpu,
    serverCpuMs: serverCpu,
    loadCpuUsPerRequest: perRequest(loadCpu),
    serverCpuUsPerRequest: perRequest(serverCpu),
    loadCores: loadCpu / 1000 / report.seconds,
    serverCores: serverCpu / 1000 / report.seconds,
  };
}

const SCENARIOS: Scenario[] = [
  {
    id: "S1",
    title: "latency",
    load: "1 connection, 64 B ping-pong",
    run: (server, settings, status) =>
      measuredLoad(server, settings, status, {}),
  },
  {
    id: "S2",
    title: "many clients",
    load: "50 connections, 64 B ping-pong",
    run: (server, settings, status) =>
      measuredLoad(server, settings, status, { connections: 50 }),
  },
  {
    id: "S3",
    title: "bulk",
    load: "4 connections, 64 KiB messages",
    run: (server, settings, status) =>
      measuredLoad(server, settings, status, { connections: 4, size: BULK }),
  },
  {
    id: "S4",
    title: "creation cost",
    load: "a new connection per request, 8 in parallel",
    async run(server, settings, status) {
      const numbers = await measuredLoad(server, settings, status, {
        connections: 8,
        newConnection: true,
      });
      return { ...numbers, connectionsPerSecond: numbers.requestsPerSecond };
    },
  },
  {
    id: "S5",
    title: "CPU-bound",
    load: "server --cpu-ms 20, 4 connections, 64 B",
    cpuMs: 20,
    run: (server, settings, status) =>
      measuredLoad(server, settings, status, { connections: 4 }),
  },
  {
    id: "S6",
    title: "memory",
    load: "idle clients held open plus one active client",
    run: idleMemory,
  },
  {
    id: "S7",
    title: "waiting",
    load: "a second client while the first holds its connection idle",
    run: secondClientWait,
  },
];

const SCENARIO_IDS = SCENARIOS.map((scenario) => scenario.id);

/**
 * S6: opens idle clients in batches, each proven served by one echoed byte,
 * until `idleClients` are held, a batch is not fully served (the server holds
 * no more: `--max-conns`, or one client at a time), or the server's memory
 * passes a quarter of what the machine has free. Then one active client runs.
 */
async function idleMemory(
  server: RunningServer,
  settings: Settings,
  status: Status,
): Promise<Numbers> {
  const before = treeMemory(server.pid);
  const memoryCap = availableMemoryBytes() / 4;
  const conns: Deno.Conn[] = [];
  const pending: Promise<void>[] = [];
  let served = 0;
  let stoppedBy = "";
  let closing = false;
  const ping = new Uint8Array([42]);
  // Longer than TCP's first SYN retransmission (1 s): a full backlog delays
  // connects by that much without the server being full.
  const stallMs = 1500;
  try {
    while (conns.length < settings.idleClients) {
      const batch = Math.min(50, settings.idleClients - conns.length);
      let answered = 0;
      let settled = 0;
      let lastEvent = performance.now();
      let wake = () => {};
      const idleClient = async () => {
        try {
          const conn = await Deno.connect({
            hostname: server.host,
            port: server.port,
            signal: AbortSignal.timeout(5000),
          });
          conns.push(conn);
          // A connect the kernel completed after the scenario ended.
          if (closing) conn.close();
          await conn.write(ping);
          lastEvent = performance.now();
          const reply = new Uint8Array(1);
          if ((await conn.read(reply)) === 1) {
            answered++;
            served++;
          }
        } catch { /* refused, reset or closed by us: not served */ }
        settled++;
        lastEvent = performance.now();
        wake();
      };
      for (let i = 0; i < batch; i++) pending.push(idleClient());
      // Wait while clients keep being served; a batch that stops making
      // progress for stallMs means the server holds no more. The first echo
      // of a batch may take longer: a Worker or process per client starts
      // fifty at once.
      const batchStarted = performance.now();
      while (
        settled < batch &&
        (performance.now() - lastEvent < stallMs ||
          (answered === 0 && performance.now() - batchStarted < 10_000))
      ) {
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 50);
        });
      }
      status(`${served} idle clients held`);
      if (answered < batch) {
        stoppedBy = "no more served";
        break;
      }
      if (treeMemory(server.pid).rss > memoryCap) {
        stoppedBy = "memory cap";
        break;
      }
    }
    const held = treeMemory(server.pid);
    // The active client: served at once by the models that multiplex,
    // left waiting by those whose every slot an idle client holds.
    status("active client");
    const report = await runLoad({
      host: server.host,
      port: server.port,
      connections: 1,
      size: MESSAGE,
      duration: settings.duration,
      timeoutMs: Math.min(2000, settings.duration * 1000),
    });
    return {
      idleClients: conns.length,
      idleServed: served,
      stoppedBy: stoppedBy || null,
      rssBeforeBytes: before.rss,
      rssHeldBytes: held.rss,
      pssBeforeBytes: before.pss,
      pssHeldBytes: held.pss,
      // Below ten clients the difference is noise, not a cost per client.
      kbPerIdleClient: served >= 10
        ? (held.rss - before.rss) / served / 1000
        : null,
      pssKbPerIdleClient: served >= 10
        ? (held.pss - before.pss) / served / 1000
        : null,
      activeRequests: report.requests,
      activeP99Ms: report.requests ? report.latencyMs.p99 : null,
      activeErrors: report.errors,
      mismatches: report.mismatches,
    };
  } finally {
    closing = true;
    for (const conn of conns) {
      try {
        conn.close();
      } catch { /* reset, or closed above */ }
    }
    await Promise.all(pending);
  }
}

function availableMemoryBytes(): number {
  try {
    const info = Deno.readTextFileSync("/proc/meminfo");
    const kb = info.match(/^MemAvailable:\s+(\d+) kB/m);
    if (kb) return Number(kb[1]) * 1024;
  } catch { /* no /proc/meminfo */ }
  return 4 * 1024 ** 3;
}

/**
 * S7: the first client is served (one echo), then stays idle for the hold
 * time; a second client connects right then and times its first echo. The
 * median over the repetitions is reported.
 */
async function secondClientWait(
  server: RunningServer,
  settings: Settings,
  status: Status,
): Promise<Numbers> {
  const holdMs = settings.holdSeconds * 1000;
  const samples: number[] = [];
  let errors = 0;
  let mismatches = 0;
  for (let i = 0; i < settings.waitRepeats; i++) {
    status(`round ${i + 1} of ${settings.waitRepeats}`);
    const conns: Deno.Conn[] = [];
    try {
      const first = await connectTo(server);
      conns.push(first);
      await exchange(first, new Uint8Array([1]), 10_000);
      const released = delay(holdMs).then(() => first.close());
      const started = performance.now();
      const second = await connectTo(server);
      conns.push(second);
      const message = new Uint8Array(MESSAGE).map((_, j) => j * 7 + i);
      if (!(await exchange(second, message, holdMs + 10_000))) mismatches++;
      samples.push(performance.now() - started);
      await released;
    } catch {
      errors++;
    } finally {
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* closed already */ }
      }
    }
  }
  samples.sort((a, b) => a - b);
  return {
    holdSeconds: settings.holdSeconds,
    firstEchoMs: samples.length ? samples[samples.length >> 1] : null,
    samplesMs: samples,
    errors,
    mismatches,
  };
}

function connectTo(server: RunningServer): Promise<Deno.Conn> {
  return Deno.connect({
    hostname: server.host,
    port: server.port,
    signal: AbortSignal.timeout(10_000),
  });
}

/** Sends `message`, reads its echo within `ms`; true when it matches. */
async function exchange(
  conn: Deno.Conn,
  message: Uint8Array,
  ms: number,
): Promise<boolean> {
  const timer = setTimeout(() => conn.close(), ms);
  try {
    const reply = new Uint8Array(message.length);
    const writing = (async () => {
      for (let off = 0; off < message.length;) {
        off += await conn.write(message.subarray(off));
      }
    })();
    for (let got = 0; got < reply.length;) {
      const n = await conn.read(reply.subarray(got));
      if (n === null) throw new Error("closed before the echo");
      got += n;
    }
    await writing;
    return reply.every((byte, i) => byte === message[i]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------
// Reference rates for S4: what starting a process or a Worker costs at best
// ---------------------------------------------------------------------------

/** How many `start` calls complete per second, `parallel` at a time. */
async function rate(
  seconds: number,
  parallel: number,
  start: () => Promise<void>,
  status: Status,
): Promise<number> {
  const began = performance.now();
  const end = began + seconds * 1000;
  let done = 0;
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (performance.now() < end) {
        await start();
        done++;
        status(`${done} started`);
      }
    }),
  );
  return done / ((performance.now() - began) / 1000);
}

/**
 * A child started the way forked.ts starts one (protocol.ts's spawnChildRole:
 * the same deno executable, no config, its own session, no stdin or stdout,
 * stderr piped) but running a module that does nothing, and reaped. What
 * forked.ts adds to this is its own work: loading the script, the socket the
 * child connects back to, and relaying the bytes.
 */
async function startAndReapChild(module: string): Promise<void> {
  const child = spawnChildRole(module, [], { stdin: "null", stdout: "null" });
  await child.stderr.cancel();
  const status = await child.status;
  if (!status.success) throw new Error(`noop child exited ${status.code}`);
}

/** A module Worker that says it started, then is terminated. */
async function startAndEndWorker(module: string): Promise<void> {
  const worker = new Worker(module, { type: "module" });
  await new Promise<void>((resolve, reject) => {
    worker.onmessage = () => resolve();
    worker.onerror = (event) => {
      event.preventDefault();
      reject(new Error(event.message));
    };
  });
  worker.terminate();
}

interface ReferenceRates {
  childStartsPerSecond: number | null;
  workerStartsPerSecond: number | null;
  childCommand: string;
}

async function referenceRates(
  settings: Settings,
  status: Status,
): Promise<ReferenceRates> {
  const dir = await Deno.makeTempDir({ prefix: "bench-" });
  const child = `${dir}/noop.ts`;
  const worker = `${dir}/ready.ts`;
  try {
    await Deno.writeTextFile(child, "// does nothing, then exits\n");
    await Deno.writeTextFile(worker, "self.postMessage(0);\n");
    const parallel = 8;
    // Warm up once, so that the first start's module compilation is not counted.
    await startAndReapChild(child);
    await startAndEndWorker(new URL(`file://${worker}`).href);
    const childRate = await rate(
      settings.duration,
      parallel,
      () => startAndReapChild(child),
      (text) => status(`S4 reference: child processes, ${text}`),
    );
    const workerRate = await rate(
      settings.duration,
      parallel,
      () => startAndEndWorker(new URL(`file://${worker}`).href),
      (text) => status(`S4 reference: Workers, ${text}`),
    );
    return {
      childStartsPerSecond: childRate,
      workerStartsPerSecond: workerRate,
      childCommand: "spawnChildRole(noop.ts): deno run --no-prompt --no-config",
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

interface Machine {
  cpus: number;
  cpuModel: string;
  memoryGiB: number;
  os: string;
  deno: string;
  v8: string;
  date: string;
}

/** Everything a run found; `--json` prints exactly this. */
interface BenchResult {
  machine: Machine;
  settings: Settings;
  servers: { name: string; label: string; reference: boolean }[];
  skipped: { name: string; reason: string }[];
  scenarios: {
    id: string;
    title: string;
    load: string;
    rows: Row[];
  }[];
  references: ReferenceRates | null;
  ratios: Ratio[];
  leftovers: string[];
  seconds: number;
}

function describeMachine(): Machine {
  let cpuModel = "unknown CPU";
  let memoryGiB = 0;
  try {
    cpuModel = Deno.readTextFileSync("/proc/cpuinfo")
      .match(/^model name\s*:\s*(.+)$/m)?.[1].trim() ?? cpuModel;
  } catch { /* not Linux */ }
  try {
    const kb = Deno.readTextFileSync("/proc/meminfo")
      .match(/^MemTotal:\s+(\d+) kB/m)?.[1];
    memoryGiB = kb ? Math.round(Number(kb) / 1024 ** 2 * 10) / 10 : 0;
  } catch { /* not Linux */ }
  return {
    cpus: CPUS,
    cpuModel,
    memoryGiB,
    os: `${Deno.build.os} ${Deno.osRelease()}`,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    date: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
  };
}

/** Runs every selected scenario on every selected server, scenario by scenario. */
async function runBench(
  specs: ServerSpec[],
  scenarios: Scenario[],
  settings: Settings,
  progress: Progress,
): Promise<BenchResult> {
  const began = performance.now();
  const result: BenchResult = {
    machine: describeMachine(),
    settings,
    servers: [],
    skipped: [],
    scenarios: [],
    references: null,
    ratios: [],
    leftovers: [],
    seconds: 0,
  };
  const runnable: ServerSpec[] = [];
  for (const spec of specs) {
    const reason = spec.script && !exists(`${ROOT}${spec.script}`)
      ? `${spec.script} not found`
      : spec.program && !which(spec.program)
      ? `${spec.program} not on PATH`
      : undefined;
    if (reason) {
      result.skipped.push({ name: spec.name, reason });
      progress.clear();
      console.error(`${SCRIPT}: skipping ${spec.name} (${reason})`);
    } else {
      runnable.push(spec);
      result.servers.push({
        name: spec.name,
        label: spec.label,
        reference: spec.reference,
      });
    }
  }
  // Scenario by scenario, every server on a fresh start: rows that are
  // compared with each other run minutes apart at most, not a whole run.
  for (const scenario of scenarios) {
    if (
      scenario.id === "S4" &&
      runnable.some((spec) => /^(forked|threaded)$/.test(spec.name))
    ) {
      result.references = await referenceRates(settings, progress.show);
    }
    // Rounds interleave the servers, so that a busy spell of the machine
    // hits every row alike; each row is the round with the median result.
    const rounds = runnable.map(() => [] as Row[]);
    for (let round = 1; round <= settings.rounds; round++) {
      for (const [i, spec] of runnable.entries()) {
        if (rounds[i][0]?.note) continue; // what cannot run is not retried
        rounds[i].push(
          await runOnce(spec, scenario, settings, progress, result),
        );
      }
    }
    const rows = rounds.map((tries) => medianRow(tries, scenario.id));
    result.scenarios.push({
      id: scenario.id,
      title: scenario.title,
      load: scenario.load,
      rows,
    });
  }
  result.ratios = computeRatios(result);
  result.seconds = (performance.now() - began) / 1000;
  return result;
}

/** Starts `spec`, runs `scenario` on it, stops it: one row. */
async function runOnce(
  spec: ServerSpec,
  scenario: Scenario,
  settings: Settings,
  progress: Progress,
  result: BenchResult,
): Promise<Row> {
  const say = (text: string) =>
    progress.show(`${scenario.id} ${scenario.title} · ${spec.label} · ${text}`);
  const row: Row = {
    server: spec.name,
    label: spec.label,
    reference: spec.reference,
  };
  if (scenario.cpuMs && !spec.cpuMs) {
    row.note = "no --cpu-ms";
    return row;
  }
  const started = performance.now();
  say("starting");
  let server: RunningServer;
  try {
    server = await startServer(spec, scenario.cpuMs);
  } catch (error) {
    row.note = `did not start: ${(error as Error).message}`;
    progress.clear();
    console.error(`${SCRIPT}: ${spec.name} ${row.note}`);
    return row;
  }
  try {
    Object.assign(row, await scenario.run(server, settings, say));
  } catch (error) {
    row.note = `failed: ${(error as Error).message}`;
  } finally {
    const leftovers = await server.stop();
    for (const proc of leftovers) {
      const text = `${spec.name} left ${proc} behind after ${scenario.id}`;
      result.leftovers.push(text);
      progress.clear();
      console.error(`${SCRIPT}: ${text} (killed)`);
    }
    row.wallSeconds = (performance.now() - started) / 1000;
  }
  return row;
}

/** The row whose charted number is the median of the rounds'. */
function medianRow(rows: Row[], scenario: string): Row {
  const { metric } = CHART[scenario];
  const ranked = rows
    .filter((row) => typeof row[metric] === "number")
    .sort((a, b) => (a[metric] as number) - (b[metric] as number));
  const median = ranked.length ? ranked[(ranked.length - 1) >> 1] : rows[0];
  return rows.length > 1 ? { ...median, rounds: rows.length } : median;
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------
// Ratios: the speed targets of the project, measured in this run
// ---------------------------------------------------------------------------

interface Ratio {
  target: string;
  value: number | null;
  /** `>= 0.9`, `< 30`: the goal. */
  goal: string;
  result: "PASS" | "MISS" | "n/a";
  unit: string;
}

function metric(
  result: BenchResult,
  scenario: string,
  server: string,
  name: string,
): number | null {
  const row = result.scenarios.find((s) => s.id === scenario)?.rows.find((
    r,
  ) => r.server === server);
  const value = row?.[name];
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function computeRatios(result: BenchResult): Ratio[] {
  const ratios: Ratio[] = [];
  const divide = (a: number | null, b: number | null) =>
    a === null || b === null || b === 0 ? null : a / b;
  const add = (
    target: string,
    value: number | null,
    goal: { min?: number; max?: number },
    unit = "x",
  ) => {
    const pass = value === null
      ? "n/a"
      : (goal.min === undefined || value >= goal.min) &&
          (goal.max === undefined || value <= goal.max)
      ? "PASS"
      : "MISS";
    ratios.push({
      target,
      value,
      goal: goal.min !== undefined
        ? `>= ${goal.min}${unit}`
        : goal.max !== undefined
        ? `<= ${goal.max}${unit}`
        : "(none)",
      result: goal.min === undefined && goal.max === undefined ? "n/a" : pass,
      unit,
    });
  };
  const rps = (scenario: string, server: string) =>
    metric(result, scenario, server, "requestsPerSecond");
  const mbps = (server: string) => metric(result, "S3", server, "mbPerSecond");
  const pools = result.settings.workers;
  add(
    "S2 evented / bare, requests/s",
    divide(rps("S2", "evented"), rps("S2", "bare")),
    { min: 0.9 },
  );
  add(
    "S3 evented / bare, MB/s",
    divide(mbps("evented"), mbps("bare")),
    { min: 0.9 },
  );
  for (const pool of ["threaded-pool", "prefork"]) {
    const label = pool === "prefork"
      ? `prefork --workers ${pools}`
      : `threaded --pool ${pools}`;
    add(`S3 ${label} / evented, MB/s`, divide(mbps(pool), mbps("evented")), {
      min: 1.3,
    });
    add(
      `S5 ${label} / evented, requests/s`,
      divide(rps("S5", pool), rps("S5", "evented")),
      { min: 1.7 },
    );
    add(
      `S2 ${label} / evented, requests/s (load shares the cores: no target)`,
      divide(rps("S2", pool), rps("S2", "evented")),
      {},
    );
  }
  add(
    `S3 bare, ${pools} threads / bare, MB/s (what any pool can gain here: no target)`,
    divide(mbps("bare-pool"), mbps("bare")),
    {},
  );
  add(
    "S3 bare relay / bare, MB/s (what a relay to a process per client reaches in Deno: no target)",
    divide(mbps("bare-relay"), mbps("bare")),
    {},
  );
  add(
    "S2 on bare: load CPU / server CPU per request (the floor: no target)",
    divide(
      metric(result, "S2", "bare", "loadCpuUsPerRequest"),
      metric(result, "S2", "bare", "serverCpuUsPerRequest"),
    ),
    {},
  );
  const refs = result.references;
  add(
    "S4 forked / Deno child start rate",
    divide(rps("S4", "forked"), refs?.childStartsPerSecond ?? null),
    { min: 0.8 },
  );
  add(
    "S4 threaded / Worker start rate",
    divide(rps("S4", "threaded"), refs?.workerStartsPerSecond ?? null),
    { min: 0.8 },
  );
  add("S3 forked / evented, MB/s", divide(mbps("forked"), mbps("evented")), {
    min: 0.5,
  });
  for (const server of ["evented", "threaded-pool", "prefork"]) {
    add(
      `S6 ${server}: RSS per idle client`,
      metric(result, "S6", server, "kbPerIdleClient"),
      { max: 30 },
      " KB",
    );
  }
  add(
    "S2 on evented: load CPU / server CPU per request",
    divide(
      metric(result, "S2", "evented", "loadCpuUsPerRequest"),
      metric(result, "S2", "evented", "serverCpuUsPerRequest"),
    ),
    { max: 1 },
  );
  return ratios;
}

// ---------------------------------------------------------------------------
// Output: markdown tables, SVG chart
// ---------------------------------------------------------------------------

/** 3 significant figures, thousands separated: 25,100 · 312 · 4.21 · 0.042. */
function formatNumber(value: unknown): string {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  const abs = Math.abs(value);
  if (abs >= 100) return Math.round(value).toLocaleString("en-US");
  if (abs >= 10) return value.toFixed(1);
  if (abs >= 1) return value.toFixed(2);
  if (abs === 0) return "0";
  return value.toPrecision(2);
}

interface Column {
  title: string;
  value: (row: Row) => unknown;
  text?: boolean;
}

const COLUMNS: Record<string, Column[]> = {
  S1: [
    { title: "requests/s", value: (r) => r.requestsPerSecond },
    { title: "p50 ms", value: (r) => r.p50Ms },
    { title: "p99 ms", value: (r) => r.p99Ms },
    { title: "errors", value: (r) => r.errors },
  ],
  S2: [
    { title: "requests/s", value: (r) => r.requestsPerSecond },
    { title: "p99 ms", value: (r) => r.p99Ms },
    { title: "load CPU µs/req", value: (r) => r.loadCpuUsPerRequest },
    { title: "server CPU µs/req", value: (r) => r.serverCpuUsPerRequest },
    { title: "errors", value: (r) => r.errors },
  ],
  S3: [
    { title: "MB/s", value: (r) => r.mbPerSecond },
    { title: "p99 ms", value: (r) => r.p99Ms },
    { title: "server CPU cores", value: (r) => r.serverCores },
    { title: "load CPU cores", value: (r) => r.loadCores },
    { title: "errors", value: (r) => r.errors },
  ],
  S4: [
    { title: "connections/s", value: (r) => r.connectionsPerSecond },
    { title: "p50 ms", value: (r) => r.p50Ms },
    { title: "p99 ms", value: (r) => r.p99Ms },
    { title: "errors", value: (r) => r.errors },
  ],
  S5: [
    { title: "requests/s", value: (r) => r.requestsPerSecond },
    { title: "p99 ms", value: (r) => r.p99Ms },
    { title: "server CPU cores", value: (r) => r.serverCores },
    {
      title: "server CPU ms/req",
      value: (r) =>
        typeof r.serverCpuUsPerRequest === "number"
          ? r.serverCpuUsPerRequest / 1000
          : null,
    },
    { title: "errors", value: (r) => r.errors },
  ],
  S6: [
    {
      title: "idle clients served",
      value: (r) =>
        r.idleClients === undefined
          ? undefined
          : `${r.idleServed}${r.stoppedBy ? ` (${r.stoppedBy})` : ""}`,
      text: true,
    },
    {
      title: "RSS MiB before → held",
      value: (r) =>
        typeof r.rssBeforeBytes === "number"
          ? `${formatNumber(r.rssBeforeBytes / 1024 ** 2)} → ${
            formatNumber((r.rssHeldBytes as number) / 1024 ** 2)
          }`
          : undefined,
      text: true,
    },
    { title: "KB/idle client (RSS)", value: (r) => r.kbPerIdleClient },
    { title: "(PSS)", value: (r) => r.pssKbPerIdleClient },
    {
      title: "active p99 ms",
      value: (r) =>
        r.activeRequests === 0 ? "not served" : formatNumber(r.activeP99Ms),
      text: true,
    },
  ],
  S7: [
    { title: "second client's first echo, ms", value: (r) => r.firstEchoMs },
    { title: "errors", value: (r) => r.errors },
  ],
};

function markdown(result: BenchResult): string {
  const { machine, settings } = result;
  const lines = [
    "# Echo servers side by side",
    "",
    `${machine.cpus} CPUs (${machine.cpuModel}), ${machine.memoryGiB} GiB, ${machine.os}; ` +
    `Deno ${machine.deno} (V8 ${machine.v8}); ${machine.date}.`,
    `${settings.duration} s per run${settings.quick ? " (--quick)" : ""}${
      settings.rounds > 1 ? `, median of ${settings.rounds} rounds` : ""
    }; ` +
    `pools of ${settings.workers}; every server started afresh per scenario.`,
  ];
  for (const scenario of result.scenarios) {
    const columns = COLUMNS[scenario.id];
    const load = scenario.id === "S6"
      ? `${settings.idleClients} idle clients held open plus one active client`
      : scenario.id === "S7"
      ? `a second client while the first holds its connection idle for ${settings.holdSeconds} s (median of ${settings.waitRepeats})`
      : scenario.load;
    lines.push(
      "",
      `## ${scenario.id} ${scenario.title}: ${load}`,
      "",
      `| server | ${columns.map((c) => c.title).join(" | ")} |`,
      `| --- | ${columns.map(() => "---:").join(" | ")} |`,
    );
    for (const row of scenario.rows) {
      const cells = row.note
        ? [row.note, ...columns.slice(1).map(() => "")]
        : columns.map((c) => {
          const value = c.value(row);
          return c.text ? String(value ?? "–") : formatNumber(value);
        });
      lines.push(`| ${row.label} | ${cells.join(" | ")} |`);
    }
    if (scenario.id === "S4" && result.references) {
      const refs = result.references;
      lines.push(
        `| Deno child start + reap (reference) | ${
          formatNumber(refs.childStartsPerSecond)
        } | | | |`,
        `| Worker start + terminate (reference) | ${
          formatNumber(refs.workerStartsPerSecond)
        } | | | |`,
      );
    }
    const cpuMs = SCENARIOS.find((s) => s.id === scenario.id)?.cpuMs;
    const shortBurns = cpuMs
      ? scenario.rows.filter((row) =>
        typeof row.serverCpuUsPerRequest === "number" &&
        row.serverCpuUsPerRequest < cpuMs * 1000 * 0.8
      )
      : [];
    if (shortBurns.length) {
      lines.push(
        "",
        `${
          shortBurns.map((row) => row.label).join(", ")
        }: less than ${cpuMs} ms of CPU per request. A burn that ends on the ` +
          "wall clock stops early when busy threads outnumber the cores, so " +
          "these rows did less work per request than the others.",
      );
    }
    const mismatched = scenario.rows.filter((row) =>
      typeof row.mismatches === "number" && row.mismatches > 0
    );
    for (const row of mismatched) {
      lines.push("", `**${row.label}: ${row.mismatches} echoes differed.**`);
    }
  }
  if (result.ratios.length) {
    lines.push(
      "",
      "## Targets",
      "",
      "| target | measured | goal | |",
      "| --- | ---: | ---: | --- |",
    );
    for (const ratio of result.ratios) {
      const value = ratio.value === null
        ? "–"
        : `${formatNumber(ratio.value)}${ratio.unit}`;
      lines.push(
        `| ${ratio.target} | ${value} | ${ratio.goal} | ${ratio.result} |`,
      );
    }
  }
  if (result.skipped.length) {
    lines.push(
      "",
      `Skipped: ${
        result.skipped.map((s) => `${s.name} (${s.reason})`).join(", ")
      }.`,
    );
  }
  if (result.leftovers.length) {
    lines.push("", `**Left behind (killed): ${result.leftovers.join("; ")}**`);
  }
  return lines.join("\n");
}

/** What each chart panel plots. */
const CHART: Record<
  string,
  { metric: string; unit: string; lowerIsBetter?: boolean; log?: boolean }
> = {
  S1: { metric: "requestsPerSecond", unit: "requests/s" },
  S2: { metric: "requestsPerSecond", unit: "requests/s" },
  S3: { metric: "mbPerSecond", unit: "MB/s" },
  S4: { metric: "connectionsPerSecond", unit: "connections/s" },
  S5: { metric: "requestsPerSecond", unit: "requests/s" },
  // Kilobytes against tens of megabytes, a millisecond against a second:
  // on a linear scale the models that matter would be invisible.
  S6: {
    metric: "kbPerIdleClient",
    unit: "KB of RSS per idle client",
    lowerIsBetter: true,
    log: true,
  },
  S7: {
    metric: "firstEchoMs",
    unit: "ms to the second client's echo",
    lowerIsBetter: true,
    log: true,
  },
};

/** What a bar's number alone would hide. */
function barNote(scenario: string, row: Row): string | undefined {
  if (scenario === "S6" && row.stoppedBy) return `held ${row.idleServed}`;
  const cpuMs = SCENARIOS.find((s) => s.id === scenario)?.cpuMs;
  if (
    cpuMs && typeof row.serverCpuUsPerRequest === "number" &&
    row.serverCpuUsPerRequest < cpuMs * 1000 * 0.8
  ) {
    return `${formatNumber(row.serverCpuUsPerRequest / 1000)} ms CPU/req`;
  }
  if (typeof row.errors === "number" && row.errors > 0) {
    return `${formatNumber(row.errors)} errors`;
  }
  return undefined;
}

const COLORS: Record<string, string> = {
  bare: "#6b7280",
  "bare-relay": "#fca5a5",
  evented: "#2563eb",
  iterative: "#9333ea",
  forked: "#dc2626",
  threaded: "#ea580c",
  "threaded-pool": "#ca8a04",
  prefork: "#16a34a",
  "socat-pipe": "#94a3b8",
  "socat-exec": "#94a3b8",
  ncat: "#94a3b8",
  reference: "#cbd5e1",
};

function escapeXml(text: string): string {
  return text.replace(
    /[&<>"]/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]!,
  );
}

/** A bar chart, one panel per scenario, in plain SVG. */
function chart(result: BenchResult): string {
  const panelWidth = 470;
  const labelWidth = 170;
  const barSpace = 190;
  const rowHeight = 22;
  const gap = 20;
  const columns = 2;
  const panels = result.scenarios.map((scenario) => {
    const { metric, unit, lowerIsBetter } = CHART[scenario.id];
    const bars = scenario.rows.map((row) => ({
      label: row.label.replace(/ \(reference\)$/, " (ref)"), // fits the panel
      value: typeof row[metric] === "number" ? row[metric] as number : null,
      color: COLORS[row.server] ?? COLORS.reference,
      note: row.note ?? barNote(scenario.id, row),
    }));
    if (scenario.id === "S4" && result.references) {
      bars.push(
        {
          label: "Deno child start (ref)",
          value: result.references.childStartsPerSecond,
          color: COLORS.reference,
          note: undefined,
        },
        {
          label: "Worker start (ref)",
          value: result.references.workerStartsPerSecond,
          color: COLORS.reference,
          note: undefined,
        },
      );
    }
    return { scenario, unit, lowerIsBetter, log: CHART[scenario.id].log, bars };
  });
  const heights = panels.map((p) =>
    52 + p.bars.length * rowHeight + (p.log ? 24 : 8)
  );
  const rows = Math.ceil(panels.length / columns);
  const rowTops: number[] = [];
  let top = 64;
  for (let r = 0; r < rows; r++) {
    rowTops.push(top);
    top += Math.max(...heights.slice(r * columns, r * columns + columns)) +
      gap;
  }
  const width = columns * panelWidth + (columns + 1) * gap;
  const height = top + 10;
  const { machine, settings } = result;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="${gap}" y="28" font-size="18" font-weight="bold" fill="#111827">Echo servers side by side</text>`,
    `<text x="${gap}" y="48" font-size="12" fill="#4b5563">${
      escapeXml(
        `${machine.cpus} CPUs (${machine.cpuModel}), Deno ${machine.deno}, ${
          machine.date.slice(0, 10)
        }; ${settings.duration} s per run${settings.quick ? " (quick)" : ""}${
          settings.rounds > 1 ? `, median of ${settings.rounds} rounds` : ""
        }`,
      )
    }</text>`,
  ];
  panels.forEach((panel, i) => {
    const x = gap + (i % columns) * (panelWidth + gap);
    const y = rowTops[Math.floor(i / columns)];
    const { scenario } = panel;
    const values = panel.bars.map((b) => b.value ?? 0).filter((v) => v > 0);
    const max = Math.max(...values, 1e-9);
    // Log panels start a third below the smallest value, so it shows.
    const low = Math.min(...values, max) / 3;
    const barWidth = (value: number) =>
      Math.max(
        1,
        panel.log
          ? Math.log(value / low) / Math.log(max / low) * barSpace
          : value / max * barSpace,
      );
    out.push(
      `<g transform="translate(${x},${y})">`,
      `<rect width="${panelWidth}" height="${
        heights[i]
      }" rx="6" fill="#f9fafb" stroke="#e5e7eb"/>`,
      `<text x="12" y="22" font-size="14" font-weight="bold" fill="#111827">${
        escapeXml(`${scenario.id} ${scenario.title}`)
      }</text>`,
      `<text x="12" y="40" font-size="11" fill="#4b5563">${
        escapeXml(
          `${panel.unit} (${
            panel.lowerIsBetter ? "lower" : "higher"
          } is better${panel.log ? "; log scale" : ""})`,
        )
      }</text>`,
    );
    if (panel.log && values.length) {
      // A tick per power of ten, so that the log scale reads as one.
      const axis = 52 + panel.bars.length * rowHeight + 4;
      for (
        let tick = 10 ** Math.ceil(Math.log10(low));
        tick <= max;
        tick *= 10
      ) {
        const tx = (labelWidth + barWidth(tick)).toFixed(1);
        out.push(
          `<line x1="${tx}" y1="52" x2="${tx}" y2="${axis}" stroke="#d1d5db" stroke-dasharray="2,3"/>`,
          `<text x="${tx}" y="${
            axis + 12
          }" font-size="10" text-anchor="middle" fill="#6b7280">${
            tick.toLocaleString("en-US", { maximumFractionDigits: 3 })
          }</text>`,
        );
      }
    }
    panel.bars.forEach((bar, j) => {
      const by = 52 + j * rowHeight;
      out.push(
        `<text x="${labelWidth - 8}" y="${
          by + 15
        }" font-size="12" text-anchor="end" fill="#111827">${
          escapeXml(bar.label)
        }</text>`,
      );
      if (bar.value === null) {
        out.push(
          `<text x="${labelWidth}" y="${
            by + 15
          }" font-size="11" fill="#6b7280">${
            escapeXml(bar.note ?? "no result")
          }</text>`,
        );
        return;
      }
      const w = bar.value > 0 ? barWidth(bar.value) : 1;
      out.push(
        `<rect x="${labelWidth}" y="${by + 3}" width="${
          w.toFixed(1)
        }" height="${rowHeight - 6}" fill="${bar.color}"/>`,
        `<text x="${labelWidth + w + 6}" y="${
          by + 15
        }" font-size="11" fill="#111827">${
          escapeXml(
            formatNumber(bar.value) + (bar.note ? ` (${bar.note})` : ""),
          )
        }</text>`,
      );
    });
    out.push("</g>");
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

const USAGE = `usage: deno run -A ${SCRIPT} [options]

Runs every echo server model, and references, through the same scenarios.

  --only NAMES        servers to run, comma-separated (default: all found):
                      models: evented, iterative, forked, threaded,
                      threaded-pool, prefork; references: bare (the simplest
                      Deno echo loop), socat-pipe, socat-exec, ncat
  --scenarios IDS     scenarios to run, comma-separated (default: all):
                      S1 latency       1 connection, 64 B ping-pong
                      S2 many clients  50 connections, 64 B ping-pong
                      S3 bulk          4 connections, 64 KiB messages
                      S4 creation      a new connection per request, 8 in parallel
                      S5 CPU-bound     server --cpu-ms 20, 4 connections
                      S6 memory        1,000 idle clients plus one active one
                      S7 waiting       a second client while the first idles 1 s
  --duration SECONDS  length of each timed run (default 3)
  --rounds N          run each scenario N times on each server, interleaved,
                      and keep the median (default 1; odd N for a true median)
  --workers N         N of threaded --pool N and prefork --workers N
                      (default: the number of CPUs, ${CPUS})
  --quick             0.3 s runs, no warm-up, 20 idle clients in S6, a 0.3 s
                      wait in S7: a smoke test, not a measurement
  --json              print the results as one JSON object instead of tables
  --svg FILE          also write a bar chart, one panel per scenario
  -h, --help          show this help`;

const OPTIONS = {
  only: { type: "string" },
  scenarios: { type: "string" },
  duration: { type: "string" },
  workers: { type: "string" },
  rounds: { type: "string" },
  quick: { type: "boolean" },
  json: { type: "boolean" },
  svg: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

interface Command {
  specs: ServerSpec[];
  scenarios: Scenario[];
  settings: Settings;
  json: boolean;
  svg?: string;
}

async function parseBenchArgs(args: string[]): Promise<Command> {
  const fault = (reason: string): never => usageError(SCRIPT, reason, USAGE);
  const { values, positionals } = await parseCommandLine(
    args,
    OPTIONS,
    SCRIPT,
    USAGE,
  );
  if (positionals.length) fault(`unexpected argument: ${positionals[0]}`);
  const list = (value: string | boolean | undefined, name: string) => {
    const items = String(value).split(",").map((item) => item.trim())
      .filter(Boolean);
    if (!items.length) fault(`${name} needs a comma-separated list`);
    return items;
  };
  const quick = values.quick === true;
  const workers = numberOption(values.workers, "--workers", {
    min: 1,
    max: 64,
    integer: true,
  }, fault) ?? CPUS;
  let specs = serverSpecs(workers);
  if (values.only !== undefined) {
    const names = list(values.only, "--only");
    for (const name of names) {
      if (!SERVER_NAMES.includes(name)) {
        fault(
          `--only: unknown server "${name}" (known: ${
            SERVER_NAMES.join(", ")
          })`,
        );
      }
    }
    specs = specs.filter((spec) => names.includes(spec.name));
  }
  let scenarios = SCENARIOS;
  if (values.scenarios !== undefined) {
    const ids = list(values.scenarios, "--scenarios").map((id) =>
      id.toUpperCase()
    );
    for (const id of ids) {
      if (!SCENARIO_IDS.includes(id)) {
        fault(`--scenarios: unknown scenario "${id}" (known: S1 to S7)`);
      }
    }
    scenarios = SCENARIOS.filter((scenario) => ids.includes(scenario.id));
  }
  if (values.svg === "") fault("--svg needs a file name");
  const duration = numberOption(values.duration, "--duration", {
    min: 0.1,
    max: 600,
  }, fault) ?? (quick ? 0.3 : 3);
  return {
    specs,
    scenarios,
    settings: {
      duration,
      warmup: quick ? 0 : Math.min(1, duration / 3),
      rounds: numberOption(values.rounds, "--rounds", {
        min: 1,
        max: 99,
        integer: true,
      }, fault) ?? 1,
      idleClients: quick ? 20 : 1000,
      holdSeconds: quick ? 0.3 : 1,
      waitRepeats: quick ? 1 : 3,
      workers,
      quick,
    },
    json: values.json === true,
    svg: values.svg as string | undefined,
  };
}

/** A progress line on stderr, only when stderr is a terminal. */
function progressLine(): Progress {
  if (!Deno.stderr.isTerminal()) return { show() {}, clear() {} };
  const encoder = new TextEncoder();
  const write = (text: string) => {
    try {
      Deno.stderr.writeSync(encoder.encode(text));
    } catch { /* stderr gone */ }
  };
  let shown = 0;
  return {
    show(text) {
      // At most ten updates a second: a terminal is slower than a load loop.
      const now = performance.now();
      if (now - shown < 100) return;
      shown = now;
      const width = Deno.consoleSize().columns || 80;
      write(`\r\x1b[2K${text.slice(0, width - 1)}`);
    },
    clear() {
      shown = 0;
      write("\r\x1b[2K");
    },
  };
}

// ---------------------------------------------------------------------------
// `bare`: the simplest Deno echo loop, the yardstick of S2 and S3
// ---------------------------------------------------------------------------

/**
 * Reads into one reused 64 KiB buffer and writes back what was read: no
 * logging, limits or timeouts. Run as `bench.ts --bare-server [THREADS]`; it
 * prints the same banner as the models and dies on SIGTERM. With THREADS > 1
 * the same loop also runs in THREADS - 1 Workers, each with its own listener on
 * the port (SO_REUSEPORT, as `threaded.ts --pool` does): the most that any
 * pool can gain over one thread on this machine, under this load.
 */
async function bareServer(threads: number): Promise<void> {
  const listener = Deno.listen({
    hostname: "127.0.0.1",
    port: 0,
    reusePort: threads > 1,
  });
  const { port } = listener.addr;
  for (let i = 1; i < threads; i++) {
    const worker = new Worker(import.meta.url, {
      type: "module",
      name: `${BARE_WORKER}${port}`,
    });
    await new Promise((resolve, reject) => {
      worker.onmessage = resolve;
      worker.onerror = (event) => {
        event.preventDefault();
        reject(new Error(`bare worker: ${event.message}`));
      };
    });
  }
  const how = threads > 1 ? `${threads} threads, ` : "";
  console.log(`listening on 127.0.0.1:${port} (bare, ${how}pid ${Deno.pid})`);
  await bareAcceptLoop(listener);
}

/**
 * The child of `--bare-relay`: the bare echo loop over the socket to its
 * parent, as an inline module, so that it loads nothing else.
 */
const BARE_RELAY_CHILD = "data:application/javascript," + encodeURIComponent(`
  const parent = await Deno.connect({ transport: "unix", path: Deno.args[0] });
  const buffer = new Uint8Array(64 * 1024);
  try {
    for (let n; (n = await parent.read(buffer)) !== null;) {
      for (let written = 0; written < n;) {
        written += await parent.write(buffer.subarray(written, n));
      }
    }
  } catch { /* the parent is gone */ }
`);

/** Live children of `--bare-relay`: as forked.ts's default --max-conns. */
const BARE_RELAY_CHILDREN = 64;

/**
 * What forked.ts does, and nothing else: per client, a child process that
 * connects back to a Unix socket made for it and echoes over it, and the
 * relay between the two connections. Run as `bench.ts --bare-relay`: the most
 * a process per client can move in Deno, which cannot hand the client's socket
 * to the child. SIGTERM ends it, and its children see their socket close.
 */
async function bareRelay(): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const dir = Deno.makeTempDirSync({ prefix: "bench-relay-" });
  Deno.addSignalListener("SIGTERM", () => {
    Deno.removeSync(dir, { recursive: true });
    Deno.exit(0);
  });
  console.log(
    `listening on 127.0.0.1:${listener.addr.port} (bare relay, pid ${Deno.pid})`,
  );
  let clients = 0;
  let freed = Promise.withResolvers<void>();
  for (let id = 1;; id++) {
    while (clients >= BARE_RELAY_CHILDREN) await freed.promise;
    let client: Deno.Conn;
    try {
      client = await listener.accept();
    } catch {
      continue; // a client that reset before accept
    }
    clients++;
    bareRelayClient(client, `${dir}/${id}.sock`).finally(() => {
      clients--;
      freed.resolve();
      freed = Promise.withResolvers<void>();
    });
  }
}

async function bareRelayClient(client: Deno.Conn, path: string): Promise<void> {
  const listener = Deno.listen({ transport: "unix", path });
  const child = spawnChildRole(BARE_RELAY_CHILD, [path], {
    denoFlags: [
      `--allow-net=unix:${path}`,
      `--allow-read=${path}`,
      `--allow-write=${path}`,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  });
  const link = await Promise.race([
    listener.accept(),
    child.status.then(() => null),
  ]).catch(() => null);
  listener.close();
  if (link) {
    await Promise.all([
      bareCopy(client, link, true),
      bareCopy(link, client, true),
    ]);
    link.close();
  }
  client.close();
  await child.status;
}

/**
 * Copies `from` to `to` until EOF, then half-closes `to` if asked (a relay
 * passes the EOF on; an echo server just closes).
 */
async function bareCopy(
  from: Deno.Conn,
  to: Deno.Conn,
  passEof: boolean,
): Promise<void> {
  const buffer = new Uint8Array(64 * 1024);
  try {
    for (let n; (n = await from.read(buffer)) !== null;) {
      for (let written = 0; written < n;) {
        written += await to.write(buffer.subarray(written, n));
      }
    }
    if (passEof) await to.closeWrite();
  } catch { /* reset */ }
}

/** The name of a bare server's Worker: this prefix, then the port. */
const BARE_WORKER = "bench-bare-";

/** In a bare server's Worker: listen on the shared port, say so, serve. */
async function bareWorker(port: number): Promise<void> {
  const listener = Deno.listen({
    hostname: "127.0.0.1",
    port,
    reusePort: true,
  });
  (self as unknown as Worker).postMessage("listening");
  await bareAcceptLoop(listener);
}

async function bareAcceptLoop(listener: Deno.Listener): Promise<never> {
  for (;;) {
    try {
      bareEcho(await listener.accept());
    } catch { /* a client that reset before accept */ }
  }
}

async function bareEcho(conn: Deno.Conn): Promise<void> {
  await bareCopy(conn, conn, false);
  try {
    conn.close();
  } catch { /* closed */ }
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** `promise`'s value, or `fallback` if it takes over `ms`. */
async function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  fallback: T,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<T>((resolve) =>
        timer = setTimeout(() => resolve(fallback), ms)
      ),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function settlesWithin(
  promise: Promise<unknown>,
  ms: number,
): Promise<boolean> {
  return withTimeout(promise.then(() => true, () => true), ms, false);
}

async function main(args: string[]): Promise<void> {
  const command = await parseBenchArgs(args);
  const progress = progressLine();
  // Killed by pid (a terminal's Ctrl-C reaches the servers too, but `kill`
  // does not): stop the servers it started, then exit as the signal would.
  onShutdownSignal(async (signal, count) => {
    progress.clear();
    if (count === 1) {
      console.error(`bench.ts: ${signal}: stopping the servers`);
      await Promise.all([...runningServers].map((server) => server.stop()));
    }
    Deno.exit(signal === "SIGINT" ? 130 : 143);
  });
  const result = await runBench(
    command.specs,
    command.scenarios,
    command.settings,
    progress,
  );
  progress.clear();
  if (command.svg) {
    try {
      await Deno.writeTextFile(command.svg, chart(result));
    } catch (error) {
      fail(SCRIPT, `cannot write ${command.svg}: ${(error as Error).message}`);
    }
  }
  console.log(
    command.json ? JSON.stringify(result, null, 2) : markdown(result),
  );
}

if (self.name?.startsWith(BARE_WORKER)) {
  await bareWorker(Number(self.name.slice(BARE_WORKER.length)));
} else if (import.meta.main) {
  if (Deno.args[0] === "--bare-server") {
    await bareServer(Math.max(1, Number(Deno.args[1] ?? 1) || 1));
  } else if (Deno.args[0] === "--bare-relay") {
    await bareRelay();
  } else await main(Deno.args);
}
