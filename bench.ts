#!/usr/bin/env -S deno run --allow-all
/**
 * bench.ts: every echo server model side by side on the same load.
 *
 * Every textbook on network servers makes claims: an iterative server
 * makes the next client wait; a process per client is expensive to create;
 * threads are cheaper; a pool removes the creation cost; an event loop stalls
 * when a client needs CPU while threads and processes use every core. This
 * script makes each claim a number, the way Stevens' UNP chapter 30 compares
 * its server designs in one table: the servers below are its rows, the
 * scenarios its columns. Each server starts afresh on port 0 for each
 * scenario and is driven by client.ts's load engine (load.ts).
 *
 * Run:  deno task bench                    (everything: about 5 minutes)
 *       deno task bench --rounds 3 --report docs/benchmarks.md --svg docs/bench.svg
 * Try:  deno run -A bench.ts --only evented,bare --scenarios S2,S3
 *       deno run -A bench.ts --quick               (a smoke run, about 70 s)
 *
 * Read: rows of one run are comparable with each other; a busy machine makes
 * every number noisy, so compare ratios, not absolute figures.
 *
 * Copy with: lib/ bench/ (the folders, as they are), and the models to compare.
 * Flags without deno.json: the shebang's. MIT licensed; see LICENSE.
 */
import { fail, numberOption, parseCommandLine, usageError } from "./lib/cli.ts";
import { onShutdownSignal } from "./lib/signals.ts";
import { chart } from "./bench/chart.ts";
import { markdown } from "./bench/report.ts";
import { progressLine, runBench } from "./bench/run.ts";
import { busyWorker, spread } from "./bench/pools.ts";
import {
  idleClients,
  type Scenario,
  secondClient,
  steadyLoad,
} from "./bench/scenarios.ts";
import {
  model,
  ncat,
  type ServerSpec,
  socat,
  stopAllServers,
  yardstick,
} from "./bench/servers.ts";
import { bareRelay, bareServer, handoff } from "./bench/yardsticks.ts";

/** The rows: the models, and the yardsticks they are measured against. */
function servers(workers: number): ServerSpec[] {
  return [
    yardstick("bare", "bare", ["--bare-server"]),
    yardstick("bare-pool", `bare, ${workers} threads`, [
      "--bare-server",
      String(workers),
    ]),
    yardstick("bare-relay", "bare relay", ["--bare-relay"]),
    yardstick("handoff", "child handed the socket", ["--handoff"]),
    { ...model("evented.ts"), workers: 1 }, // one event loop: a pool of one
    model("iterative.ts"),
    model("forked.ts"),
    model("threaded.ts"),
    ...[
      model("threaded.ts", ["--pool", String(workers)], "threaded-pool"),
      model("prefork.ts", ["--workers", String(workers)]),
      model("cluster.ts", ["--workers", String(workers)], "cluster-shared"),
      model(
        "cluster.ts",
        ["--workers", String(workers), "--schedule", "round-robin"],
        "cluster-rr",
      ),
    ].map((pool) => ({ ...pool, workers })),
    socat("socat-pipe", "PIPE"),
    socat("socat-exec", "EXEC:cat"),
    ncat(),
  ];
}

/** S2's load: many clients at once, each connection held for the run. */
const MANY_CLIENTS = { connections: 50 };
/** S4's load: a new connection per request. */
const NEW_CLIENTS = { connections: 8, newConnection: true };

/** The columns: what each scenario does to every server (S8, S9: to pools). */
const scenarios = (quick: boolean): Scenario[] => [
  steadyLoad("S1", "latency", "1 connection, 64 B ping-pong", {}),
  steadyLoad(
    "S2",
    "many clients",
    "50 connections, 64 B ping-pong",
    MANY_CLIENTS,
  ),
  steadyLoad("S3", "bulk", "4 connections, 64 KiB messages", {
    connections: 4,
    size: 64 * 1024,
  }, "mbPerSecond"),
  steadyLoad(
    "S4",
    "creation cost",
    "a new connection per request, 8 in parallel",
    NEW_CLIENTS,
    "connectionsPerSecond",
  ),
  steadyLoad(
    "S5",
    "CPU-bound",
    "server --cpu-ms 20, 4 connections, 64 B",
    {
      connections: 4,
    },
    "requestsPerSecond",
    20,
  ),
  idleClients("S6", "memory", "idle clients held, then one active client"),
  secondClient("S7", "waiting", "a second client while the first idles"),
  spread("S8", "spread", "S2's and S4's loads, every client logged", {
    S2: MANY_CLIENTS,
    S4: NEW_CLIENTS,
  }),
  busyWorker(
    "S9",
    "busy worker",
    `server --cpu-ms ${busyCpuMs(quick)}, one worker kept busy, new clients`,
    busyCpuMs(quick),
  ),
];

/** S9's burn per message: long enough to stand out from any other wait. */
function busyCpuMs(quick: boolean): number {
  return quick ? 100 : 500;
}

const CPUS = navigator.hardwareConcurrency;
const SERVER_NAMES = servers(CPUS).map((spec) => spec.name);

const SCENARIO_LINES = scenarios(false).map(({ id, title, load }) =>
  " ".repeat(22) + `${id} ${title}`.padEnd(17) + load
).join("\n");

