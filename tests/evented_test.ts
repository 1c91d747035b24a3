import assert from "node:assert/strict";
import { echoServerConformance } from "./conformance.ts";
import {
  assertServedBeyondFdLimit,
  assertThirdClientWaits,
  roundTripText,
  serverTest,
  startServer,
} from "./harness.ts";

echoServerConformance("evented.ts", { concurrent: true });

serverTest(
  "evented.ts: --max-conns 2 holds the third client back until one leaves",
  async () => {
    await using server = await startServer("evented.ts", ["--max-conns", "2"]);
    await assertThirdClientWaits(server);
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

serverTest(
  "evented.ts under ulimit -n 64: --max-conns is capped with one log line, and 3x more clients than fit are all served",
  async () => {
    const fits = await assertServedBeyondFdLimit("evented.ts", [], 64);
    assert.ok(fits >= 1 && fits < 64, `${fits} fit`);
  },
);
