/**
 * The pool supervisor's logic, in-process: the restart policy, keeping a pool
 * at strength, giving up, the two-phase stop, with fake workers whose every
 * call is recorded; and the command protocol between a supervisor and a real
 * EchoServer on a real socket. prefork_test.ts and threaded_test.ts run it
 * for real, with processes, threads and signals.
 */
import assert from "node:assert/strict";
import type { ServerOptions } from "../lib/cli.ts";
import { CommandedWorker, obey } from "../lib/pool/commands.ts";
import { echo } from "../lib/echo.ts";
import { EchoServer } from "../lib/serve.ts";
import {
  Backoff,
  Pool,
  type PoolLog,
  type PoolWorker,
  RESTART,
  type RestartPolicy,
  shareOf,
  workerCount,
  type WorkerExit,
} from "../lib/pool/supervisor.ts";
import { roundTripText, settlesWithin } from "./harness.ts";
import { reusePortMissing } from "../lib/pool/reserve.ts";

// ---------------------------------------------------------------------------
// The restart policy
// ---------------------------------------------------------------------------

Deno.test("Backoff: the delay starts at 0.1 s and doubles up to 5 s", () => {
  const backoff = new Backoff();
  const delays = Array.from({ length: 9 }, () => backoff.next(true, 50));
  assert.deepEqual(
    delays,
    [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000],
  );
});

Deno.test("Backoff: a worker that ran 10 s was healthy: the delay starts over", () => {
  const backoff = new Backoff();
  for (let i = 0; i < 5; i++) backoff.next(true, 50);
  assert.equal(backoff.next(true, 9_999), 3200); // not quite healthy
  assert.equal(backoff.next(true, RESTART.healthyMs), 100);
  assert.equal(backoff.next(true, 50), 200);
});

Deno.test("Backoff: 5 exits before listening in a row give up; a listening one between resets the count", () => {
  const backoff = new Backoff();
  for (let i = 0; i < 4; i++) assert.ok(backoff.next(false, 50));
  assert.ok(backoff.next(true, 50)); // listened: the count starts over
  for (let i = 0; i < 4; i++) assert.ok(backoff.next(false, 50));
  assert.equal(backoff.next(false, 50), undefined);
});

// ---------------------------------------------------------------------------
// Shares and words
// ---------------------------------------------------------------------------

Deno.test("shareOf: --max-conns split over the workers adds up, shares differ by one at most", () => {
  for (const [total, size] of [[10, 3], [2, 2], [7, 7], [10_000, 6], [5, 1]]) {
    const shares = Array.from(
      { length: size },
      (_, i) => shareOf(total, size, i + 1),
    );
    assert.equal(shares.reduce((a, b) => a + b), total, `${total}/${size}`);
    assert.ok(Math.max(...shares) - Math.min(...shares) <= 1);
  }
  assert.deepEqual([1, 2, 3].map((slot) => shareOf(10, 3, slot)), [4, 3, 3]);
});

Deno.test('workerCount: "1 worker", "2 workers"', () => {
  assert.equal(workerCount(1), "1 worker");
  assert.equal(workerCount(2), "2 workers");
});