const USAGE = `usage: deno run -A bench.ts [options]

Runs every echo server model, and references, through the same scenarios.

  --only NAMES        servers to run, comma-separated (default: all found):
                      models: evented, iterative, forked, threaded,
                      threaded-pool, prefork, cluster-shared, cluster-rr;
                      references: bare (the simplest Deno echo loop),
                      bare-pool (the same on N threads), bare-relay (a child
                      process per client and nothing else), handoff (a
                      child per client handed the socket), socat-pipe,
                      socat-exec, ncat
  --scenarios IDS     scenarios to run, comma-separated (default: all):
${SCENARIO_LINES}
  --duration SECONDS  length of each timed run, 0.1 to 600 (default 3)
  --rounds N          run each scenario N times on each server, interleaved,
                      and keep the median, 1 to 99 (default 1; odd N for a
                      true median)
  --workers N         N of threaded --pool N, prefork and cluster --workers
                      N, 1 to 64 (default: the number of CPUs, ${CPUS})
  --quick             0.3 s runs, no warm-up, 20 idle clients in S6, a 0.3 s
                      wait in S7, 3 new clients of 100 ms in S9: a smoke
                      test, not a measurement
  --json              print the results as one JSON object instead of tables
  --svg FILE          also write a bar chart, one panel per scenario
  --report FILE       also write the tables as a markdown page (with the
                      chart, if --svg), e.g. docs/benchmarks.md
  -h, --help          show this help`;

/** Reads the command line, or exits 2 saying why. */
async function parseBenchArgs(args: string[]) {
  const fault = (reason: string): never =>
    usageError("bench.ts", reason, USAGE);
  const takesValue = ["only", "scenarios", "duration", "workers", "rounds"];
  const { values, positionals } = await parseCommandLine(
    args,
    {
      ...Object.fromEntries(
        [...takesValue, "svg", "report"].map((
          name,
        ) => [name, { type: "string" }]),
      ),
      quick: { type: "boolean" },
      json: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
    "bench.ts",
    USAGE,
  );
  if (positionals.length) fault(`unexpected argument: ${positionals[0]}`);
  const list = (name: string, what: string, known: string[], upper = false) => {
    if (values[name] === undefined) return known;
    const items = String(values[name]).split(",").map((item) => item.trim())
      .filter(Boolean).map((item) => upper ? item.toUpperCase() : item);
    if (!items.length) fault(`--${name} needs a comma-separated list`);
    const unknown = items.find((item) => !known.includes(item));
    if (unknown) {
      fault(
        `--${name}: unknown ${what} "${unknown}" (known: ${known.join(", ")})`,
      );
    }
    return items;
  };
  const number = (name: string, min: number, max: number, integer = true) =>
    numberOption(values[name], `--${name}`, { min, max, integer }, fault);
  for (const file of ["svg", "report"]) {
    if (values[file] === "") fault(`--${file} needs a file name`);
  }
  const quick = values.quick === true;
  const workers = number("workers", 1, 64) ?? CPUS;
  const duration = number("duration", 0.1, 600, false) ?? (quick ? 0.3 : 3);
  const only = list("only", "server", SERVER_NAMES);
  const table = scenarios(quick);
  const ids = list("scenarios", "scenario", table.map((s) => s.id), true);
  return {
    specs: servers(workers).filter((spec) => only.includes(spec.name)),
    scenarios: table.filter((scenario) => ids.includes(scenario.id)),
    settings: {
      duration,
      warmup: quick ? 0 : Math.min(1, duration / 3),
      rounds: number("rounds", 1, 99) ?? 1,
      idleClients: quick ? 20 : 1000,
      holdSeconds: quick ? 0.3 : 1,
      waitRepeats: quick ? 1 : 3,
      busyProbes: quick ? 3 : 9,
      workers,
      quick,
    },
    json: values.json === true,
    svg: values.svg as string | undefined,
    report: values.report as string | undefined,
  };
}

/** Runs the bench, then prints the tables (or JSON) and writes the files. */
async function main(args: string[]): Promise<void> {
  const command = await parseBenchArgs(args);
  const progress = progressLine();
  // Killed by pid (a terminal's Ctrl-C reaches the servers too, but `kill`
  // does not): stop the servers it started, then exit as the signal would.
  onShutdownSignal(async (signal, count) => {
    progress.clear();
    if (count === 1) {
      console.error(`bench.ts: ${signal}: stopping the servers`);
      await stopAllServers();
    }
    Deno.exit(signal === "SIGINT" ? 130 : 143);
  });
  const { specs, scenarios, settings } = command;
  const result = await runBench(specs, scenarios, settings, args, progress);
  progress.clear();
  const write = async (file: string | undefined, text: () => string) => {
    try {
      if (file) await Deno.writeTextFile(file, text());
    } catch (error) {
      fail("bench.ts", `cannot write ${file}: ${(error as Error).message}`);
    }
  };
  await write(command.svg, () => chart(result));
  const { relative, dirname, resolve } = await import("node:path");
  const chartPath = command.svg && command.report &&
    relative(dirname(resolve(command.report)), resolve(command.svg));
  await write(command.report, () => markdown(result, chartPath || undefined));
  console.log(
    command.json
      ? JSON.stringify(result, null, 2)
      : markdown(result, chartPath || undefined).trimEnd(),
  );
}

if (import.meta.main) {
  if (Deno.args[0] === "--bare-server") {
    await bareServer(Math.max(1, Number(Deno.args[1] ?? 1) || 1));
  } else if (Deno.args[0] === "--bare-relay") {
    await bareRelay();
  } else if (Deno.args[0] === "--handoff") {
    await handoff();
  } else await main(Deno.args);
}
