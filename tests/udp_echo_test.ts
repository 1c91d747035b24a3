import assert from "node:assert/strict";
import {
  assertNoStackTrace,
  assertSameBytes,
  pattern,
  runScript,
  type Server,
  serverTest,
  settlesWithin,
  startServer,
  withTimeout,
} from "./harness.ts";

const SCRIPT = "udp_echo.ts";
const MAX_DATAGRAM = 65_507;

/** A UDP socket of the test's own (port 0 picks a free one), for `using`. */
function udpSocket(
  hostname = "127.0.0.1",
  port = 0,
): Deno.DatagramConn & Disposable {
  const socket = Deno.listenDatagram({ transport: "udp", hostname, port });
  return Object.assign(socket, {
    [Symbol.dispose]() {
      try {
        socket.close();
      } catch { /* closed already */ }
    },
  });
}

function serverAddr(server: Server): Deno.NetAddr {
  return { transport: "udp", hostname: server.host, port: server.port };
}

/** The next datagram on `socket`; rejects if none comes within `ms`. */
async function nextDatagram(
  socket: Deno.DatagramConn,
  ms = 5000,
): Promise<[Uint8Array, Deno.NetAddr]> {
  const receiving = socket.receive(new Uint8Array(70_000));
  receiving.catch(() => {}); // still pending when the socket closes after a timeout
  const [data, from] = await withTimeout(receiving, ms, "an answer datagram");
  return [data.slice(), from as Deno.NetAddr];
}

/** Sends `bytes` to the server and returns its answer. */
async function exchange(
  socket: Deno.DatagramConn,
  server: Server,
  bytes: Uint8Array,
): Promise<Uint8Array> {
  await socket.send(bytes, serverAddr(server));
  const [answer, from] = await nextDatagram(socket);
  assert.equal(from.port, server.port, "answer from another port");
  return answer;
}

serverTest(
  `${SCRIPT}: banner names the real port, udp and the pid`,
  async () => {
    await using server = await startServer(SCRIPT);
    assert.match(
      server.banner,
      new RegExp(
        `^listening on 127\\.0\\.0\\.1:\\d+ \\(udp, pid ${server.pid}\\)$`,
      ),
    );
    assert.notEqual(server.port, 0);
  },
);

serverTest(
  `${SCRIPT}: small, empty and 65,507-byte datagrams come back whole, each logged`,
  async () => {
    await using server = await startServer(SCRIPT);
    using socket = udpSocket();
    const me = (socket.addr as Deno.NetAddr).port;
    for (const size of [5, 0, 1, 1000, MAX_DATAGRAM]) {
      const bytes = pattern(size, size + 1);
      assertSameBytes(
        await exchange(socket, server, bytes),
        bytes,
        `${size} B`,
      );
      await server.waitForLine(
        new RegExp(`127\\.0\\.0\\.1:${me}: ${size} bytes? echoed$`),
      );
    }
  },
);

serverTest(
  `${SCRIPT}: 8 senders x 100 datagrams, each answered once, none lost`,
  async () => {
    await using server = await startServer(SCRIPT, ["--quiet"]);
    const senders = Array.from({ length: 8 }, () => udpSocket());
    try {
      // Each sender waits for its answer before the next datagram: the
      // receive buffer never overflows, so any loss is the server's.
      await Promise.all(senders.map(async (socket, sender) => {
        for (let i = 0; i < 100; i++) {
          const bytes = pattern(200 + sender, sender * 1000 + i + 1);
          const answer = await exchange(socket, server, bytes);
          assertSameBytes(answer, bytes, `sender ${sender} datagram ${i}`);
        }
      }));
      // Exactly one answer each: nothing more is waiting on any socket.
      const extra = await Promise.all(
        senders.map((socket) => settlesWithin(socket.receive(), 200)),
      );
      assert.deepEqual(extra, senders.map(() => false), "a duplicate answer");
    } finally {
      senders.forEach((socket) => socket.close());
    }
  },
);

/** Whether this process may bind ports below 1024 (root, or a lowered limit). */
function canBindLowPorts(): boolean {
  if (Deno.uid() === 0) return true;
  try {
    const start = Deno.readTextFileSync(
      "/proc/sys/net/ipv4/ip_unprivileged_port_start",
    );
    return Number(start) <= 7;
  } catch {
    return false;
  }
}

/**
 * Sends from `denied` (a socket on a port the server must not answer), then
 * from an ordinary socket. The server is sequential, so once the ordinary
 * datagram is answered the denied one has been dealt with: an answer to it
 * would already be waiting.
 */
async function assertDropped(
  server: Server,
  denied: Deno.DatagramConn,
  reason: RegExp,
): Promise<void> {
  const from = denied.addr as Deno.NetAddr;
  await denied.send(new TextEncoder().encode("loop?"), serverAddr(server));
  using ordinary = udpSocket();
  const bytes = new TextEncoder().encode("still serving");
  assertSameBytes(await exchange(ordinary, server, bytes), bytes);
  assert.equal(
    await settlesWithin(denied.receive(), 300),
    false,
    `answered a datagram from ${from.hostname}:${from.port}`,
  );
  const line = await server.waitForLine(
    new RegExp(
      `dropped 5 bytes from ${
        from.hostname.replaceAll(".", "\\.")
      }:${from.port}: `,
    ),
  );
  assert.match(line, reason);
}