Deno.test("reusePortMissing: only Linux shares a port between workers", () => {
  assert.equal(reusePortMissing("linux"), undefined);
  for (const os of ["darwin", "windows", "freebsd"]) {
    assert.match(reusePortMissing(os)!, /SO_REUSEPORT.*Linux only.*\(this is/);
  }
});

// ---------------------------------------------------------------------------
// A pool of fake workers: every call recorded in order
// ---------------------------------------------------------------------------

/** A worker that does what the test tells it, recording what it is asked. */
class FakeWorker implements PoolWorker {
  readonly fields = {};
  readonly listening: Promise<boolean>;
  readonly exited: Promise<WorkerExit>;
  readonly notAccepting = Promise.withResolvers<void>();
  #listening = Promise.withResolvers<boolean>();
  #exited = Promise.withResolvers<WorkerExit>();

  constructor(readonly name: string, readonly events: string[]) {
    this.listening = this.#listening.promise;
    this.exited = this.#exited.promise;
    events.push(`${name} started`);
  }

  listen(): void {
    this.#listening.resolve(true);
  }

  exit(text = "exited", error?: string): void {
    this.events.push(`${this.name} ${text}`);
    this.#listening.resolve(false);
    this.notAccepting.resolve();
    this.#exited.resolve({ text, error });
  }

  accept(): void {
    this.events.push(`${this.name} accept`);
  }

  stopAccepting(): Promise<void> {
    this.events.push(`${this.name} stop-accepting`);
    return this.notAccepting.promise;
  }

  drain(reason: string): void {
    this.events.push(`${this.name} drain ${reason}`);
  }

  end(): void {
    this.exit("ended");
  }
}

/** A log that records each event as `log EVENT: TEXT`. */
function recorder(events: string[]): PoolLog {
  return {
    event(event: string, text: string) {
      events.push(`log ${event}: ${text}`);
    },
  };
}

/** Fast delays for tests: 10 ms doubling to 40 ms, 3 attempts. */
const FAST: RestartPolicy = {
  firstMs: 10,
  maxMs: 40,
  healthyMs: 60_000,
  attempts: 3,
};

/** Resolves once `check` holds, looking after each macrotask. */
async function until(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 2000 && !check(); i++) {
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  assert.ok(check(), `never: ${what}`);
}

Deno.test("Pool: each worker that exits is replaced in its slot, the delays doubling to the cap", async () => {
  const events: string[] = [];
  const workers: FakeWorker[] = [];
  const pool = new Pool(
    1,
    (slot) => {
      const worker = new FakeWorker(`w${slot}.${workers.length}`, events);
      workers.push(worker);
      return worker;
    },
    recorder(events),
    () => assert.fail("gave up"),
    FAST,
  );
  for (let i = 0; i < 5; i++) {
    await until(() => workers.length === i + 1, `worker ${i} started`);
    workers[i].listen();
    if (i === 0) {
      await pool.ready;
      pool.accept();
    }
    await until(() => events.includes(`w1.${i} accept`), "accept");
    workers[i].exit("crashed");
  }
  await until(() => workers.length === 6, "the sixth start");
  pool.end();
  const delays = events.flatMap((line) =>
    line.match(/restarting in (\d+) ms/)?.[1] ?? []
  ).map(Number);
  assert.deepEqual(delays, [10, 20, 40, 40, 40]);
  assert.match(
    events.join("\n"),
    /log worker-listening: w1\.1 listening\nw1\.1 accept/,
  );
});

Deno.test("Pool: a slot whose workers exit before listening 3 times in a row gives up, once, with the last one's words", async () => {
  const events: string[] = [];
  const reasons: string[] = [];
  let starts = 0;
  const pool = new Pool(
    2,
    (slot) => {
      const worker = new FakeWorker(`w${slot}`, events);
      if (slot === 1) {
        starts++;
        queueMicrotask(() => worker.exit("exited 1", "cannot listen: in use"));
      }
      return worker;
    },
    recorder(events),
    (reason) => reasons.push(reason),
    FAST,
  );
  await until(() => reasons.length > 0, "giving up");
  assert.deepEqual(reasons, ["cannot listen: in use"]);
  assert.equal(starts, 3);
  assert.equal(
    events.filter((line) => /before listening \(cannot listen/.test(line))
      .length,
    2,
  );
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(starts, 3, "restarted after giving up");
  await pool.stop("giving up", 0);
});

Deno.test("Pool: a worker that cannot be started at all gives up at once", async () => {
  const reasons: string[] = [];
  new Pool(
    1,
    () => {
      throw new Error("command not found");
    },
    recorder([]),
    (reason) => reasons.push(reason),
    FAST,
  );
  await until(() => reasons.length > 0, "giving up");
  assert.deepEqual(reasons, ["cannot start worker 1: command not found"]);
});

Deno.test("Pool.stop: every worker stops accepting before 'stopping'; drains after; 'stopped' once all exited", async () => {
  const events: string[] = [];
  const workers: FakeWorker[] = [];
  const pool = new Pool(
    3,
    (slot) => {
      const worker = new FakeWorker(`w${slot}`, events);
      workers.push(worker);
      if (slot < 3) worker.listen(); // w3 is still starting
      return worker;
    },
    recorder(events),
    () => assert.fail("gave up"),
    FAST,
  );
  await new Promise((resolve) => setTimeout(resolve, 0)); // the pool hears
  const stopped = pool.stop("SIGTERM", 1);
  // w1 and w2 are asked; w3, with no client and never told to accept, ends.
  await until(() => events.includes("w3 ended"), "w3 to end");
  assert.ok(events.includes("w1 stop-accepting"));
  assert.ok(events.includes("w2 stop-accepting"));
  // Until every one of them says so, nobody says "stopping".
  workers[1].notAccepting.resolve();
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.ok(!events.some((line) => line.startsWith("log stopping")));
  events.push("w1 not-accepting");
  workers[0].notAccepting.resolve();
  await until(() => events.includes("w1 drain SIGTERM"), "the drain");
  const at = (line: string) => events.indexOf(line);
  const stopping = events.findIndex((line) => line.startsWith("log stopping"));
  assert.ok(at("w1 not-accepting") < stopping);
  assert.ok(stopping < at("w1 drain SIGTERM"));
  assert.ok(stopping < at("w2 drain SIGTERM"));
  assert.ok(!events.includes("w3 drain SIGTERM"));
  assert.match(
    events[stopping],
    /stopping \(SIGTERM\): 3 workers no longer accept; their clients get 1 s to finish/,
  );
  assert.equal(await settlesWithin(stopped, 50), false, "stopped early");
  workers[0].exit();
  workers[1].exit();
  await stopped;
  assert.equal(events.at(-1), "log stopped: stopped");
  assert.equal(workers.length, 3, "a worker was started while stopping");
});

Deno.test("Pool.end: a second signal during the drain ends every worker at once", async () => {
  const events: string[] = [];
  const pool = new Pool(
    2,
    (slot) => {
      const worker = new FakeWorker(`w${slot}`, events);
      worker.listen();
      worker.notAccepting.resolve();
      return worker;
    },
    recorder(events),
    () => assert.fail("gave up"),
    FAST,
  );
  await pool.ready;
  const stopped = pool.stop("SIGINT", 86_400);
  await until(() => events.includes("w2 drain SIGINT"), "the drain");
  pool.end();
  await stopped;
  assert.ok(events.includes("w1 ended") && events.includes("w2 ended"));
});

Deno.test("Pool.stop: a worker that overruns the grace period by 5 s is ended", async () => {
  const events: string[] = [];
  const pool = new Pool(
    1,
    () => {
      const worker = new FakeWorker("stuck", events);
      worker.listen();
      worker.notAccepting.resolve();
      return worker; // never exits on its own
    },
    recorder(events),
    () => assert.fail("gave up"),
    FAST,
  );
  await pool.ready;
  const started = performance.now();
  await pool.stop("SIGTERM", 0.1);
  const took = performance.now() - started;
  assert.ok(events.includes("stuck ended"));
  assert.ok(took >= 5_100 && took < 8_000, `ended after ${took} ms`);
});

// ---------------------------------------------------------------------------
// The command protocol, against a real EchoServer
// ---------------------------------------------------------------------------

/** A CommandedWorker whose commands go straight to `obey` in this process. */
class InProcessWorker extends CommandedWorker {
  readonly name = "worker 1 (in process)";
  readonly fields = {};
  obeying: (command: string) => void = () => {};
  kills = 0;

  protected send(command: string): void {
    this.obeying(command);
  }

  protected kill(): void {
    this.kills++;
    this.ended({ text: "ended" });
  }
}

Deno.test("CommandedWorker and obey: listening, accept, stop-accepting, drain, stopped", async () => {
  const options: ServerOptions = {
    script: "test.ts",
    model: "test",
    port: 0,
    host: "127.0.0.1",
    maxConns: 10,
    idleTimeout: 0,
    cpuMs: 0,
    grace: 5,
    nodelay: false,
    keepalive: false,
    json: true,
    quiet: true,
    extra: {},
  };
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const server = new EchoServer(options, listener, {
    who: { pid: Deno.pid, worker: 1 }, // a pool worker: no banner, no signals
  });
  const port = (server.addr as Deno.NetAddr).port;
  const worker = new InProcessWorker();
  const obeying = obey(server, (word) => worker.answer(word));
  worker.obeying = obeying.command;
  // The worker's accept loop, as prefork.ts runs it once told to accept.
  obeying.accept.then(async () => {
    for (let conn; (conn = await server.accept());) {
      const client = conn;
      server.serve(client, (session) => echo(client, client, session));
    }
  });
  assert.equal(await worker.listening, true);
  const early = await Deno.connect({ port }); // waits in the backlog
  const earlyEcho = roundTripText(early, "early");
  assert.equal(await settlesWithin(earlyEcho, 200), false, "accepted early");
  worker.accept();
  assert.equal(await earlyEcho, "early");
  await worker.stopAccepting();
  await assert.rejects(Deno.connect({ port }), Deno.errors.ConnectionRefused);
  assert.equal(await roundTripText(early, "still"), "still");
  worker.drain("SIGTERM");
  assert.equal(await roundTripText(early, "draining"), "draining");
  assert.equal(worker.kills, 0);
  early.close(); // the last client leaves: "stopped", and its end
  await worker.exited;
  assert.equal(worker.kills, 1);
  assert.equal(worker.answer("a log line"), false);
});
