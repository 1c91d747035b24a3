import assert from "node:assert/strict";
import { type LoadReport, runLoad } from "../lib/load/load.ts";
import {
  assertNoStackTrace,
  assertSameBytes,
  pattern,
  ROOT,
  rssKiB,
  runScript,
  Script,
  serverTest,
  settlesWithin,
  startServer,
  withTimeout,
  writeAll,
} from "./harness.ts";

const CLIENT = "client.ts";

/** A port nothing listens on (TCP and UDP): bound, noted, released. */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

/**
 * An in-process TCP server for faults the real servers never make: each chunk
 * received goes to `answer`, which writes (or does not write) something back.
 */
function fixtureServer(
  answer: (conn: Deno.Conn, chunk: Uint8Array) => Promise<void>,
  options: { holdAfterEof?: boolean } = {},
): { port: number } & AsyncDisposable {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const disposed = Promise.withResolvers<void>();
  const serveOne = async (conn: Deno.Conn) => {
    conns.add(conn);
    const buffer = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await conn.read(buffer);
        if (n === null) break;
        await answer(conn, buffer.subarray(0, n));
      }
      if (options.holdAfterEof) await disposed.promise;
    } catch { /* the client went away */ }
    conns.delete(conn);
    try {
      conn.close();
    } catch { /* closed already */ }
  };
  const accepting = (async () => {
    try {
      for await (const conn of listener) serveOne(conn);
    } catch { /* listener closed */ }
  })();
  return {
    port: listener.addr.port,
    async [Symbol.asyncDispose]() {
      disposed.resolve();
      listener.close();
      await accepting;
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* closed already */ }
      }
    },
  };
}

/** Echoes every chunk with its first byte changed: a server that corrupts. */
function corruptingServer() {
  return fixtureServer(async (conn, chunk) => {
    const bad = chunk.slice();
    bad[0] ^= 0x20; // "hello" comes back as "Hello"
    await writeAll(conn, bad);
  });
}

/**
 * Runs the client with `input` on its stdin and returns its raw stdout (the
 * harness reads stdout as text lines; binary needs the bytes). Killed by pid
 * if it outlives `ms`.
 */
async function runWithStdin(
  args: string[],
  input: Uint8Array,
  ms = 15_000,
): Promise<{ code: number; stdout: Uint8Array; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLIENT, ...args],
    cwd: ROOT,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  try {
    const feeding = (async () => {
      const writer = child.stdin.getWriter();
      await writer.write(input);
      await writer.close();
    })();
    const [output] = await withTimeout(
      Promise.all([child.output(), feeding]),
      ms,
      `client.ts ${args.join(" ")} to finish`,
    );
    return {
      code: output.code,
      stdout: output.stdout,
      stderr: new TextDecoder().decode(output.stderr),
    };
  } finally {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.status;
  }
}

/** Runs the client in load mode with --json and parses its one line. */
async function loadJson(
  args: string[],
): Promise<{ code: number; report: LoadReport; stderr: string }> {
  const exit = await runScript(CLIENT, [...args, "--json"], 60_000);
  assertNoStackTrace(exit.stderr);
  const lines = exit.stdout.split("\n").filter((line) => line !== "");
  assert.equal(lines.length, 1, `one JSON line expected, got: ${exit.stdout}`);
  return { code: exit.code, report: JSON.parse(lines[0]), stderr: exit.stderr };
}

/** The numbers of a clean run of `requests` requests of `size` bytes add up. */
function assertSaneReport(
  report: LoadReport,
  expect: { connections: number; requests: number; size: number },
): void {
  assert.equal(report.connections, expect.connections);
  assert.equal(report.size, expect.size);
  assert.equal(report.requests, expect.requests);
  assert.equal(report.bytes, expect.requests * expect.size);
  assert.equal(report.errors, 0);
  assert.equal(report.mismatches, 0);
  assert.ok(report.seconds > 0);
  const rate = report.requests / report.seconds;
  assert.ok(
    Math.abs(report.requestsPerSecond - rate) <= rate * 0.01 + 1,
    `requests/s ${report.requestsPerSecond} is not requests/seconds ${rate}`,
  );
  const mb = report.bytes / 1e6 / report.seconds;
  assert.ok(Math.abs(report.mbPerSecond - mb) <= mb * 0.01 + 0.001);
  const { p50, p90, p99, max } = report.latencyMs;
  assert.ok(
    0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
    `latencies out of order: ${JSON.stringify(report.latencyMs)}`,
  );
  // No round trip can take longer than the whole run.
  assert.ok(max <= report.seconds * 1000 + 1, `max ${max} ms`);
  assert.ok(report.cpuMs !== undefined && report.cpuMs > 0, "no cpuMs");
}

// ---------------------------------------------------------------------------
// One-shot
// ---------------------------------------------------------------------------

serverTest(`${CLIENT}: --message prints the echo and exits 0`, async () => {
  await using server = await startServer("evented.ts");
  const exit = await runScript(CLIENT, [
    String(server.port),
    "--message",
    "hello, echo",
  ]);
  assert.equal(exit.code, 0, exit.stderr);
  assert.equal(exit.stdout, "hello, echo");
  assert.equal(exit.stderr, "");
});

