/**
 * A bench run: every selected scenario on every selected server, scenario by
 * scenario, each server started afresh for each run and stopped by pid after
 * it, rounds interleaved, the median row kept; then the targets.
 *
 * @module
 */
import { describeMachine, type Machine } from "./procfs.ts";
import { type ReferenceRates, referenceRates } from "./references.ts";
import type { Row, Scenario, Settings, Status } from "./scenarios.ts";
import { missing, type ServerSpec, startServer } from "./servers.ts";
import { computeRatios, type Ratio } from "./targets.ts";

/** Everything a run found; `--json` prints exactly this. */
export interface BenchResult {
  machine: Machine;
  settings: Settings;
  /** bench.ts's arguments, to regenerate the report with. */
  args: string[];
  servers: { name: string; label: string; reference: boolean }[];
  skipped: { name: string; reason: string }[];
  /** Each scenario (without its `run`) with a row per server. */
  scenarios: (Omit<Scenario, "run"> & { rows: Row[] })[];
  references: ReferenceRates | null;
  ratios: Ratio[];
  leftovers: string[];
  seconds: number;
}

/** The progress line: shown on a terminal, cleared before other output. */
interface Progress {
  show: Status;
  clear(): void;
}

/** Prints `bench.ts: text` on stderr, below the progress line. */
function say(progress: Progress, text: string): void {
  progress.clear();
  console.error(`bench.ts: ${text}`);
}

/**
 * Runs every scenario on every server that can run here (a scenario for
 * pools, on those with a fixed set of workers).
 */
export async function runBench(
  specs: ServerSpec[],
  scenarios: Scenario[],
  settings: Settings,
  args: string[],
  progress: Progress,
): Promise<BenchResult> {
  const began = performance.now();
  const result: BenchResult = {
    machine: describeMachine(),
    settings,
    args,
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
    const reason = missing(spec);
    if (reason) {
      result.skipped.push({ name: spec.name, reason });
      say(progress, `skipping ${spec.name} (${reason})`);
    } else {
      runnable.push(spec);
      const { name, label, reference } = spec;
      result.servers.push({ name, label, reference });
    }
  }
  // Scenario by scenario, every server on a fresh start: rows that are
  // compared with each other run minutes apart at most, not a whole run.
  for (const scenario of scenarios) {
    if (
      scenario.id === "S4" &&
      runnable.some((spec) => /^(forked|threaded|handoff)$/.test(spec.name))
    ) {
      result.references = await referenceRates(settings, progress.show);
    }
    const measured = runnable.filter((spec) =>
      !scenario.workersOnly || spec.workers !== undefined
    );
    // Rounds interleave the servers, so that a busy spell of the machine
    // hits every row alike; each row is the round with the median result.
    const rounds = measured.map(() => [] as Row[]);
    for (let round = 1; round <= settings.rounds; round++) {
      for (const [i, spec] of measured.entries()) {
        if (rounds[i][0]?.note) continue; // what cannot run is not retried
        rounds[i].push(
          await runOnce(spec, scenario, settings, progress, result),
        );
      }
    }
    const { run: _, ...described } = scenario;
    const rows = rounds.map((tries) => medianRow(tries, scenario.metric));
    result.scenarios.push({ ...described, rows });
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
  const status = (text: string) =>
    progress.show(`${scenario.id} ${scenario.title} · ${spec.label} · ${text}`);
  const { name: server, label, reference } = spec;
  const row: Row = { server, label, reference };
  if (scenario.cpuMs && !spec.cpuMs) {
    row.note = "no --cpu-ms";
    return row;
  }
  const started = performance.now();
  status("starting");
  let running;
  try {
    running = await startServer(spec, scenario.cpuMs, scenario.verbose);
  } catch (error) {
    row.note = `did not start: ${(error as Error).message}`;
    say(progress, `${spec.name} ${row.note}`);
    return row;
  }
  try {
    Object.assign(row, await scenario.run(running, settings, status));
  } catch (error) {
    row.note = `failed: ${(error as Error).message}`;
  } finally {
    for (const proc of await running.stop()) {
      const text = `${spec.name} left ${proc} behind after ${scenario.id}`;
      result.leftovers.push(text);
      say(progress, `${text} (killed)`);
    }
    row.wallSeconds = (performance.now() - started) / 1000;
  }
  return row;
}

/** The row whose `metric` is the median of the rounds'. */
function medianRow(rows: Row[], metric: string): Row {
  const ranked = rows
    .filter((row) => typeof row[metric] === "number")
    .sort((a, b) => (a[metric] as number) - (b[metric] as number));
  const median = ranked.length ? ranked[(ranked.length - 1) >> 1] : rows[0];
  return rows.length > 1 ? { ...median, rounds: rows.length } : median;
}

/** A progress line on stderr, only when stderr is a terminal. */
export function progressLine(): Progress {
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
