import assert from "node:assert/strict";
import { echoServerConformance } from "./conformance.ts";
import {
  assertServedBeyondFdLimit,
  roundTripText,
  serverTest,
  settlesWithin,
  startServer,
} from "./harness.ts";

echoServerConformance("iterative.ts", { concurrent: false });

serverTest(
  "iterative.ts: a second client waits until the first one leaves",
  async () => {
    await using server = await startServer("iterative.ts");
    using first = await server.connect();
    assert.equal(await roundTripText(first, "first"), "first");
    const second = await server.connect(); // the handshake completes in the backlog
    const secondEcho = roundTripText(second, "second");
    assert.equal(await roundTripText(first, "still first"), "still first");
    assert.equal(
      await settlesWithin(secondEcho, 500),
      false,
      "second client served concurrently",
    );
    first.close();
    assert.equal(await secondEcho, "second");
    second.close();
    const order = server.lines.filter((line) =>
      /#\d+ .*(connected|closed)/.test(line)
    );
    assert.match(order[1], /#1 .*closed/);
    assert.match(order[2], /#2 .*connected/);
  },
);

serverTest(
  "iterative.ts: --idle-timeout frees the server from a silent client",
  async () => {
    await using server = await startServer("iterative.ts", [
      "--idle-timeout",
      "0.3",
    ]);
    using _silent = await server.connect();
    using next = await server.connect();
    assert.equal(await roundTripText(next, "my turn"), "my turn");
    await server.waitForLine(/#1 .*closed \(idle timeout\)/);
  },
);

serverTest(
  "iterative.ts under ulimit -n 48: clients queue in the backlog and are all served, one at a time",
  async () => {
    await assertServedBeyondFdLimit("iterative.ts", [], 48, 1);
  },
);
