/**
 * The project's speed targets, as ratios between rows of the same run (never
 * absolute figures, which a busy machine moves), and a few ratios with no
 * target that say what the machine allows.
 *
 * @module
 */
import type { BenchResult } from "./run.ts";

/** One target (or an informative ratio) as measured in a run. */
export interface Ratio {
  target: string;
  value: number | null;
  /** `>= 0.9x`, `<= 30 KB`, or `(none)`. */
  goal: string;
  /** "smoke": measured by a --quick run, too short to pass or miss. */
  result: "PASS" | "MISS" | "n/a" | "smoke";
  unit: string;
}

/** What a target compares: `[scenario, server, metric]`, over another, or alone. */
type Operand = [scenario: string, server: string, metric: string];

/** The targets, for pools of `workers`. */
function targets(workers: number): {
  target: string;
  of: Operand;
  over?: Operand | "child starts" | "Worker starts";
  min?: number;
  max?: number;
  unit?: string;
}[] {
  const rps = "requestsPerSecond";
  const mbps = "mbPerSecond";
  const pools = [
    ["threaded-pool", `threaded --pool ${workers}`],
    ["prefork", `prefork --workers ${workers}`],
  ];
  const noTarget = "no target";
  return [
    {
      target: "S2 evented / bare, requests/s",
      of: ["S2", "evented", rps],
      over: ["S2", "bare", rps],
      min: 0.9,
    },
    {
      target: "S3 evented / bare, MB/s",
      of: ["S3", "evented", mbps],
      over: ["S3", "bare", mbps],
      min: 0.9,
    },
    ...pools.flatMap(([pool, label]) => [
      {
        target: `S3 ${label} / evented, MB/s`,
        of: ["S3", pool, mbps] as Operand,
        over: ["S3", "evented", mbps] as Operand,
        min: 1.3,
      },
      {
        target: `S5 ${label} / evented, requests/s`,
        of: ["S5", pool, rps] as Operand,
        over: ["S5", "evented", rps] as Operand,
        min: 1.7,
      },
      {
        target:
          `S2 ${label} / evented, requests/s (load shares the cores: ${noTarget})`,
        of: ["S2", pool, rps] as Operand,
        over: ["S2", "evented", rps] as Operand,
      },
    ]),
    {
      target:
        `S3 bare, ${workers} threads / bare, MB/s (what any pool can gain here: ${noTarget})`,
      of: ["S3", "bare-pool", mbps],
      over: ["S3", "bare", mbps],
    },
    {
      target:
        `S3 bare relay / bare, MB/s (what a relay to a process per client reaches in Deno: ${noTarget})`,
      of: ["S3", "bare-relay", mbps],
      over: ["S3", "bare", mbps],
    },
    {
      target:
        `S3 handoff / bare, MB/s (a child handed the client's socket, no relay: ${noTarget})`,
      of: ["S3", "handoff", mbps],
      over: ["S3", "bare", mbps],
    },
    {
      target:
        `S2 on bare: load CPU / server CPU per request (the floor: ${noTarget})`,
      of: ["S2", "bare", "loadCpuUsPerRequest"],
      over: ["S2", "bare", "serverCpuUsPerRequest"],
    },
    {
      target: "S4 forked / Deno child start rate",
      of: ["S4", "forked", rps],
      over: "child starts",
      min: 0.8,
    },
    {
      target:
        `S4 handoff / Deno child start rate (a node:child_process child per client: ${noTarget})`,
      of: ["S4", "handoff", rps],
      over: "child starts",
    },
    {
      target: "S4 threaded / Worker start rate",
      of: ["S4", "threaded", rps],
      over: "Worker starts",
      min: 0.8,
    },
    {
      target: "S3 forked / evented, MB/s",
      of: ["S3", "forked", mbps],
      over: ["S3", "evented", mbps],
      min: 0.5,
    },
    ...["evented", "threaded-pool", "prefork"].map((server) => ({
      target: `S6 ${server}: RSS per idle client`,
      of: ["S6", server, "kbPerIdleClient"] as Operand,
      max: 30,
      unit: " KB",
    })),
    // What a server keeps per client it has served: nothing, in principle.
    // threaded.ts had a leak there (docs/models/threaded.md, "Memory"); the
    // others' figures are shown, without a target: a settled reading still
    // moves by a few MB with V8's timers.
    {
      target: "S6 threaded: RSS kept per served client",
      of: ["S6", "threaded", "kbPerServedClient"],
      max: 5,
      unit: " KB",
    },
    ...[
      "iterative",
      "evented",
      "forked",
      "threaded-pool",
      "prefork",
      "cluster-shared",
      "cluster-rr",
    ].map((server) => ({
      target: `S6 ${server}: RSS kept per served client (${noTarget})`,
      of: ["S6", server, "kbPerServedClient"] as Operand,
      unit: " KB",
    })),
    {
      target: "S2 on evented: load CPU / server CPU per request",
      of: ["S2", "evented", "loadCpuUsPerRequest"],
      over: ["S2", "evented", "serverCpuUsPerRequest"],
      max: 1,
    },
  ];
}

/** Every target, measured in `result`; n/a where a row did not run. */
export function computeRatios(result: BenchResult): Ratio[] {
  const value = ([scenario, server, metric]: Operand): number | null => {
    const row = result.scenarios.find((s) => s.id === scenario)?.rows
      .find((r) => r.server === server);
    const found = row?.[metric];
    return typeof found === "number" && Number.isFinite(found) ? found : null;
  };
  const refs = result.references;
  return targets(result.settings.workers).map((t) => {
    const unit = t.unit ?? "x";
    const over = t.over === undefined
      ? 1
      : t.over === "child starts"
      ? refs?.childStartsPerSecond ?? null
      : t.over === "Worker starts"
      ? refs?.workerStartsPerSecond ?? null
      : value(t.over);
    const of = value(t.of);
    const ratio = of === null || over === null || over === 0 ? null : of / over;
    const hasGoal = t.min !== undefined || t.max !== undefined;
    const pass = (t.min === undefined || ratio! >= t.min) &&
      (t.max === undefined || ratio! <= t.max);
    return {
      target: t.target,
      value: ratio,
      goal: t.min !== undefined
        ? `>= ${t.min}${unit}`
        : t.max !== undefined
        ? `<= ${t.max}${unit}`
        : "(none)",
      result: !hasGoal || ratio === null
        ? "n/a"
        : result.settings.quick
        ? "smoke"
        : pass
        ? "PASS"
        : "MISS",
      unit,
    };
  });
}