// Binding the small services' ports needs root (CI and this project's
// machines run tests as root); ports 7 and 19 are the classic echo-chargen
// loop. Port 0 cannot be a source without raw sockets, which Deno lacks: that
// rule is only exercised by hand.
serverTest(
  `${SCRIPT}: datagrams from the echo and chargen ports are dropped, and logged`,
  async () => {
    await using server = await startServer(SCRIPT);
    let tried = 0;
    for (const [port, name] of [[7, "echo"], [19, "chargen"]] as const) {
      let denied: Deno.DatagramConn;
      try {
        denied = udpSocket("127.0.0.1", port);
      } catch (error) {
        // Something on this machine already serves that port: not our case.
        if (error instanceof Deno.errors.AddrInUse) continue;
        throw error;
      }
      try {
        await assertDropped(
          server,
          denied,
          new RegExp(`source port ${port} \\(${name}\\)`),
        );
        tried++;
      } finally {
        denied.close();
      }
    }
    assert.ok(tried > 0, "ports 7 and 19 both busy: nothing was tested");
  },
  { ignore: !canBindLowPorts() },
);

serverTest(
  `${SCRIPT}: a datagram from the server's own port is dropped, and logged`,
  async () => {
    await using server = await startServer(SCRIPT);
    // 127.0.0.2 is loopback too, so this socket can hold the server's port
    // number: a stand-in for the server itself (or a twin on another host).
    using twin = udpSocket("127.0.0.2", server.port);
    await assertDropped(server, twin, /is this server's own/);
  },
);

serverTest(`${SCRIPT}: --host ::1 serves IPv6`, async () => {
  await using server = await startServer(SCRIPT, ["--host", "::1"]);
  assert.match(server.banner, /^listening on \[::1\]:\d+ \(udp, pid \d+\)$/);
  using socket = udpSocket("::1");
  const bytes = pattern(300, 3);
  assertSameBytes(await exchange(socket, server, bytes), bytes);
});

serverTest(`${SCRIPT}: --json logs one JSON object per line`, async () => {
  await using server = await startServer(SCRIPT, ["--json"]);
  const banner = JSON.parse(server.banner);
  assert.equal(banner.event, "listening");
  assert.equal(banner.transport, "udp");
  assert.equal(banner.host, "127.0.0.1");
  assert.equal(banner.pid, server.pid);
  using socket = udpSocket();
  await exchange(socket, server, pattern(42));
  const line = JSON.parse(await server.waitForLine(/"event":"datagram"/));
  assert.equal(line.bytes, 42);
  assert.equal(line.client, `127.0.0.1:${(socket.addr as Deno.NetAddr).port}`);
});

serverTest(
  `${SCRIPT}: --quiet logs no datagrams; SIGTERM exits 0 promptly`,
  async () => {
    await using server = await startServer(SCRIPT, ["--quiet"]);
    using socket = udpSocket();
    await exchange(socket, server, pattern(10));
    const started = performance.now();
    server.kill("SIGTERM");
    const exit = await server.waitForExit(5000);
    assert.equal(exit.code, 0, exit.stderr);
    assert.ok(performance.now() - started < 3000, "slow to stop");
    assert.deepEqual(server.lines.slice(1), [
      `[pid ${server.pid}] stopping (SIGTERM)`,
      `[pid ${server.pid}] stopped`,
    ]);
  },
);

serverTest(`${SCRIPT}: SIGINT exits 0 too`, async () => {
  await using server = await startServer(SCRIPT);
  server.kill("SIGINT");
  const exit = await server.waitForExit(5000);
  assert.equal(exit.code, 0, exit.stderr);
  assert.equal(exit.stderr, "");
});

serverTest(`${SCRIPT}: bad arguments exit 2 with one reason`, async () => {
  for (
    const args of [
      ["abc"],
      ["70000"],
      ["-1"],
      ["1", "2"],
      ["--bogus"],
      ["--host"],
      ["0", "--host", ""],
      ["0", "--max-conns", "3"],
    ]
  ) {
    const exit = await runScript(SCRIPT, args);
    assert.equal(exit.code, 2, `${args.join(" ")}: ${exit.stderr}`);
    assert.match(exit.stderr, /^udp_echo\.ts: .+\nusage: /, args.join(" "));
    assertNoStackTrace(exit.stderr);
  }
});

serverTest(`${SCRIPT}: a port in use exits 1 with one line`, async () => {
  await using server = await startServer(SCRIPT);
  const exit = await runScript(SCRIPT, [String(server.port)]);
  assert.equal(exit.code, 1);
  assert.equal(
    exit.stderr,
    `udp_echo.ts: cannot listen on 127.0.0.1:${server.port}: address in use\n`,
  );
});
