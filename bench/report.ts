/**
 * A bench run as a markdown page: where and when it ran, a table per
 * scenario, the targets. Complete, so that it can be committed as
 * docs/benchmarks.md and regenerated rather than retyped.
 *
 * @module
 */
import type { BenchResult } from "./run.ts";
import { type Row, servedClients } from "./scenarios.ts";
import { formatBytes } from "../lib/log.ts";

/** 3 significant figures, thousands separated: 25,100 · 312 · 4.21 · 0.042. */
export function formatNumber(value: unknown): string {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  const abs = Math.abs(value);
  if (abs >= 100) return Math.round(value).toLocaleString("en-US");
  if (abs >= 10) return value.toFixed(1);
  if (abs >= 1) return value.toFixed(2);
  if (abs === 0) return "0";
  return value.toPrecision(2);
}

/** The CPU a row's server spent per request in a `--cpu-ms` scenario, when
 * clearly short of it: the burn ended on the wall clock (see markdown()). */
export function shortBurnMs(row: Row, cpuMs?: number): number | undefined {
  const us = row.serverCpuUsPerRequest;
  return cpuMs && typeof us === "number" && us < cpuMs * 1000 * 0.8
    ? us / 1000
    : undefined;
}

/** Each scenario's table: the columns, by the row field (or cell) they show. */
const COLUMNS: Record<string, string> = {
  S1: "requestsPerSecond p50Ms p99Ms errors",
  S2:
    "requestsPerSecond p99Ms loadCpuUsPerRequest serverCpuUsPerRequest errors",
  S3: "mbPerSecond p99Ms serverCores loadCores errors",
  S4: "connectionsPerSecond p50Ms p99Ms errors",
  S5: "requestsPerSecond p99Ms serverCores serverCpuMsPerRequest errors",
  S6:
    "idleServed rssMiB kbPerIdleClient pssKbPerIdleClient activeP99Ms kbPerServedClient",
  S7: "firstEchoMs errors",
  S8:
    "s2Clients s2SharesPercent s2Range s4Clients s4SharesPercent s4Range restedPairsSplit backToBackPairsSplit",
  S9: "probesWaited medianWaitMs maxWaitMs errors",
};

/** A whole number, thousands separated: `1,944`. */
function count(value: unknown): string {
  return typeof value === "number" ? value.toLocaleString("en-US") : "–";
}

/** A share in percent, whole from 10 up: `52`, `3.1`. */
function percent(share: unknown): string {
  if (typeof share !== "number") return "–";
  return share >= 10 ? String(Math.round(share)) : share.toFixed(1);
}

/** Shares in percent, worker by worker: `52 / 48`. */
function shares(value: unknown): string {
  return Array.isArray(value) ? value.map(percent).join(" / ") : "–";
}

/** The least and the most a worker took in load `key` of S8: `48–52`. */
function shareRange(key: string): (row: Row) => string {
  return (row) =>
    `${percent(row[`${key}MinSharePercent`])}–${
      percent(row[`${key}MaxSharePercent`])
    }`;
}

/** How many of S8's simultaneous pairs went to two workers: `17/40`. */
function pairsSplit(key: string): (row: Row) => string {
  return (row) =>
    typeof row[key] === "number" ? `${row[key]}/${row.pairs}` : "–";
}

