#!/usr/bin/env -S deno run --allow-net --unstable-net
/**
 * UDP echo server: one reply datagram per datagram, one datagram at a time.
 *
 * The datagram half of RFC 862, as the textbook `recvfrom`/`sendto` loop
 * (UNP's `dg_echo`). There is nothing to accept and no client to serve
 * concurrently: every datagram is a whole request, and one loop answering
 * them in turn is the model. No memory per client, but a slow answer delays
 * every sender, and a datagram that arrives while the receive buffer is full
 * is lost. Datagrams whose answer could start a reflection loop (source port
 * 0, the small services' ports, this server's own port) are dropped and
 * logged: docs/models/udp_echo.md says why.
 *
 * Run:  deno run -A udp_echo.ts 8080
 * Try:  nc -u 127.0.0.1 8080          (each line comes back; Ctrl-C ends nc)
 *       deno run -A client.ts 8080 --udp --connections 8 --requests 10000
 *
 * Copy with: lib/ (the folder, as it is)
 * Flags without deno.json: the shebang's. MIT licensed; see LICENSE.
 */
import { parseServerArgs } from "./lib/cli.ts";
import { listenDatagramOrExit } from "./lib/listen.ts";
import { formatAddr, Logger } from "./lib/log.ts";
import { onShutdownSignal } from "./lib/signals.ts";
import { sleep } from "./lib/time.ts";

/** The small services (RFC 862-865, 867, 868): a datagram "from" them is forged. */
const SMALL_SERVICES = new Map([
  [7, "echo"],
  [9, "discard"],
  [13, "daytime"],
  [17, "qotd"],
  [19, "chargen"],
  [37, "time"],
]);

/** Why a datagram from `source` must not be answered, or null to answer it. */
function refusal(source: Deno.NetAddr, self: Deno.NetAddr): string | null {
  if (source.port === 0) return "source port 0 (nobody can receive the answer)";
  const service = SMALL_SERVICES.get(source.port);
  if (service) {
    return `source port ${source.port} (${service}): answering could start a loop`;
  }
  if (source.port === self.port) {
    return `source port ${source.port} is this server's own: answering could loop`;
  }
  return null;
}

const options = await parseServerArgs(Deno.args, {
  script: "udp_echo.ts",
  summary:
    "UDP echo server: answers each datagram with the same bytes, one at a time.",
  datagram: true,
  defaultMaxConns: 1,
  denoFlags: "-A --unstable-net",
});
const log = new Logger(options);
const socket = listenDatagramOrExit(options, (at) => Deno.listenDatagram(at));
const self = socket.addr as Deno.NetAddr;

let stopping = false;
onShutdownSignal((signal) => {
  if (stopping) return;
  stopping = true;
  log.event("stopping", `stopping (${signal})`, { reason: signal }, true);
  socket.close(); // the pending receive rejects, and the loop ends
});
log.listening(self, ["udp", `pid ${Deno.pid}`], { model: "udp" });

const buffer = new Uint8Array(64 * 1024); // the largest datagram fits whole
while (!stopping) {
  let datagram: Uint8Array, from: Deno.Addr;
  try {
    [datagram, from] = await socket.receive(buffer); // recvfrom
  } catch (error) {
    if (stopping) break;
    log.error(`receive failed: ${(error as Error).message}`);
    await sleep(10); // no busy loop
    continue;
  }
  const source = from as Deno.NetAddr;
  const [client, bytes] = [formatAddr(source), datagram.length];
  const reason = refusal(source, self);
  if (reason !== null) {
    const text = `dropped ${bytes} bytes from ${client}: ${reason}`;
    log.event("dropped", text, { client, bytes, reason });
    continue;
  }
  try {
    await socket.send(datagram, source); // sendto: the same bytes, back
  } catch (error) {
    if (stopping) break;
    log.error(`cannot answer ${client}: ${(error as Error).message}`);
    continue;
  }
  if (log.verbose) {
    const text = `${client}: ${bytes} byte${bytes === 1 ? "" : "s"} echoed`;
    log.event("datagram", text, { client, bytes });
  }
}
log.event("stopped", "stopped", {}, true);
Deno.exit(0);
