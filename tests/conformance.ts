/**
 * The behaviour SPEC.md promises for every TCP echo server, as tests that any
 * model's test file registers with {@linkcode echoServerConformance}.
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  assertNoStackTrace,
  assertSameBytes,
  pattern,
  readExactly,
  readToEnd,
  roundTrip,
  roundTripText,
  rssKiB,
  runScript,
  serverTest,
  settlesWithin,
  startServer,
  streamAndCheck,
  talkAtOnce,
  withTimeout,
  writeAll,
} from "./harness.ts";

/** What a model's conformance run needs to know about it. */
export interface ConformanceOptions {
  /** Arguments every server of this run gets (e.g. `["--pool", "2"]`). */
  args?: string[];
  /** True when the model serves clients at the same time (not iterative). */
  concurrent: boolean;
  /** More command lines that must be rejected with exit 2. */
  badArgs?: string[][];
  /**
   * False when the model cannot serve on a Unix socket (prefork.ts: its
   * workers share a TCP port with SO_REUSEPORT): the --unix test is then
   * ignored, and `["--unix", PATH]` belongs in `badArgs`.
   */
  unix?: boolean;
  /** Process ids whose memory counts as the server's (children, default: the server). */
  serverPids?: (pid: number) => Promise<number[]>;
}

const MiB = 1024 * 1024;

