/**
 * bench.ts smoke tests: a quick run on a subset prints the promised JSON,
 * tables and chart, and leaves no process behind. Never asserts speed.
 */
import assert from "node:assert/strict";
import { markdown } from "../bench/report.ts";
import {
  assertNoStackTrace,
  pattern,
  ROOT,
  roundTripText,
  runScript,
  Script,
  serverTest,
  streamAndCheck,
} from "./harness.ts";

interface Proc {
  pid: number;
  start: string;
}

/** `pid`'s descendants now, with start times (Linux /proc). */
function descendants(pid: number): Proc[] {
  const found: Proc[] = [];
  const stack = [pid];
  while (stack.length) {
    const parent = stack.pop()!;
    try {
      for (const task of Deno.readDirSync(`/proc/${parent}/task`)) {
        const children = Deno.readTextFileSync(
          `/proc/${parent}/task/${task.name}/children`,
        );
        for (const child of children.split(" ").filter(Boolean)) {
          const start = startTime(Number(child));
          if (start === undefined) continue;
          found.push({ pid: Number(child), start });
          stack.push(Number(child));
        }
      }
    } catch { /* exited while we looked */ }
  }
  return found;
}

function startTime(pid: number): string | undefined {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/**
 * Checks a yardstick with a child per client (`--bare-relay`, `--handoff`):
 * its banner names it (`name`) and its pid; two clients at once are echoed,
 * each by a child of its own, which `whileConnected` may look at; once the
 * clients leave, their children are reaped. Returns the port.
 */
async function childPerClient(
  server: Script,
  name: string,
  whileConnected: (
    port: number,
    conns: Deno.Conn[],
    children: Proc[],
  ) => void | Promise<void>,
): Promise<number> {
  const banner = await server.waitForLine(/./, 15_000);
  const match = banner.match(
    new RegExp(
      `^listening on 127\\.0\\.0\\.1:(\\d+) \\(${name}, pid (\\d+)\\)$`,
    ),
  );
  assert.ok(match, banner);
  assert.equal(Number(match[2]), server.pid);
  const port = Number(match[1]);
  const conns = await Promise.all(
    [1, 2].map(() => Deno.connect({ hostname: "127.0.0.1", port })),
  );
  try {
    const echoes = await Promise.all(
      conns.map((conn, i) => roundTripText(conn, `client ${i}`)),
    );
    assert.deepEqual(echoes, ["client 0", "client 1"]);
    const children = descendants(server.pid);
    assert.equal(children.length, 2, "a child per client");
    await whileConnected(port, conns, children);
  } finally {
    conns.forEach((conn) => conn.close());
  }
  // No event tells when another process's children are reaped: poll, bounded.
  for (const deadline = performance.now() + 10_000;;) {
    if (descendants(server.pid).length === 0) break;
    assert.ok(performance.now() < deadline, "children left");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return port;
}

/**
 * Stops a yardstick with a child per client by SIGTERM while a client is
 * connected: it exits 0, its child ended and reaped first.
 */
async function stopWithAClient(server: Script, port: number): Promise<void> {
  const last = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    assert.equal(await roundTripText(last, "last"), "last");
    const [child] = descendants(server.pid);
    server.kill("SIGTERM");
    const exit = await server.waitForExit(10_000);
    assert.equal(exit.code, 0, exit.stderr);
    assert.notEqual(startTime(child.pid), child.start, "the child lives on");
  } finally {
    last.close();
  }
}

/** A row of bench.ts's JSON. */
type Row = Record<string, unknown>;

/**
 * Which of `pids` hold the server's end of the TCP connection from
 * `clientPort` to `serverPort` (IPv4 loopback), from /proc/net/tcp's inode of
 * that socket and each process's open descriptors.
 */
function socketOwners(
  pids: number[],
  serverPort: number,
  clientPort: number,
): number[] {
  const hexPort = (port: number) =>
    port.toString(16).toUpperCase().padStart(4, "0");
  const inode = Deno.readTextFileSync("/proc/net/tcp").split("\n")
    .map((line) => line.trim().split(/\s+/))
    .find((fields) =>
      fields[1]?.endsWith(`:${hexPort(serverPort)}`) &&
      fields[2]?.endsWith(`:${hexPort(clientPort)}`)
    )?.[9];
  assert.ok(inode, `no socket from port ${clientPort} to ${serverPort}`);
  return pids.filter((pid) =>
    [...Deno.readDirSync(`/proc/${pid}/fd`)].some((fd) => {
      try {
        return Deno.readLinkSync(`/proc/${pid}/fd/${fd.name}`) ===
          `socket:[${inode}]`;
      } catch {
        return false; // closed while we looked
      }
    })
  );
}

/**
 * Runs bench.ts with `args` to its end, noting every process it starts (the
 * servers, their children) while it runs; returns its output and those that
 * are still alive after it exited.
 */
async function runBench(
  args: string[],
): Promise<
  { code: number; stdout: string; stderr: string; seen: number; left: Proc[] }
> {
  await using bench = new Script("bench.ts", args);
  const seen = new Map<string, Proc>();
  let done = false;
  const exited = bench.waitForExit(50_000).finally(() => done = true);
  // A server lives for one scenario run (a few hundred ms with --quick), so
  // sampling every 20 ms sees each of them.
  while (!done) {
    for (const proc of descendants(bench.pid)) {
      seen.set(`${proc.pid}:${proc.start}`, proc);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const exit = await exited;
  const left = [...seen.values()].filter((proc) =>
    startTime(proc.pid) === proc.start
  );
  return { ...exit, stdout: bench.lines.join("\n"), seen: seen.size, left };
}

serverTest(
  "bench.ts --quick --json on evented and iterative: every scenario, the promised shape, no process left",
  async () => {
    const svg = await Deno.makeTempFile({ suffix: ".svg" });
    try {
      const run = await runBench([
        "--quick",
        "--only",
        "evented,iterative",
        "--json",
        "--svg",
        svg,
      ]);
      assert.equal(run.code, 0, run.stderr);
      assertNoStackTrace(run.stderr);
      // A fresh server per scenario and server: fourteen, and evented's in
      // S8 and S9 (a pool of one), seen and gone.
      assert.ok(run.seen >= 16, `saw ${run.seen} of the 16 servers`);
      assert.deepEqual(run.left, [], "processes left behind");
      const result = JSON.parse(run.stdout);
      assert.equal(result.machine.cpus, navigator.hardwareConcurrency);
      assert.equal(result.machine.deno, Deno.version.deno);
      assert.deepEqual(result.leftovers, []);
      assert.deepEqual(
        result.servers.map((server: { name: string }) => server.name),
        ["evented", "iterative"],
      );
      const ids = ["S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9"];
      assert.deepEqual(
        result.scenarios.map((scenario: { id: string }) => scenario.id),
        ids,
      );
      const rows: Record<string, Record<string, Record<string, unknown>>> = {};
      for (const scenario of result.scenarios) {
        // The pools' scenarios run on servers with a fixed set of workers:
        // evented.ts's one event loop, not iterative.ts's one client at a time.
        assert.deepEqual(
          scenario.rows.map((row: { server: string }) => row.server),
          ["S8", "S9"].includes(scenario.id)
            ? ["evented"]
            : ["evented", "iterative"],
        );
        rows[scenario.id] = {};
        for (const row of scenario.rows) {
          rows[scenario.id][row.server] = row;
          const what = `${scenario.id} ${row.server}`;
          assert.equal(row.note, undefined, `${what}: ${row.note}`);
          assert.equal(row.mismatches, 0, `${what}: echoes differed`);
        }
      }
      // The load scenarios: requests done, without errors, with latencies.
      for (const id of ["S1", "S2", "S3", "S4", "S5"]) {
        for (const [server, row] of Object.entries(rows[id])) {
          const what = `${id} ${server}`;
          assert.ok(Number(row.requests) > 0, `${what}: no request completed`);
          assert.ok(Number(row.requestsPerSecond) > 0, what);
          assert.ok(Number(row.p99Ms) >= Number(row.p50Ms), what);
          assert.equal(row.errors, 0, `${what}: errors`);
        }
      }
      assert.ok(Number(rows.S3.evented.mbPerSecond) > 0);
      assert.equal(
        rows.S4.evented.connectionsPerSecond,
        rows.S4.evented.requestsPerSecond,
      );
      // The CPU of the load process and of the server are both measured.
      assert.ok(Number(rows.S2.evented.loadCpuUsPerRequest) > 0);
      assert.ok(Number(rows.S2.evented.serverCpuUsPerRequest) > 0);
      // S6: evented holds every idle client; iterative only the first, and
      // the active client waits behind it.
      const idle = result.settings.idleClients;
      assert.equal(rows.S6.evented.idleServed, idle);
      assert.ok(Number(rows.S6.evented.rssHeldBytes) > 0);
      assert.equal(typeof rows.S6.evented.kbPerIdleClient, "number");
      assert.ok(Number(rows.S6.evented.activeRequests) > 0);
      assert.equal(rows.S6.iterative.idleServed, 1);
      assert.equal(rows.S6.iterative.activeRequests, 0);
      // S7: iterative answers the second client only once the first left.
      const holdMs = result.settings.holdSeconds * 1000;
      assert.ok(Number(rows.S7.iterative.firstEchoMs) >= holdMs * 0.9);
      assert.equal(typeof rows.S7.evented.firstEchoMs, "number");
      // S8: one event loop takes every client; S9: behind its busy client,
      // every new one waits (the wait beyond its own burn: half a burn at
      // least, however fast the machine).
      assert.deepEqual(rows.S8.evented.s2SharesPercent, [100]);
      assert.deepEqual(rows.S8.evented.s4SharesPercent, [100]);
      const busy = rows.S9.evented;
      assert.equal(busy.errors, 0);
      assert.equal(busy.probes, result.settings.busyProbes);
      assert.equal(busy.probesWaited, busy.probes, `${busy.samplesMs}`);
      // Every target is listed; those whose servers did not run are n/a;
      // the others are measured, but a smoke run gives no verdict.
      const ratio = (prefix: string) =>
        result.ratios.find((ratio: { target: string }) =>
          ratio.target.startsWith(prefix)
        );
      assert.equal(ratio("S2 evented / bare").result, "n/a");
      for (const measured of ["S2 on evented", "S6 evented"]) {
        assert.equal(ratio(measured).result, "smoke");
        assert.equal(typeof ratio(measured).value, "number");
      }
      // The chart: one panel per scenario, a bar label per server in each.
      const chart = await Deno.readTextFile(svg);
      assert.match(chart, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
      assert.match(chart, /<\/svg>\n$/);
      assert.equal(chart.match(/<g transform=/g)?.length, 9);
      assert.match(chart, />S1 latency</);
      assert.equal(chart.match(/>evented</g)?.length, 9);
    } finally {
      await Deno.remove(svg);
    }
  },
  { ms: 60_000 },
);

serverTest(
  "bench.ts --quick prints a markdown table per scenario under a machine header",
  async () => {
    const run = await runBench([
      "--quick",
      "--only",
      "evented",
      "--scenarios",
      "S7",
    ]);
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(run.left, [], "processes left behind");
    const cpus = navigator.hardwareConcurrency;
    assert.match(
      run.stdout,
      new RegExp(`^${cpus} CPUs .*Deno ${Deno.version.deno}`, "m"),
    );
    assert.match(run.stdout, /^## S7 waiting: /m);
    assert.match(
      run.stdout,
      /^\| server \| second client's first echo, ms \| errors \|$/m,
    );
    assert.match(run.stdout, /^\| evented \| [\d.]+ \| 0 \|$/m);
    assert.match(run.stdout, /^## Targets$/m);
    // Not a terminal: no progress line on stderr, and nothing else to say.
    assert.equal(run.stderr, "");
  },
  { ms: 30_000 },
);

serverTest(
  "bench.ts: bad arguments exit 2 with one line and the usage",
  async () => {
    for (
      const args of [
        ["--only", "nosuch"],
        ["--scenarios", "S10"],
        ["--duration", "0"],
        ["--workers", "1.5"],
        ["--svg"],
        ["--report"],
        ["--report", ""],
        ["--bogus"],
        ["extra"],
      ]
    ) {
      const run = await runScript("bench.ts", args);
      assert.equal(run.code, 2, `${args.join(" ")}: ${run.stderr}`);
      assert.match(run.stderr, /^bench\.ts: .+\nusage: /, args.join(" "));
      assertNoStackTrace(run.stderr);
    }
    const help = await runScript("bench.ts", ["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /^usage: deno run -A bench\.ts/);
  },
);

serverTest(
  "bench.ts: hostile numbers exit 2 with a one-line reason, no stack trace",
  async () => {
    // Each option with values that are not plain decimals, or out of range.
    const hostile = {
      "--duration": ["0x50", "1e3", "+1", " 1", "-1", "99999999999", ""],
      "--rounds": ["1.0", "0x3", "99999999999"],
      "--workers": ["+2", " 2", "1e1", ""],
    };
    for (const [option, values] of Object.entries(hostile)) {
      for (const value of values) {
        const run = await runScript("bench.ts", [option, value]);
        const lines = run.stderr.split("\n");
        const what = `${option} "${value}": ${run.stderr}`;
        assert.deepEqual(
          [run.code, run.stdout, lines[1]?.slice(0, 7)],
          [2, "", "usage: "],
          what,
        );
        // "--rounds must be a whole number from 1 to 99, not "1.0"", or what
        // parseArgs says of "-1": a value that looks like an option.
        assert.match(lines[0], /^bench\.ts: --\w+ (must|needs) .+$/, what);
        assertNoStackTrace(run.stderr);
      }
    }
  },
);

serverTest(
  "bench.ts --report FILE --svg FILE writes a complete markdown page that shows the chart",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "bench-report-" });
    try {
      const args = [
        "--quick",
        "--only",
        "evented",
        "--scenarios",
        "S1,S7",
        "--report",
        `${dir}/docs/benchmarks.md`,
        "--svg",
        `${dir}/docs/img/bench.svg`,
      ];
      await Deno.mkdir(`${dir}/docs/img`, { recursive: true });
      const run = await runBench(args);
      assert.equal(run.code, 0, run.stderr);
      const page = await Deno.readTextFile(`${dir}/docs/benchmarks.md`);
      const lines = page.split("\n");
      assert.equal(lines[0], "# Echo servers side by side");
      // How to regenerate it, where and when it ran.
      assert.match(
        page,
        /^Written by `deno task bench --quick --only evented .*--report /m,
      );
      const cpus = navigator.hardwareConcurrency;
      assert.match(
        page,
        new RegExp(
          `^${cpus} CPUs .*Deno ${Deno.version.deno} .*; \\d{4}-\\d\\d-\\d\\dT`,
          "m",
        ),
      );
      assert.match(page, /^!\[.+\]\(img\/bench\.svg\)$/m); // relative to the page
      assert.match(page, /^## S1 latency: /m);
      assert.match(
        page,
        /^\| evented \| [\d,.]+ \| [\d.]+ \| [\d.]+ \| 0 \|$/m,
      );
      assert.match(page, /^## S7 waiting: /m);
      assert.match(page, /^## Targets$/m);
      assert.ok(page.endsWith("|\n"), "one newline at the end");
      // The page on stdout is the same, but for the file's last newline.
      assert.equal(run.stdout, page.trimEnd());
      assert.match(
        await Deno.readTextFile(`${dir}/docs/img/bench.svg`),
        /^<svg /,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
  { ms: 30_000 },
);

serverTest(
  "bench.ts copied without some models skips each with one line and runs the rest",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "bench-copy-" });
    try {
      // evented.ts and what bench.ts's header says to copy: lib/, bench/.
      const copied = await new Deno.Command("cp", {
        args: ["-r", "bench.ts", "evented.ts", "lib", "bench", dir],
        cwd: ROOT,
      }).output();
      assert.ok(copied.success, "cp");
      const output = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          "bench.ts",
          "--quick",
          "--only",
          "evented,forked,threaded-pool",
          "--scenarios",
          "S1",
          "--json",
        ],
        cwd: dir,
        stdin: "null",
        signal: AbortSignal.timeout(30_000),
      }).output();
      const stderr = new TextDecoder().decode(output.stderr);
      assert.equal(output.code, 0, stderr);
      assert.equal(
        stderr,
        "bench.ts: skipping forked (forked.ts not found)\n" +
          "bench.ts: skipping threaded-pool (threaded.ts not found)\n",
      );
      const result = JSON.parse(new TextDecoder().decode(output.stdout));
      assert.deepEqual(
        result.skipped.map((skip: { name: string }) => skip.name),
        ["forked", "threaded-pool"],
      );
      const [row] = result.scenarios[0].rows;
      assert.equal(row.server, "evented");
      assert.ok(row.requests > 0);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
  { ms: 40_000 },
);

serverTest(
  "bench.ts --bare-server 2: the bare loop on two threads sharing the port echoes every client",
  async () => {
    await using server = new Script("bench.ts", ["--bare-server", "2"]);
    const banner = await server.waitForLine(/./, 15_000);
    const match = banner.match(
      /^listening on 127\.0\.0\.1:(\d+) \(bare, 2 threads, pid (\d+)\)$/,
    );
    assert.ok(match, banner);
    assert.equal(Number(match[2]), server.pid);
    const conns = await Promise.all(
      Array.from(
        { length: 16 },
        () => Deno.connect({ hostname: "127.0.0.1", port: Number(match[1]) }),
      ),
    );
    try {
      const echoes = await Promise.all(
        conns.map((conn, i) => roundTripText(conn, `client ${i}`)),
      );
      assert.deepEqual(echoes, conns.map((_, i) => `client ${i}`));
    } finally {
      conns.forEach((conn) => conn.close());
    }
  },
);

serverTest(
  "bench.ts killed by pid stops the server it is running and exits 143",
  async () => {
    await using bench = new Script("bench.ts", [
      "--only",
      "evented",
      "--scenarios",
      "S3",
      "--duration",
      "30",
    ]);
    // No event says that bench has started its server: poll /proc, bounded.
    let servers: Proc[] = [];
    for (const deadline = performance.now() + 15_000; !servers.length;) {
      assert.ok(performance.now() < deadline, "no server started");
      await new Promise((resolve) => setTimeout(resolve, 20));
      servers = descendants(bench.pid);
    }
    Deno.kill(bench.pid, "SIGTERM");
    const exit = await bench.waitForExit(15_000);
    assert.equal(exit.code, 143, exit.stderr);
    assert.match(exit.stderr, /^bench\.ts: SIGTERM: stopping the servers$/m);
    assertNoStackTrace(exit.stderr);
    for (const server of servers) {
      assert.notEqual(startTime(server.pid), server.start, "a server lives on");
    }
  },
);

serverTest(
  "bench.ts --bare-relay: a child per client echoes through the relay and is reaped; SIGTERM ends it and its children",
  async () => {
    await using server = new Script("bench.ts", ["--bare-relay"]);
    let socketDir = "";
    const port = await childPerClient(
      server,
      "bare relay",
      (_port, _conns, children) => {
        const cmdline = `/proc/${children[0].pid}/cmdline`;
        const socket = Deno.readTextFileSync(cmdline).split("\0").at(-2)!;
        socketDir = socket.slice(0, socket.lastIndexOf("/"));
      },
    );
    await stopWithAClient(server, port);
    assert.match(socketDir, /bench-relay-/);
    assert.throws(() => Deno.statSync(socketDir), Deno.errors.NotFound);
  },
);

serverTest(
  "bench.ts --quick on the pools: cluster in both schedules, S8's shares and S9's waits for every pool, no process left",
  async () => {
    const pools = [
      "threaded-pool",
      "prefork",
      "cluster-shared",
      "cluster-rr",
    ];
    const run = await runBench([
      "--quick",
      "--only",
      pools.join(","),
      "--workers",
      "2",
      "--scenarios",
      "S1,S8,S9",
      "--json",
    ]);
    assert.equal(run.code, 0, run.stderr);
    assertNoStackTrace(run.stderr);
    assert.deepEqual(run.left, [], "processes left behind");
    const result = JSON.parse(run.stdout);
    assert.deepEqual(result.leftovers, []);
    const [s1, s8, s9] = result.scenarios;
    // cluster.ts runs like any model, in both schedules.
    const labels = Object.fromEntries(
      s1.rows.map((row: Record<string, unknown>) => [row.server, row.label]),
    );
    assert.equal(labels["cluster-shared"], "cluster --workers 2");
    assert.equal(
      labels["cluster-rr"],
      "cluster --workers 2 --schedule round-robin",
    );
    for (const row of s1.rows) {
      assert.equal(row.note, undefined, `S1 ${row.server}: ${row.note}`);
      assert.ok(row.requests > 0, `S1 ${row.server}: no request`);
      assert.equal(row.mismatches, 0);
    }
    // S8: for each pool and load, a share per worker summing to 100 %,
    // every client of the load counted, min and max among the shares.
    assert.deepEqual(s8.rows.map((row: Row) => row.server), pools);
    for (const row of s8.rows as Row[]) {
      assert.equal(row.note, undefined, `S8 ${row.server}: ${row.note}`);
      assert.equal(row.workers, 2);
      for (const load of ["s2", "s4"]) {
        const what = `S8 ${row.server} ${load}`;
        const shares = row[`${load}SharesPercent`] as number[];
        assert.equal(shares.length, 2, what);
        const sum = shares.reduce((a, b) => a + b, 0);
        assert.ok(Math.abs(sum - 100) < 1e-9, `${what}: ${shares}`);
        assert.equal(row[`${load}MinSharePercent`], Math.min(...shares));
        assert.equal(row[`${load}MaxSharePercent`], Math.max(...shares));
        assert.equal(row[`${load}LogComplete`], true, what);
        assert.equal(row[`${load}Errors`], 0, what);
      }
      assert.equal(row.s2Clients, 50, "S2's fifty connections");
      assert.ok(Number(row.s4Clients) > 0);
      assert.equal(row.mismatches, 0);
    }
    // Round-robin deals the clients in turn: within one of even.
    const rr = s8.rows.find((row: Row) => row.server === "cluster-rr");
    assert.deepEqual(rr.s2SharesPercent, [50, 50]);
    const perWorker = rr.s4SharesPercent.map((share: number) =>
      Math.round(share * rr.s4Clients / 100)
    );
    assert.ok(
      Math.max(...perWorker) - Math.min(...perWorker) <= 1,
      `${perWorker}`,
    );
    // S9: every new client measured, none failed; the waits are beyond
    // the new client's own burn, so never negative.
    assert.deepEqual(s9.rows.map((row: Row) => row.server), pools);
    for (const row of s9.rows as Row[]) {
      const what = `S9 ${row.server}: ${row.note ?? ""}`;
      assert.equal(row.note, undefined, what);
      assert.equal(row.busyCpuMs, s9.cpuMs);
      assert.equal(row.probes, result.settings.busyProbes, what);
      const samples = row.samplesMs as number[];
      assert.equal(samples.length, row.probes, what);
      assert.ok(samples.every((ms) => ms >= 0), what);
      assert.equal(row.maxWaitMs, Math.max(...samples));
      assert.ok(Number(row.medianWaitMs) <= Number(row.maxWaitMs));
      assert.equal(
        row.probesWaited,
        samples.filter((ms) => ms >= s9.cpuMs / 2).length,
      );
      assert.equal(row.errors, 0, what);
      assert.equal(row.mismatches, 0, what);
    }
    // The report's tables for them.
    const page = markdown(result);
    assert.match(
      page,
      /^\| server \| S2 clients \| S2 % per worker \| S2 min–max % \| S4 clients \| S4 % per worker \| S4 min–max % \| pairs split, rested \| pairs split, back to back \|$/m,
    );
    assert.match(
      page,
      /^\| cluster --workers 2 --schedule round-robin \| 50 \| 50 \/ 50 \| 50–50 \| [\d,]+ \| \d+ \/ \d+ \| \d+–\d+ \| \d+\/\d+ \| \d+\/\d+ \|$/m,
    );
    assert.match(
      page,
      /^\| prefork --workers 2 \| \d of 3 \| [\d.,]+ \| [\d.,]+ \| 0 \|$/m,
    );
  },
  { ms: 60_000 },
);

serverTest(
  "bench.ts --handoff: each client's socket handed to a child that echoes it byte-exact; no process left",
  async () => {
    await using server = new Script("bench.ts", ["--handoff"]);
    const port = await childPerClient(
      server,
      "handoff",
      async (port, conns, children) => {
        // Each child holds its client's socket itself: the parent, which
        // accepted them, holds none of them any more.
        const pids = children.map((child) => child.pid);
        const owners = conns.map((conn) =>
          socketOwners(
            [server.pid, ...pids],
            port,
            (conn.localAddr as Deno.NetAddr).port,
          )
        );
        assert.deepEqual(owners.flat().sort(), pids.sort(), `${owners}`);
        // 4 MiB in, half-closed: every byte back, in order, then the close.
        const big = await Deno.connect({ hostname: "127.0.0.1", port });
        try {
          await streamAndCheck(big, pattern(4 * 1024 * 1024, 7));
        } finally {
          big.close();
        }
      },
    );
    await stopWithAClient(server, port);
  },
);
