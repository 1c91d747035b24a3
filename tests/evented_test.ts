import assert from "node:assert/strict";
import { echoServerConformance } from "./conformance.ts";
import {
  roundTripText,
  serverTest,
  settlesWithin,
  startServer,
} from "./harness.ts";

echoServerConformance("evented.ts", { concurrent: true });

serverTest("evented.ts: serves 20 clients at once", async () => {
  await using server = await startServer("evented.ts");
  const clients = await Promise.all(
    Array.from({ length: 20 }, () => server.connect()),
  );
  try {
    // Every client talks while all 20 are connected: none waits for another.
    for (let round = 0; round < 3; round++) {
      const echoes = await Promise.all(
        clients.map((conn, i) => roundTripText(conn, `${round}:${i}`)),
      );
      echoes.forEach((echo, i) => assert.equal(echo, `${round}:${i}`));
    }
  } finally {
    clients.forEach((conn) => conn.close());
  }
});

serverTest(
  "evented.ts: --max-conns 2 holds the third client back until one leaves",
  async () => {
    await using server = await startServer("evented.ts", ["--max-conns", "2"]);
    using first = await server.connect();
    using second = await server.connect();
    assert.equal(await roundTripText(first, "1"), "1");
    assert.equal(await roundTripText(second, "2"), "2");
    const third = await server.connect(); // waits in the backlog, not refused
    const thirdEcho = roundTripText(third, "3");
    assert.equal(
      await settlesWithin(thirdEcho, 500),
      false,
      "third client served over the limit",
    );
    assert.equal(await roundTripText(second, "2 again"), "2 again");
    first.close();
    assert.equal(await thirdEcho, "3");
    third.close();
  },
);

serverTest(
  "evented.ts: --cpu-ms burns that long per chunk before echoing",
  async () => {
    await using server = await startServer("evented.ts", ["--cpu-ms", "150"]);
    using conn = await server.connect();
    const started = performance.now();
    assert.equal(await roundTripText(conn, "slow"), "slow");
    assert.ok(
      performance.now() - started >= 150,
      "echoed before the CPU work was done",
    );
  },
);