/** Column titles; and how a cell reads when it is not a row's field as is. */
const CELLS: Record<string, [title: string, cell?: (row: Row) => string]> = {
  requestsPerSecond: ["requests/s"],
  p50Ms: ["p50 ms"],
  p99Ms: ["p99 ms"],
  errors: ["errors"],
  loadCpuUsPerRequest: ["load CPU µs/req"],
  serverCpuUsPerRequest: ["server CPU µs/req"],
  mbPerSecond: ["MB/s"],
  serverCores: ["server CPU cores"],
  loadCores: ["load CPU cores"],
  connectionsPerSecond: ["connections/s"],
  serverCpuMsPerRequest: [
    "server CPU ms/req",
    (row) => formatNumber((row.serverCpuUsPerRequest as number) / 1000),
  ],
  idleServed: [
    "idle clients served",
    (row) => `${row.idleServed}${row.stoppedBy ? ` (${row.stoppedBy})` : ""}`,
  ],
  rssMiB: [
    "RSS MiB before → held",
    (row) =>
      [row.rssBeforeBytes, row.rssHeldBytes]
        .map((bytes) => formatNumber((bytes as number) / 1024 ** 2))
        .join(" → "),
  ],
  kbPerIdleClient: ["KB/idle client (RSS)"],
  kbPerServedClient: [
    "KB kept/served client (RSS)",
    (row) =>
      row.servedFailures
        ? `${row.servedFailures} not served`
        : formatNumber(row.kbPerServedClient),
  ],
  pssKbPerIdleClient: ["(PSS)"],
  activeP99Ms: [
    "active p99 ms",
    (row) =>
      row.activeRequests === 0 ? "not served" : formatNumber(row.activeP99Ms),
  ],
  firstEchoMs: ["second client's first echo, ms"],
  s2Clients: ["S2 clients", (row) => count(row.s2Clients)],
  s2SharesPercent: ["S2 % per worker", (row) => shares(row.s2SharesPercent)],
  s2Range: ["S2 min–max %", shareRange("s2")],
  s4Clients: ["S4 clients", (row) => count(row.s4Clients)],
  s4SharesPercent: ["S4 % per worker", (row) => shares(row.s4SharesPercent)],
  s4Range: ["S4 min–max %", shareRange("s4")],
  restedPairsSplit: ["pairs split, rested", pairsSplit("restedPairsSplit")],
  backToBackPairsSplit: [
    "pairs split, back to back",
    pairsSplit("backToBackPairsSplit"),
  ],
  probesWaited: [
    "new clients that waited",
    (row) => `${row.probesWaited} of ${row.probes}`,
  ],
  medianWaitMs: ["median wait ms"],
  maxWaitMs: ["max wait ms"],
};

/** `args` as a shell would need them typed. */
function shellWords(args: string[]): string {
  return args.map((arg) => /^[\w./,:=+-]+$/.test(arg) ? arg : `'${arg}'`)
    .join(" ");
}

/**
 * The whole page. `chart` is the SVG's path relative to the page, when the
 * run wrote one, to show it at the top.
 */