serverTest(
  `${CLIENT}: --message against a server that corrupts a byte exits 1`,
  async () => {
    await using server = corruptingServer();
    const exit = await runScript(CLIENT, [
      "127.0.0.1",
      String(server.port),
      "--message",
      "hello",
    ]);
    assert.equal(exit.code, 1);
    assert.equal(exit.stdout, "Hello"); // what came back is shown
    assert.equal(
      exit.stderr,
      "client.ts: the echo differs from the message: 5 bytes back for 5 sent, first difference at byte 0\n",
    );
  },
);

serverTest(`${CLIENT}: --message over --unix and over --udp`, async () => {
  const path = await Deno.makeTempFile({ suffix: ".sock" });
  await Deno.remove(path);
  try {
    await using server = await startServer("evented.ts", ["--unix", path]);
    const exit = await runScript(CLIENT, ["--unix", path, "--message", "u"]);
    assert.equal(exit.code, 0, exit.stderr);
    assert.equal(exit.stdout, "u");
    assert.match(server.banner, /unix/);
  } finally {
    await Deno.remove(path).catch(() => {});
  }
  await using udp = await startServer("udp_echo.ts");
  const exit = await runScript(CLIENT, [
    String(udp.port),
    "--udp",
    "--message",
    "datagram",
  ]);
  assert.equal(exit.code, 0, exit.stderr);
  assert.equal(exit.stdout, "datagram");
});

// ---------------------------------------------------------------------------
// Interactive
// ---------------------------------------------------------------------------

serverTest(
  `${CLIENT}: stdin mode: three lines, then EOF: half-close, echo, exit 0`,
  async () => {
    await using server = await startServer("evented.ts");
    await using client = new Script(CLIENT, [String(server.port)], {
      stdin: "piped",
    });
    const writer = client.stdin.getWriter();
    await writer.write(new TextEncoder().encode("one\ntwo\n"));
    // Interactive: the echo comes back while stdin is still open.
    await client.waitForLine(/^two$/);
    await writer.write(new TextEncoder().encode("three\n"));
    await writer.close();
    const exit = await client.waitForExit();
    assert.equal(exit.code, 0, exit.stderr);
    assert.equal(exit.stderr, "");
    assert.deepEqual(client.lines, ["one", "two", "three"]);
    // The client half-closed: the server saw EOF, not a reset.
    await server.waitForLine(/closed \(eof\): 14 B in, 14 B out/);
  },
);

serverTest(`${CLIENT}: stdin mode is binary safe`, async () => {
  await using server = await startServer("evented.ts", ["--quiet"]);
  const input = new Uint8Array(300_000);
  input.set(pattern(input.length, 9));
  input.set([0, 0x0a, 0x0d, 0xff, 0x04, 0x1a], 1000); // NUL, LF, CR, 0xff, ^D, ^Z
  const exit = await runWithStdin([String(server.port)], input);
  assert.equal(exit.code, 0, exit.stderr);
  assertSameBytes(exit.stdout, input);
});

serverTest(
  `${CLIENT}: --udp stdin mode: one datagram per line, each answer printed`,
  async () => {
    await using server = await startServer("udp_echo.ts");
    const exit = await runWithStdin(
      [String(server.port), "--udp"],
      new TextEncoder().encode("alpha\n\nbeta\ngamma"),
    );
    assert.equal(exit.code, 0, exit.stderr);
    assert.equal(new TextDecoder().decode(exit.stdout), "alpha\n\nbeta\ngamma");
    // One datagram per line, the empty line included, the newline kept.
    for (const size of [6, 1, 5, 5]) {
      await server.waitForLine(new RegExp(`: ${size} bytes? echoed$`));
    }
    assert.equal(server.lines.filter((l) => / echoed$/.test(l)).length, 4);
  },
);

serverTest(
  `${CLIENT}: stdin mode ends with exit 0 when the server closes first`,
  async () => {
    await using server = await startServer("evented.ts", [
      "--idle-timeout",
      "0.3",
    ]);
    await using client = new Script(CLIENT, [String(server.port)], {
      stdin: "piped",
    });
    const writer = client.stdin.getWriter();
    await writer.write(new TextEncoder().encode("idle now\n"));
    await client.waitForLine(/^idle now$/);
    const exit = await client.waitForExit(); // stdin still open
    assert.equal(exit.code, 0);
    assert.equal(exit.stderr, "client.ts: the server closed the connection\n");
    await writer.close().catch(() => {});
  },
);

serverTest(
  `${CLIENT}: --udp stdin mode refuses a line too long for a datagram`,
  async () => {
    await using server = await startServer("udp_echo.ts");
    const exit = await runWithStdin(
      [String(server.port), "--udp"],
      new Uint8Array(70_000).fill(0x41),
    );
    assert.equal(exit.code, 1);
    assert.equal(
      exit.stderr,
      "client.ts: a line of 70000 bytes does not fit in a datagram (at most 65507)\n",
    );
  },
);

// ---------------------------------------------------------------------------
// Failures: one line, exit 1
// ---------------------------------------------------------------------------

