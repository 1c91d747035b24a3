/**
 * The reference rates of S4 (creation cost): how many child processes and
 * how many Workers that do nothing Deno starts per second on this machine,
 * the most that a process or a Worker per client can reach.
 *
 * @module
 */
import { runAgain } from "../lib/role.ts";
import type { Settings, Status } from "./scenarios.ts";

/** What starting a process or a Worker costs at best, as rates. */
export interface ReferenceRates {
  childStartsPerSecond: number | null;
  workerStartsPerSecond: number | null;
  /** How the child was started. */
  childCommand: string;
}

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
 * A child started the way forked.ts starts one (the same deno executable, no
 * config, its own session, no stdin or stdout, stderr piped) but running a
 * module that does nothing, and reaped. What forked.ts adds to this is its own work: loading the script,
 * the socket the child connects back to, and relaying the bytes.
 */
async function startAndReapChild(module: string): Promise<void> {
  const child = new Deno.Command(Deno.execPath(), {
    args: runAgain(module, "noop", []),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    detached: true,
  }).spawn();
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

/** Measures both rates, 8 starts at a time, for `settings.duration` each. */
export async function referenceRates(
  settings: Settings,
  status: Status,
): Promise<ReferenceRates> {
  const dir = await Deno.makeTempDir({ prefix: "bench-" });
  const child = `${dir}/noop.ts`;
  const worker = new URL(`file://${dir}/ready.ts`).href;
  try {
    await Deno.writeTextFile(child, "// does nothing, then exits\n");
    await Deno.writeTextFile(new URL(worker), "self.postMessage(0);\n");
    const parallel = 8;
    // Warm up once, so that the first start's module compilation is not counted.
    await startAndReapChild(child);
    await startAndEndWorker(worker);
    return {
      childStartsPerSecond: await rate(
        settings.duration,
        parallel,
        () => startAndReapChild(child),
        (text) => status(`S4 reference: child processes, ${text}`),
      ),
      workerStartsPerSecond: await rate(
        settings.duration,
        parallel,
        () => startAndEndWorker(worker),
        (text) => status(`S4 reference: Workers, ${text}`),
      ),
      childCommand: "runAgain(noop.ts): deno run --no-prompt --no-config",
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
