/**
 * relay.ts on real loopback sockets: a relay between two connections passes
 * every byte and each half-close through, and a side that stops reading
 * holds the other back instead of growing the relay's memory.
 *
 * @module
 */
import assert from "node:assert/strict";
import { relay } from "../lib/relay.ts";
import {
  assertSameBytes,
  pattern,
  readToEnd,
  withTimeout,
  writeAll,
} from "./harness.ts";

/** A connected pair of TCP sockets on loopback: [ours, theirs]. */
async function socketPair(): Promise<[Deno.TcpConn, Deno.TcpConn]> {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [theirs, ours] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
    listener.accept(),
  ]);
  return [ours, theirs];
}

Deno.test("relay: bytes and half-closes pass both ways, counted", async () => {
  const [a, left] = await socketPair();
  const [b, right] = await socketPair();
  const counters = { bytesIn: 0, bytesOut: 0 };
  const relayed = relay(a, b, counters);
  const fromLeft = pattern(300_000, 1);
  const fromRight = pattern(200_000, 2);
  // Each side writes all and half-closes; each reads the other's to EOF.
  const [atRight, atLeft] = await withTimeout(
    Promise.all([
      (async () => {
        await writeAll(left, fromLeft);
        await left.closeWrite();
        return await readToEnd(right);
      })(),
      (async () => {
        await writeAll(right, fromRight);
        await right.closeWrite();
        return await readToEnd(left);
      })(),
    ]),
    10_000,
    "both directions",
  );
  assertSameBytes(atRight, fromLeft, "left to right");
  assertSameBytes(atLeft, fromRight, "right to left");
  await withTimeout(relayed, 5_000, "the relay's end");
  assert.deepEqual(counters, { bytesIn: 300_000, bytesOut: 200_000 });
  for (const conn of [a, b, left, right]) conn.close();
});

Deno.test("relay: a side that stops reading holds the writer back", async () => {
  const [a, left] = await socketPair();
  const [b, right] = await socketPair();
  const relayed = relay(a, b, { bytesIn: 0, bytesOut: 0 }).catch(() => {});
  // Nobody reads `right`: the writer must stall once the kernel's buffers
  // (a few MiB on loopback) and the relay's one chunk are full.
  const chunk = new Uint8Array(64 * 1024);
  let written = 0;
  const writing = (async () => {
    for (;;) written += await left.write(chunk);
  })().catch(() => {});
  // No event says "the writer is stuck": watch its count stop moving.
  let last = -1;
  for (let i = 0; written !== last && i < 40; i++) {
    last = written;
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  assert.ok(written < 64 * 1024 * 1024, `${written} bytes went in unread`);
  // Closing every socket ends the writer and the relay.
  right.close();
  for (const conn of [a, b, left]) conn.close();
  await Promise.all([writing, relayed]);
});