serverTest(`${CLIENT}: a refused port exits 1 with one line`, async () => {
  const port = freePort();
  for (
    const args of [
      [String(port)],
      [String(port), "--message", "x"],
      [String(port), "--connections", "2", "--requests", "5"],
    ]
  ) {
    const exit = await runScript(CLIENT, args);
    assert.equal(exit.code, 1, args.join(" "));
    assert.equal(
      exit.stderr,
      `client.ts: cannot connect to 127.0.0.1:${port}: connection refused\n`,
    );
    assert.equal(exit.stdout, "");
  }
});

serverTest(`${CLIENT}: an unknown host exits 1 with one line`, async () => {
  for (const udp of [[], ["--udp"]]) {
    const exit = await runScript(CLIENT, [
      "no-such-host.invalid",
      "7",
      "--message",
      "x",
      ...udp,
    ]);
    assert.equal(exit.code, 1);
    assert.match(exit.stderr, /^client\.ts: cannot .+: unknown host\n$/);
  }
});

serverTest(
  `${CLIENT}: no echo within --timeout exits 1 with one line (TCP, UDP)`,
  async () => {
    // Reads, never answers, and keeps the connection open after our EOF.
    await using silent = fixtureServer(async () => {}, { holdAfterEof: true });
    const tcp = await runScript(CLIENT, [
      String(silent.port),
      "--message",
      "anyone?",
      "--timeout",
      "300",
    ]);
    assert.equal(tcp.code, 1);
    assert.equal(
      tcp.stderr,
      `client.ts: no complete echo from 127.0.0.1:${silent.port} within 300 ms\n`,
    );
    const port = freePort(); // no UDP server there either, most likely
    const udp = await runScript(CLIENT, [
      String(port),
      "--udp",
      "--message",
      "anyone?",
      "--timeout",
      "300",
    ]);
    assert.equal(udp.code, 1);
    assert.equal(
      udp.stderr,
      `client.ts: no answer from 127.0.0.1:${port} within 300 ms\n`,
    );
  },
);

serverTest(`${CLIENT}: bad arguments exit 2 with one reason`, async () => {
  for (
    const args of [
      [],
      ["abc"],
      ["0"],
      ["70000"],
      ["h", "1", "2"],
      ["8080", "--bogus"],
      ["8080", "--requests", "0"],
      ["8080", "--connections", "1.5"],
      ["8080", "--requests", "5", "--duration", "1"],
      ["8080", "--message", "x", "--connections", "2"],
      ["8080", "--json"],
      ["8080", "--udp", "--unix", "/tmp/x.sock"],
      ["--unix", "/tmp/x.sock", "8080"],
      ["8080", "--udp", "--size", "65508"],
      ["8080", "--size", "0"],
      ["8080", "--udp", "--new-connection"],
      ["8080", "--timeout", "0"],
      ["8080", "--duration", "-1"],
    ]
  ) {
    const exit = await runScript(CLIENT, args);
    assert.equal(exit.code, 2, `${args.join(" ")}: ${exit.stderr}`);
    assert.match(exit.stderr, /^client\.ts: .+\nusage: /, args.join(" "));
    assertNoStackTrace(exit.stderr);
  }
});

serverTest(
  `${CLIENT}: hostile numbers exit 2 with a one-line reason, no stack trace`,
  async () => {
    // PORT, and each number option, with values that are not plain decimals
    // (or whole numbers, for counts), or out of range.
    const hostile: Record<string, string[]> = {
      PORT: ["0x50", "1e3", "+81", " 80", "", "99999999999"],
      "--connections": ["1.0", "0x10", " 2", "-1", "10001"],
      "--requests": ["1e3", "-1", "99999999999", "1.0"],
      "--size": ["+64", " 64", "", "1.0"],
      "--duration": ["1e3", "+1", "99999999999", "0x1"],
      "--timeout": ["0x50", "", "99999999999", " 1"],
    };
    for (const [option, values] of Object.entries(hostile)) {
      for (const value of values) {
        const args = option === "PORT" ? [value] : ["8080", option, value];
        const { code, stdout, stderr } = await runScript(CLIENT, args);
        const [reason, usage] = stderr.split("\n");
        const what = `${option} "${value}": ${stderr}`;
        assert.equal(code, 2, what);
        assert.equal(stdout, "", what);
        // "--requests must be a whole number from 1 to ..., not "1e3"", or
        // what parseArgs says of "-1": a value that looks like an option.
        assert.match(
          reason,
          /^client\.ts: (PORT|--\w+) (must|needs) .+$/,
          what,
        );
        assert.ok(usage.startsWith("usage: "), what);
        assertNoStackTrace(stderr);
      }
    }
  },
);

// ---------------------------------------------------------------------------
// What the server did, said in one line
// ---------------------------------------------------------------------------

/**
 * A server for the faults the models never make, on a real listener: each
 * connection is handed to `serve`; every connection is closed at the end.
 */