/** Registers the SPEC.md tests for `script`. */
export function echoServerConformance(
  script: string,
  options: ConformanceOptions,
): void {
  const args = options.args ?? [];
  const name = args.length ? `${script} ${args.join(" ")}` : script;
  const start = (more: string[] = []) =>
    startServer(script, [...args, ...more]);

  serverTest(
    `${name}: the banner names the real port, and a client is served there`,
    async () => {
      await using server = await start();
      assert.match(server.banner, /^listening on 127\.0\.0\.1:\d+( |$)/);
      assert.notEqual(server.port, 0);
      using conn = await server.connect();
      assert.equal(await roundTripText(conn, "hello\n"), "hello\n");
    },
  );

  serverTest(
    `${name}: echoes text and every byte value unchanged`,
    async () => {
      await using server = await start();
      using conn = await server.connect();
      assert.equal(await roundTripText(conn, "hi\r\n"), "hi\r\n");
      const everyByte = Uint8Array.from(
        { length: 256 * 4 },
        (_, i) => i & 0xff,
      );
      assertSameBytes(await roundTrip(conn, everyByte), everyByte);
      const binary = pattern(100_000, 7);
      assertSameBytes(await roundTrip(conn, binary), binary);
    },
  );

  serverTest(
    `${name}: 16 MiB written while reading comes back identical`,
    async () => {
      await using server = await start();
      using conn = await server.connect();
      await streamAndCheck(conn, pattern(16 * MiB, 3));
    },
  );

  serverTest(
    `${name}: half-close gets every pending byte back, then the server closes`,
    async () => {
      await using server = await start();
      using conn = await server.connect();
      const bytes = pattern(300_000, 11);
      await writeAll(conn, bytes); // nothing read yet: the echo is still pending
      await conn.closeWrite();
      assertSameBytes(await readToEnd(conn), bytes);
    },
  );

  serverTest(
    `${name}: a client that writes until it stalls holds the server back, not its memory`,
    async () => {
      await using server = await start();
      using conn = await server.connect();
      // Served, so whatever serves it (a child process, a worker) is up and
      // its memory is in the baseline, not in the growth.
      assert.equal(await roundTripText(conn, "ready"), "ready");
      const pids = await (options.serverPids?.(server.pid) ??
        Promise.resolve([server.pid]));
      const rssBefore = (await Promise.all(pids.map((pid) => rssKiB(pid))))
        .reduce((a, b) => a + b);
      const bytes = pattern(64 * MiB, 5);
      const chunk = 256 * 1024;
      let reading: Promise<Uint8Array> | undefined;
      let writtenBeforeReading = 0;
      for (let off = 0; off < bytes.length; off += chunk) {
        const write = writeAll(conn, bytes.subarray(off, off + chunk));
        // A write that does not complete for a while is the witness that the
        // server stopped reading because nobody reads its echo.
        if (!reading && !(await settlesWithin(write, 300))) {
          writtenBeforeReading = off;
          reading = readExactly(conn, bytes.length);
        }
        await write;
      }
      assert.ok(
        reading,
        "64 MiB went in without any backpressure: the server buffers without bound",
      );
      assert.ok(
        writtenBeforeReading < 32 * MiB,
        `${writtenBeforeReading} bytes absorbed`,
      );
      const rssAfter = (await Promise.all(pids.map((pid) => rssKiB(pid))))
        .reduce((a, b) => a + b);
      assertSameBytes(await reading, bytes);
      assert.ok(
        rssAfter - rssBefore < 48 * 1024,
        `server RSS grew by ${rssAfter - rssBefore} KiB`,
      );
    },
    { ms: 60_000 },
  );

  serverTest(
    `${name}: 10 clients that reset mid-stream do not disturb the next`,
    async () => {
      await using server = await start();
      using survivor = options.concurrent ? await server.connect() : undefined;
      if (survivor) {
        assert.equal(await roundTripText(survivor, "before"), "before");
      }
      for (let i = 0; i < 10; i++) {
        const conn = await server.connect();
        const writing = writeAll(conn, pattern(1 * MiB, 20 + i)).catch(
          () => {},
        );
        await readExactly(conn, 1); // the server is echoing to us now
        conn.close(); // echoed bytes unread: the kernel answers with RST
        await writing;
      }
      if (survivor) {
        assert.equal(await roundTripText(survivor, "after"), "after");
      }
      using next = await server.connect();
      await streamAndCheck(next, pattern(1 * MiB, 99));
      // Counted, not numbered: in a pool each worker numbers its own clients.
      await server.waitForLines(/ closed \(/, 10);
    },
  );

  if (options.concurrent) {
    serverTest(`${name}: serves 20 clients at once`, async () => {
      await using server = await start();
      await talkAtOnce(server, 20);
    });
  }

  // SIGHUP (the terminal closed) drains like the others. Its run has the
  // longest grace there is: a timer that overflowed would end the client at once.
  const graces = { SIGTERM: "20", SIGINT: "20", SIGHUP: "86400" };
  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
    serverTest(
      `${name}: ${signal} (--grace ${
        graces[signal]
      }) stops accepting, lets a connected client finish, exits 0`,
      async () => {
        await using server = await start(["--grace", graces[signal]]);
        using conn = await server.connect();
        assert.equal(await roundTripText(conn, "before"), "before");
        server.kill(signal);
        await server.waitForLine(/stopping/);
        await assert.rejects(server.connect(), Deno.errors.ConnectionRefused);
        assert.equal(await roundTripText(conn, "during"), "during");
        conn.close();
        const exit = await server.waitForExit(10_000); // well before the 20 s grace
        assert.equal(exit.code, 0, exit.stderr);
        assert.equal(exit.signal, null);
        assertNoStackTrace(exit.stderr);
      },
    );
  }

  serverTest(
    `${name}: SIGTERM closes a silent client when the grace period ends, exits 0`,
    async () => {
      await using server = await start(["--grace", "0.3"]);
      using conn = await server.connect();
      assert.equal(await roundTripText(conn, "x"), "x");
      server.kill("SIGTERM");
      const rest = await withTimeout(
        readToEnd(conn).catch(() => new Uint8Array()),
        10_000,
        "close",
      );
      assert.equal(rest.length, 0);
      const exit = await server.waitForExit();
      assert.equal(exit.code, 0, exit.stderr);
      assert.match(
        server.lines.join("\n"),
        /closed \(shutdown\)|"reason":"shutdown"/,
      );
    },
  );

  serverTest(
    `${name}: bad arguments exit 2 with a one-line reason and the usage`,
    async () => {
      const bad = [
        ["--bogus"],
        ["70000"],
        ["port"],
        ["1", "2"],
        ["--max-conns", "0"],
        ["--idle-timeout", "-1"],
        ["--cpu-ms", "lots"],
        ["--unix", "/tmp/x.sock", "--host", "::1"],
        // Numbers are plain decimals within a stated range, nothing else.
        ["0x50"],
        ["1e3"],
        ["0b1010000"],
        ["+81"],
        [" 80"],
        ["80.0"],
        ["--max-conns", "1.0"],
        ["--max-conns", "0x10"],
        ["--grace", "2147484"],
        ["--grace", "1e3"],
        ["--idle-timeout", "86401"],
        ["--cpu-ms", "60001"],
        ...(options.badArgs ?? []),
      ];
      const runs = await Promise.all(
        bad.map((more) => runScript(script, [...args, ...more])),
      );
      runs.forEach((run, i) => {
        const why = `${script} ${bad[i].join(" ")}: ${run.stderr}`;
        assert.equal(run.code, 2, why);
        assert.match(
          run.stderr,
          new RegExp(`^${script.replace(".", "\\.")}: .+\nusage: `),
          why,
        );
        assertNoStackTrace(run.stderr);
      });
    },
  );

  serverTest(
    `${name}: a port in use exits 1 with one line saying so`,
    async () => {
      using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const run = await runScript(script, [String(taken.addr.port), ...args]);
      assert.equal(run.code, 1, run.stderr);
      assert.equal(
        run.stderr.trim(),
        `${script}: cannot listen on 127.0.0.1:${taken.addr.port}: address in use`,
      );
    },
  );

  serverTest(`${name}: --host ::1 listens on IPv6 loopback`, async () => {
    await using server = await start(["--host", "::1"]);
    assert.match(server.banner, /^listening on \[::1\]:\d+/);
    using conn = await Deno.connect({ hostname: "::1", port: server.port });
    assert.equal(await roundTripText(conn, "six\n"), "six\n");
  });

  serverTest(
    `${name}: --unix serves on a Unix socket, replaces a stale one, removes it at exit`,
    async () => {
      const dir = await Deno.makeTempDir();
      try {
        const path = `${dir}/echo.sock`;
        const crashed = await startServer(script, [...args, "--unix", path]);
        crashed.kill("SIGKILL"); // leaves its socket file behind
        await crashed.exited;
        assert.ok((await Deno.lstat(path)).isSocket);
        await using server = await startServer(script, [
          ...args,
          "--unix",
          path,
        ]);
        assert.equal(server.banner.split(" (")[0], `listening on unix:${path}`);
        const conn = await server.connect();
        assert.equal(await roundTripText(conn, "local\n"), "local\n");
        conn.close();
        server.kill("SIGTERM");
        assert.equal((await server.waitForExit()).code, 0);
        await assert.rejects(Deno.lstat(path), Deno.errors.NotFound);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
    { ignore: options.unix === false },
  );

  serverTest(
    `${name}: --unix where no socket can be made exits 1 naming the path and why`,
    async () => {
      // As root no directory refuses a file for its mode; sysfs refuses
      // anything new, and a missing directory is the common typo.
      const cases = [
        ["/sys/echo-test.sock", "permission denied"],
        ["/nonexistent-dir/echo.sock", "no such file or directory"],
      ];
      for (const [path, why] of cases) {
        const run = await runScript(script, [...args, "--unix", path]);
        assert.equal(run.code, 1, run.stderr);
        assert.match(
          run.stderr.trim(),
          new RegExp(`^${script}: cannot listen on unix:${path}: ${why}`),
        );
        assert.doesNotMatch(run.stderr, /ports below 1024/);
        assert.equal(run.stderr.trim().split("\n").length, 1, run.stderr);
      }
    },
    { ignore: options.unix === false },
  );

  serverTest(
    `${name}: --json prints the banner and client events as JSON`,
    async () => {
      await using server = await start(["--json"]);
      const banner = JSON.parse(server.banner);
      assert.equal(banner.event, "listening");
      assert.equal(banner.host, "127.0.0.1");
      assert.ok(banner.port > 0);
      const conn = await server.connect();
      await roundTripText(conn, "12345");
      conn.close();
      const closed = JSON.parse(await server.waitForLine(/"event":"closed"/));
      assert.equal(closed.bytesIn, 5);
      assert.equal(closed.bytesOut, 5);
      assert.equal(closed.reason, "eof");
      for (const line of server.lines) JSON.parse(line);
    },
  );

  serverTest(
    `${name}: --idle-timeout closes a silent client but not an active one`,
    async () => {
      await using server = await start(["--idle-timeout", "0.4"]);
      const active = await server.connect();
      for (let i = 0; i < 12; i++) { // 1.2 s of traffic, three timeouts long
        assert.equal(await roundTripText(active, `${i}`), `${i}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      active.close();
      using silent = await server.connect();
      const rest = await withTimeout(
        readToEnd(silent),
        10_000,
        "the idle client to be closed",
      );
      assert.equal(rest.length, 0);
      await server.waitForLine(/closed \(idle timeout\)/);
      assert.equal(
        server.lines.filter((line) => line.includes("idle timeout")).length,
        1,
      );
    },
  );
}