export function markdown(result: BenchResult, chart?: string): string {
  const { machine, settings } = result;
  const command = ["deno task bench", shellWords(result.args)].join(" ").trim();
  const lines = [
    "# Echo servers side by side",
    "",
    `Written by \`${command}\`: regenerate it the same way rather than edit it.`,
    "",
    `${machine.cpus} CPUs (${machine.cpuModel}), ${machine.memoryGiB} GiB, ${machine.os}; ` +
    `Deno ${machine.deno} (V8 ${machine.v8}); ${machine.date}.`,
    `${settings.duration} s per run${settings.quick ? " (--quick)" : ""}${
      settings.rounds > 1 ? `, median of ${settings.rounds} rounds` : ""
    }; ` +
    `pools of ${settings.workers}; every server started afresh per scenario. ` +
    "Rows of one table ran minutes apart at most: compare them as ratios; " +
    "absolute figures move with the machine and its load.",
    ...(chart ? ["", `![The scenarios as bar charts](${chart})`] : []),
  ];
  const served = servedClients(settings.quick);
  for (const scenario of result.scenarios) {
    const columns = COLUMNS[scenario.id].split(" ");
    const load = scenario.id === "S6"
      ? `${settings.idleClients} idle clients held open plus one active client; then, once they are gone, ${served.warm} clients that each stream ${
        formatBytes(served.bytes)
      } and leave, and ${served.count} more: the RSS kept per client of the second batch, each reading taken once memory settled`
      : scenario.id === "S7"
      ? `a second client while the first holds its connection idle for ${settings.holdSeconds} s (median of ${settings.waitRepeats})`
      : scenario.id === "S8"
      ? `S2's and S4's loads, ${settings.duration} s each, on servers that log every client: the share of the clients each worker took (even: ${
        formatNumber(100 / settings.workers)
      } % each); then pairs of clients that connect at the same moment, one byte each on servers with --cpu-ms ${
        settings.quick ? 20 : 100
      }: how many pairs went to two workers, after a rest and back to back`
      : scenario.id === "S9"
      ? `servers with --cpu-ms ${scenario.cpuMs}; one client keeps its worker busy, ${settings.busyProbes} new clients one after the other time their first echo: the wait beyond their own ${scenario.cpuMs} ms`
      : scenario.load;
    lines.push(
      "",
      `## ${scenario.id} ${scenario.title}: ${load}`,
      "",
      `| server | ${columns.map((c) => CELLS[c][0]).join(" | ")} |`,
      `| --- | ${columns.map(() => "---:").join(" | ")} |`,
    );
    for (const row of scenario.rows) {
      const cells = row.note
        ? [row.note, ...columns.slice(1).map(() => "")]
        : columns.map((c) => CELLS[c][1]?.(row) ?? formatNumber(row[c]));
      lines.push(`| ${row.label} | ${cells.join(" | ")} |`);
    }
    const refs = result.references;
    if (scenario.id === "S4" && refs) {
      lines.push(
        `| Deno child start + reap (reference) | ${
          formatNumber(refs.childStartsPerSecond)
        } | | | |`,
        `| Worker start + terminate (reference) | ${
          formatNumber(refs.workerStartsPerSecond)
        } | | | |`,
      );
    }
    const shortBurns = scenario.rows.filter((row) =>
      shortBurnMs(row, scenario.cpuMs) !== undefined
    );
    if (shortBurns.length) {
      lines.push(
        "",
        `${
          shortBurns.map((row) => row.label).join(", ")
        }: less than ${scenario.cpuMs} ms of CPU per request. A burn that ends on the ` +
          "wall clock stops early when busy threads outnumber the cores, so " +
          "these rows did less work per request than the others.",
      );
    }
    for (const row of scenario.rows) {
      if (typeof row.mismatches === "number" && row.mismatches > 0) {
        lines.push("", `**${row.label}: ${row.mismatches} echoes differed.**`);
      }
      const unlogged = Object.keys(row).filter((key) =>
        key.endsWith("LogComplete") && row[key] === false
      ).map((key) => key.slice(0, -"LogComplete".length).toUpperCase());
      if (unlogged.length) {
        lines.push(
          "",
          `**${row.label}: not every client of ${
            unlogged.join(" and ")
          }'s load was logged; its shares count those that were.**`,
        );
      }
    }
  }
  if (result.ratios.length) {
    lines.push(
      "",
      "## Targets",
      "",
      ...(result.settings.quick
        ? [
          "A smoke run (--quick) is too short to pass or miss a target: the " +
          "ratios are shown, the verdicts are left to a real run.",
          "",
        ]
        : []),
      "| target | measured | goal | |",
      "| --- | ---: | ---: | --- |",
      ...result.ratios.map((ratio) => {
        const value = ratio.value === null
          ? "–"
          : `${formatNumber(ratio.value)}${ratio.unit}`;
        return `| ${ratio.target} | ${value} | ${ratio.goal} | ${ratio.result} |`;
      }),
    );
  }
  if (result.skipped.length) {
    const skipped = result.skipped.map((s) => `${s.name} (${s.reason})`);
    lines.push("", `Skipped: ${skipped.join(", ")}.`);
  }
  if (result.leftovers.length) {
    lines.push("", `**Left behind (killed): ${result.leftovers.join("; ")}**`);
  }
  return lines.join("\n") + "\n";
}