function faultyServer(
  serve: (conn: Deno.Conn) => Promise<void>,
): { port: number } & AsyncDisposable {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const accepting = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      serve(conn).catch(() => {}).finally(() => {
        conns.delete(conn);
        try {
          conn.close();
        } catch { /* closed already */ }
      });
    }
  })().catch(() => {});
  return {
    port: listener.addr.port,
    async [Symbol.asyncDispose]() {
      listener.close();
      await accepting;
      for (const conn of conns) conn.close();
    },
  };
}

/** Reads until the client closes, answering nothing. */
async function drain(conn: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(64 * 1024);
  while ((await conn.read(buffer)) !== null) { /* nothing back */ }
}

/** Closes its side at once (a FIN), before any echo, and reads to the end. */
function closingServer() {
  return faultyServer(async (conn) => {
    await conn.closeWrite();
    await drain(conn);
  });
}

/**
 * A server that resets the one connection it accepts once the request is in:
 * a process that reads one byte of it and exits, so that the kernel closes a
 * socket with unread bytes, which sends a reset (RST). A Deno server's
 * `close()` sends an end of stream (FIN) first, which reads as a close.
 */
async function resettingServer(): Promise<Script & { port: number }> {
  const server = new Script(
    "data:application/javascript," + encodeURIComponent(`
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      console.log(listener.addr.port);
      const conn = await listener.accept();
      await conn.read(new Uint8Array(1));
      Deno.exit(0);
    `),
    [],
  );
  const port = Number(await server.waitForLine(/^\d+$/));
  return Object.assign(server, { port });
}

serverTest(
  `${CLIENT}: --message against a server that closes without echoing says so, in load mode's words`,
  async () => {
    await using server = closingServer();
    const exit = await runScript(CLIENT, [`${server.port}`, "--message", "hi"]);
    assert.equal(exit.code, 1);
    assert.equal(
      exit.stderr,
      `client.ts: connection to 127.0.0.1:${server.port} closed by the server before echoing: 0 bytes back for 2 sent\n`,
    );
  },
);

serverTest(
  `${CLIENT}: a load against a server that closes at once, or resets: one line that says which`,
  async () => {
    for (
      const [start, what] of [
        [closingServer, "closed by the server before echoing"],
        [resettingServer, "reset by the server after connecting"],
      ] as const
    ) {
      await using server = await start();
      const started = performance.now();
      const load = ["--connections", "2", "--requests", "5"];
      const exit = await runScript(CLIENT, [`${server.port}`, ...load]);
      assert.equal(exit.code, 1, exit.stderr);
      assert.equal(
        exit.stderr,
        `client.ts: connection to 127.0.0.1:${server.port} ${what}\n`,
      );
      assert.equal(exit.stdout, "");
      // Not a timeout: it says so at once.
      assert.ok(performance.now() - started < 5000);
    }
  },
);

serverTest(
  `${CLIENT}: failures under load are counted by cause and named in one line`,
  async () => {
    // Echoes the first request of each connection (the probe passes), then
    // closes it: every second request of a connection finds it closed.
    await using server = faultyServer(async (conn) => {
      const buffer = new Uint8Array(64);
      const n = await conn.read(buffer);
      if (n !== null) await writeAll(conn, buffer.subarray(0, n));
    });
    const args = ["--connections", "2", "--requests", "5"];
    const { code, report, stderr } = await loadJson([
      `${server.port}`,
      ...args,
    ]);
    assert.equal(code, 1);
    // Per connection: ok, closed, ok (reconnected), closed, ok.
    assert.equal(report.requests, 6);
    assert.equal(report.errors, 4);
    assert.deepEqual(report.failures, {
      refused: 0,
      reset: 0,
      closed: 4,
      timedOut: 0,
      tooManyFiles: 0,
      other: 0,
    });
    assert.equal(
      stderr,
      "client.ts: 4 requests failed: 4 closed by the server before echoing\n",
    );
  },
);

serverTest(
  `${CLIENT}: stdin mode with --timeout gives up that long after stdin's end when the server neither answers nor closes`,
  async () => {
    await using silent = fixtureServer(async () => {}, { holdAfterEof: true });
    const started = performance.now();
    const exit = await runWithStdin(
      [String(silent.port), "--timeout", "300"],
      new TextEncoder().encode("anyone?\n"),
    );
    const ms = performance.now() - started;
    assert.equal(exit.code, 1);
    assert.equal(
      exit.stderr,
      `client.ts: 127.0.0.1:${silent.port} neither answered nor closed within 300 ms after the end of input\n`,
    );
    assert.ok(ms >= 300 && ms < 10_000, `gave up after ${ms} ms`);
    // A server that answers within the timeout is waited for, however long
    // the whole exchange takes: each answer restarts the wait.
    await using slow = fixtureServer(async (conn, chunk) => {
      for (const byte of chunk) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        await writeAll(conn, new Uint8Array([byte]));
      }
    });
    const patient = await runWithStdin(
      [String(slow.port), "--timeout", "300"],
      new TextEncoder().encode("slowly\n"),
    );
    assert.equal(patient.code, 0, patient.stderr);
    assert.equal(new TextDecoder().decode(patient.stdout), "slowly\n");
  },
);

