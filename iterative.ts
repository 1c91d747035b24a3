#!/usr/bin/env -S deno run --allow-net --allow-read --allow-write
/**
 * Iterative echo server: one client at a time.
 *
 * The simplest server there is (CS:APP's `echoserveri.c`): accept a client,
 * serve it until it closes, accept the next. While one client is served the
 * others wait in the kernel's listen backlog: connected, but not answered.
 * That is fine for short exchanges and terrible for a slow or silent client,
 * which holds everyone else up; `--idle-timeout` bounds how long.
 *
 * Run:  deno run -A iterative.ts 8080
 * Try:  two `nc -N 127.0.0.1 8080` at once: the second gets no echo until the
 *       first one quits. Then restart with `--idle-timeout 5` and leave the
 *       first one silent.
 *
 * Copy with: lib/ (the folder, as it is)
 * Flags without deno.json: the shebang's (read and write are for --unix; with
 * -A it also reads `ulimit -n` to cap --max-conns). MIT licensed; see LICENSE.
 */
import { parseServerArgs } from "./lib/cli.ts";
import { echo } from "./lib/echo.ts";
import { listenOrExit } from "./lib/listen.ts";
import { EchoServer } from "./lib/serve.ts";

const options = await parseServerArgs(Deno.args, {
  script: "iterative.ts",
  summary:
    "Iterative echo server: serves one client at a time; the others wait.",
  defaultMaxConns: 1,
  fixedMaxConns: true,
});
const listener = await listenOrExit(options, (at) => Deno.listen(at));
const server = new EchoServer(options, listener); // the banner; Ctrl-C drains

for (;;) {
  const conn = await server.accept(); // null once a stop signal came
  if (!conn) break;
  // Awaited: the next client waits in the kernel's backlog meanwhile.
  await server.serve(conn, (client) => echo(conn, conn, client, options.cpuMs));
}