serverTest(
  `${CLIENT}: stdin mode gives up by default 5000 ms after stdin's end on a server that accepts and never answers`,
  async () => {
    // Accepts, and neither reads nor answers nor closes.
    using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const held: Deno.Conn[] = [];
    const accepting = (async () => {
      for await (const conn of listener) held.push(conn);
    })().catch(() => {});
    try {
      const started = performance.now();
      const exit = await runWithStdin(
        [String(listener.addr.port)],
        new TextEncoder().encode("anyone?\n"),
      );
      const ms = performance.now() - started;
      assert.equal(exit.code, 1);
      assert.equal(
        exit.stderr,
        `client.ts: 127.0.0.1:${listener.addr.port} neither answered nor closed within 5000 ms after the end of input\n`,
      );
      assert.ok(ms >= 5000 && ms < 14_000, `gave up after ${ms} ms`);
    } finally {
      listener.close();
      await accepting;
      held.forEach((conn) => conn.close());
    }
  },
);

serverTest(
  `${CLIENT}: --connections 100 --size 64 MiB takes memory for one request, not 100`,
  async () => {
    // A Unix socket server that echoes the probe, then holds every
    // connection unread: the lanes' writes stall in small socket buffers,
    // and the client's memory is what it allocated up front.
    const dir = await Deno.makeTempDir();
    const path = `${dir}/echo.sock`;
    const listener = Deno.listen({ transport: "unix", path });
    const held: Deno.Conn[] = [];
    const allIn = Promise.withResolvers<void>();
    const accepting = (async () => {
      for await (const conn of listener) {
        held.push(conn);
        if (held.length === 101) allIn.resolve();
        if (held.length === 1) {
          const probe = new Uint8Array(6);
          for (let got = 0; got < 6;) {
            got += (await conn.read(probe.subarray(got))) ?? 6;
          }
          await writeAll(conn, probe);
        }
      }
    })().catch(() => {});
    try {
      await using client = new Script(CLIENT, [
        "--unix",
        path,
        "--connections",
        "100",
        "--size",
        String(64 * 1024 ** 2),
        "--requests",
        "1",
      ]);
      // The probe and all 100 lanes are connected: the lanes are built.
      await withTimeout(allIn.promise, 20_000, "the probe and 100 lanes");
      const rss = await rssKiB(client.pid, "VmHWM");
      // One 64 MiB request pool and 100 receive buffers over the runtime's
      // own ~100 MiB; a request buffer per lane would be 6.4 GiB.
      assert.ok(rss < 400 * 1024, `peak RSS ${rss} KiB`);
    } finally {
      listener.close();
      await accepting;
      held.forEach((conn) => conn.close());
      await Deno.remove(dir, { recursive: true });
    }
  },
);

serverTest(
  `${CLIENT}: --udp senders whose buffers exceed the bound: exit 2, the product and the bound in one line`,
  async () => {
    const exit = await runScript(CLIENT, [
      "9",
      "--udp",
      "--connections",
      "2000",
      "--size",
      "65507",
    ]);
    assert.equal(exit.code, 2);
    assert.equal(
      exit.stderr.split("\n")[0],
      "client.ts: --connections 2000 x --size 65507 needs 124.9 MiB of datagram buffers (65508 B per sender), more than the 64 MiB bound",
    );
    assertNoStackTrace(exit.stderr);
  },
);

serverTest(
  `${CLIENT}: a load beyond ulimit -n names the cause and how many connections fit`,
  async () => {
    await using server = await startServer("evented.ts", ["--quiet"]);
    await using client = new Script(CLIENT, [
      String(server.port),
      "--connections",
      "1000",
      "--requests",
      "2",
    ], { fdLimit: 256 });
    const exit = await client.waitForExit(20_000);
    assert.equal(exit.code, 1, exit.stderr);
    // One line: no certificate warning or other noise from Deno.
    assert.match(
      exit.stderr,
      /^client\.ts: \d+ requests failed: \d+ with too many open files \(ulimit -n 256 allows about (\d+) connections\)\n$/,
    );
    const fit = Number(exit.stderr.match(/about (\d+)/)![1]);
    assert.ok(fit > 150 && fit < 256, `about ${fit} connections`);
    // What did connect was served: two requests each.
    assert.match(client.lines[0], /: (\d+) in /);
    const done = Number(client.lines[0].match(/: (\d+) in /)![1]);
    assert.ok(Math.abs(done - 2 * fit) <= 20, `${done} done, ${fit} fit`);
  },
);

serverTest(
  `${CLIENT}: no certificate warning from Deno in a load's one line, even with NODE_EXTRA_CA_CERTS unreadable`,
  async () => {
    // Deno's update check (500 ms into a run, when due) builds a TLS client
    // that reads NODE_EXTRA_CA_CERTS and warns when it cannot: as a missing
    // file here, as EMFILE at the open file limit.
    await using server = await startServer("evented.ts", ["--quiet"]);
    const dir = await Deno.makeTempDir();
    try {
      const load = ["--connections", "1000", "--duration", "1"];
      const { code, stderr } = await new Deno.Command("/bin/sh", {
        args: [
          "-c",
          'ulimit -n 256; exec "$@"',
          "sh",
          Deno.execPath(),
          ...["run", "-A", CLIENT, String(server.port), ...load],
        ],
        cwd: ROOT,
        stdin: "null",
        stdout: "null",
        env: { NO_COLOR: "1", NODE_EXTRA_CA_CERTS: `${dir}/missing.pem` },
        signal: AbortSignal.timeout(20_000),
      }).output();
      const text = new TextDecoder().decode(stderr);
      assert.equal(code, 1, text);
      assert.match(
        text,
        /^client\.ts: \d+ requests failed: \d+ with too many open files \(.+\)\n$/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

serverTest(
  `${CLIENT}: --udp without the net unstable flag says what to add`,
  async () => {
    await using server = await startServer("udp_echo.ts");
    for (
      const args of [
        ["--message", "x"],
        ["--connections", "2", "--requests", "3"],
      ]
    ) {
      // Without deno.json (and its "unstable": ["net"]) and without the flag.
      const deno = ["run", "-A", "--no-config", CLIENT];
      const { code, stderr } = await new Deno.Command(Deno.execPath(), {
        args: [...deno, `${server.port}`, "--udp", ...args],
        cwd: ROOT,
        stdin: "null",
        stdout: "null",
        signal: AbortSignal.timeout(15_000),
      }).output();
      assert.deepEqual([code, new TextDecoder().decode(stderr)], [
        1,
        'client.ts: Deno.listenDatagram needs --unstable-net (or "unstable": ["net"] in deno.json)\n',
      ]);
    }
  },
);

serverTest(
  `${CLIENT}: load --json against evented.ts: sane numbers, no mismatch`,
  async () => {
    await using server = await startServer("evented.ts");
    const { code, report, stderr } = await loadJson([
      String(server.port),
      "--connections",
      "4",
      "--requests",
      "250",
      "--size",
      "100",
    ]);
    assert.equal(code, 0, stderr);
    assert.equal(stderr, "", "a progress line on a stderr that is no terminal");
    assertSaneReport(report, { connections: 4, requests: 1000, size: 100 });
    assert.equal(report.lost, undefined);
    // Four persistent connections carried it all (plus the reachability probe).
    await server.waitForLines(/closed \(eof\): 24\.4 KiB in, 24\.4 KiB out/, 4);
    const closed = server.lines.filter((line) => / closed /.test(line));
    assert.equal(closed.length, 5, server.lines.join("\n"));
  },
);

serverTest(
  `${CLIENT}: load mode prints a report for people`,
  async () => {
    await using server = await startServer("evented.ts", ["--quiet"]);
    const exit = await runScript(CLIENT, [
      String(server.port),
      "--connections",
      "2",
      "--requests",
      "50",
    ]);
    assert.equal(exit.code, 0, exit.stderr);
    assert.match(
      exit.stdout,
      /^2 x 64 B requests to 127\.0\.0\.1:\d+ .*: 100 in /,
    );
    for (
      const label of ["requests/s", "MB/s", "latency", "errors", "mismatches"]
    ) {
      assert.match(exit.stdout, new RegExp(`^  ${label} `, "m"));
    }
    assert.match(
      exit.stdout,
      /p50 [\d.]+ ms, p90 [\d.]+ ms, p99 [\d.]+ ms, max/,
    );
  },
);

serverTest(
  `${CLIENT}: the report states sizes in the unit of its rate: bytes, and MB of 10^6 bytes`,
  async () => {
    await using server = await startServer("evented.ts", ["--quiet"]);
    const load = ["--requests", "20", "--size", "65536"];
    const exit = await runScript(CLIENT, [`${server.port}`, ...load]);
    assert.equal(exit.code, 0, exit.stderr);
    const head = exit.stdout.match(
      /^1 x 65,536 B requests to .*: 20 in ([\d.]+) s$/m,
    );
    assert.ok(head, exit.stdout);
    assert.doesNotMatch(exit.stdout, /KiB|MiB/);
    assert.match(exit.stdout, /^ {2}MB\/s .*\(.*1 MB = 1,000,000 B\)$/m);
    // Size times requests per second is the MB/s shown.
    const rate = Number(exit.stdout.match(/^ {2}requests\/s +([\d.]+)$/m)![1]);
    const mb = Number(exit.stdout.match(/^ {2}MB\/s +([\d.]+) /m)![1]);
    assert.ok(Math.abs(rate * 65536 / 1e6 - mb) <= mb * 0.01 + 0.001);
  },
);

serverTest(
  `${CLIENT}: load against a server that corrupts: mismatches counted, exit 1`,
  async () => {
    await using server = corruptingServer();
    const { code, report, stderr } = await loadJson([
      String(server.port),
      "--connections",
      "2",
      "--requests",
      "10",
    ]);
    assert.equal(code, 1);
    assert.equal(report.requests, 20);
    assert.equal(report.mismatches, 20);
    assert.equal(
      stderr,
      "client.ts: 20 of 20 echoes differed from what was sent\n",
    );
  },
);

serverTest(
  `${CLIENT}: --new-connection against iterative.ts: one client per request`,
  async () => {
    await using server = await startServer("iterative.ts");
    const { code, report, stderr } = await loadJson([
      String(server.port),
      "--connections",
      "3",
      "--requests",
      "20",
      "--size",
      "32",
      "--new-connection",
    ]);
    assert.equal(code, 0, stderr);
    assertSaneReport(report, { connections: 3, requests: 60, size: 32 });
    // Every request was a client of its own, ended by our half-close (eof).
    await server.waitForLines(/closed \(eof\): 32 B in, 32 B out/, 60);
  },
);

serverTest(
  `${CLIENT}: --udp load against udp_echo.ts: no loss on loopback`,
  async () => {
    await using server = await startServer("udp_echo.ts", ["--quiet"]);
    const { code, report, stderr } = await loadJson([
      String(server.port),
      "--udp",
      "--connections",
      "4",
      "--requests",
      "100",
      "--size",
      "1000",
      "--timeout",
      "5000",
    ]);
    assert.equal(code, 0, stderr);
    assertSaneReport(report, { connections: 4, requests: 400, size: 1000 });
    assert.equal(report.lost, 0);
  },
);

serverTest(
  `${CLIENT}: a load against a port where nothing answers stops at once with one line`,
  async () => {
    const port = freePort();
    const started = performance.now();
    const udp = await runScript(CLIENT, [
      String(port),
      "--udp",
      "--connections",
      "8",
      "--requests",
      "10000",
      "--timeout",
      "200",
    ]);
    assert.equal(udp.code, 1);
    assert.equal(
      udp.stderr,
      `client.ts: no answer from 127.0.0.1:${port} within 200 ms\n`,
    );
    // 80,000 datagrams x 200 ms each would be hours: the preflight saw none answered.
    assert.ok(performance.now() - started < 10_000);
  },
);

serverTest(
  `${CLIENT}: a load against a server that does not echo stops at once with one line`,
  async () => {
    // Accepts and reads, never answers: a TCP load would otherwise wait forever.
    using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const sink = (async () => {
      for await (const conn of listener) {
        conn.readable.pipeTo(new WritableStream()).catch(() => {});
      }
    })().catch(() => {});
    const tcp = await runScript(CLIENT, [
      String(listener.addr.port),
      "--connections",
      "2",
      "--requests",
      "5",
      "--timeout",
      "300",
    ]);
    assert.equal(tcp.code, 1);
    assert.equal(
      tcp.stderr,
      `client.ts: no echo from 127.0.0.1:${listener.addr.port} within 300 ms\n`,
    );
    listener.close();
    await sink;
  },
);

serverTest(
  `${CLIENT}: Ctrl-C in load mode stops the run and reports what was done`,
  async () => {
    await using server = await startServer("evented.ts");
    await using client = new Script(CLIENT, [
      String(server.port),
      "--connections",
      "2",
      "--duration",
      "60",
      "--json",
    ]);
    // The probe and both load connections are in: the run is under way.
    await server.waitForLines(/ connected$/, 3);
    await server.waitForLine(/#1 .* closed/);
    client.kill("SIGINT");
    const exit = await client.waitForExit(10_000);
    assert.equal(exit.code, 0, exit.stderr);
    const report = JSON.parse(client.lines[0]) as LoadReport;
    assert.ok(report.seconds < 30, `ran ${report.seconds} s`);
    assert.equal(report.errors, 0);
    assert.equal(report.mismatches, 0);
  },
);

// ---------------------------------------------------------------------------
// The engine as a module (what bench.ts imports)
// ---------------------------------------------------------------------------

serverTest("runLoad: duration mode, progress, and an early stop", async () => {
  await using server = await startServer("evented.ts", ["--quiet"]);
  const target = { host: server.host, port: server.port };
  const progress: number[] = [];
  const timed = await runLoad({
    ...target,
    connections: 3,
    duration: 0.5,
    size: 16,
    timeoutMs: 40, // the watchdog ticks every 10 ms: progress must still be throttled
    onProgress: (done) => progress.push(done),
  });
  assert.ok(timed.seconds >= 0.5, `ran ${timed.seconds} s`);
  // (A 40 ms timeout may fire on a busy machine: errors are not the point.)
  assert.ok(timed.requests > 0 && timed.mismatches === 0);
  assert.ok(progress.length >= 2, "onProgress not called");
  assert.ok(
    progress.length <= 12,
    `onProgress called ${progress.length} times`,
  );
  assert.deepEqual(progress, [...progress].sort((a, b) => a - b));

  const stop = new AbortController();
  const stopping = runLoad({
    ...target,
    connections: 2,
    duration: 60,
    size: 16,
    signal: stop.signal,
  });
  setTimeout(() => stop.abort(), 200);
  const stopped = await withTimeout(stopping, 10_000, "the aborted run");
  assert.ok(stopped.seconds < 30, `ran ${stopped.seconds} s`);
  assert.equal(stopped.errors, 0, "the stop itself counted as errors");
});

serverTest(
  "runLoad: counts a server's faults instead of throwing; rejects bad options",
  async () => {
    // Closes every connection as soon as a request arrives.
    await using rude = fixtureServer((conn) => {
      conn.close();
      return Promise.resolve();
    });
    const report = await runLoad({
      host: "127.0.0.1",
      port: rude.port,
      connections: 2,
      requests: 5,
      size: 10,
    });
    assert.equal(report.requests, 0);
    assert.equal(report.errors, 10);
    assert.equal(report.failures.closed, 10);

    // Never answers: --timeout closes the request, a duration run drains.
    await using silent = fixtureServer(async () => {}, { holdAfterEof: true });
    const timedOut = await runLoad({
      host: "127.0.0.1",
      port: silent.port,
      connections: 2,
      requests: 2,
      size: 10,
      timeoutMs: 100,
    });
    assert.equal(timedOut.requests, 0);
    assert.equal(timedOut.errors, 4);
    assert.equal(timedOut.failures.timedOut, 4);
    const wedged = await runLoad({
      host: "127.0.0.1",
      port: silent.port,
      connections: 2,
      duration: 0.1,
      size: 10,
    });
    assert.equal(wedged.errors, 2); // abandoned 5 s after the deadline
    assert.equal(wedged.failures.timedOut, 2);
    await using resetting = await resettingServer();
    const reset = await runLoad({
      host: "127.0.0.1",
      port: resetting.port,
      connections: 1,
      requests: 1,
      size: 10,
    });
    assert.equal(reset.requests, 0);
    assert.equal(reset.failures.reset, 1);
    assert.equal(reset.errors, 1); // the sum of the failures: no other
    assert.ok(wedged.seconds < 10, `took ${wedged.seconds} s`);

    for (
      const bad of [
        { connections: 0, requests: 1, size: 1 },
        { connections: 1, requests: 0, size: 1 },
        { connections: 1, requests: 1, size: 0 },
        { connections: 1, duration: -1, size: 1 },
        { connections: 1, requests: 1, size: 70_000, udp: true },
      ]
    ) {
      await assert.rejects(
        runLoad({ host: "127.0.0.1", port: rude.port, ...bad }),
        RangeError,
      );
    }
  },
);

serverTest(
  "runLoad: requests larger than the socket buffers; Unix sockets",
  async () => {
    await using server = await startServer("evented.ts", ["--quiet"]);
    // Written while the echo is read back: written first, both sides would
    // block on full buffers.
    const big = await runLoad({
      host: server.host,
      port: server.port,
      connections: 2,
      requests: 2,
      size: 16_000_000,
    });
    assert.equal(big.requests, 4);
    assert.equal(big.mismatches, 0);
    assert.equal(big.bytes, 64_000_000);
    const path = await Deno.makeTempFile({ suffix: ".sock" });
    await Deno.remove(path);
    try {
      await using unix = await startServer("evented.ts", ["--unix", path]);
      for (const newConnection of [false, true]) {
        const report = await runLoad({
          host: "",
          port: 0,
          unix: path,
          connections: 2,
          requests: 20,
          size: 64,
          newConnection,
        });
        assert.equal(report.requests, 40);
        assert.equal(report.errors + report.mismatches, 0);
      }
      await unix.waitForLine(/closed \(eof\)/);
    } finally {
      await Deno.remove(path).catch(() => {});
    }
  },
);

serverTest(
  "runLoad: a UDP datagram not answered in time counts as lost",
  async () => {
    // A UDP "server" that answers every other datagram.
    const socket = Deno.listenDatagram({
      transport: "udp",
      hostname: "127.0.0.1",
      port: 0,
    });
    const serving = (async () => {
      let n = 0;
      try {
        for (;;) {
          const [data, from] = await socket.receive();
          if (n++ % 2 === 0) await socket.send(data, from);
        }
      } catch { /* closed */ }
    })();
    try {
      const report = await runLoad({
        host: "127.0.0.1",
        port: (socket.addr as Deno.NetAddr).port,
        udp: true,
        connections: 1,
        requests: 6,
        size: 8,
        timeoutMs: 500, // generous: only the unanswered ones may time out
      });
      assert.equal(report.requests, 3);
      assert.equal(report.lost, 3);
      assert.equal(report.mismatches, 0);
    } finally {
      socket.close();
      await serving;
    }
  },
);

serverTest(
  "runLoad: a connect stuck on a full backlog is abandoned at the timeout",
  async () => {
    // A listener that never accepts, its backlog full: a new connect gets no
    // answer, and the kernel retries the handshake for minutes.
    using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const held: Deno.Conn[] = [];
    try {
      for (;;) {
        const connect = Deno.connect({
          hostname: "127.0.0.1",
          port: listener.addr.port,
        });
        if (!(await settlesWithin(connect, 200))) {
          connect.then((conn) => conn.close(), () => {});
          break;
        }
        held.push(await connect);
      }
      const started = performance.now();
      const report = await runLoad({
        host: "127.0.0.1",
        port: listener.addr.port,
        connections: 2,
        duration: 0.5,
        size: 64,
        newConnection: true,
        timeoutMs: 300,
      });
      assert.equal(report.requests, 0);
      assert.ok(report.errors >= 2, `${report.errors} errors`);
      assert.ok(
        performance.now() - started < 5000,
        "the stuck connects held the run",
      );
    } finally {
      held.forEach((conn) => conn.close());
    }
  },
);
