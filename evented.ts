#!/usr/bin/env -S deno run --allow-net --allow-read --allow-write
/**
 * Event-based echo server: every client is a task on one event loop.
 *
 * The I/O-multiplexing model (CS:APP's `select` server, an epoll loop in C):
 * one thread waits on every socket at once and serves whichever is ready.
 * Deno's event loop *is* that loop, so each client is just an async function
 * that the loop resumes when its socket has bytes. A client costs some KB of
 * memory and no thread or process, so thousands are cheap; but all share one
 * thread, so a client whose request burns CPU stalls all the others.
 *
 * Run:  deno run -A evented.ts 8080
 * Try:  many `nc -N 127.0.0.1 8080` at once: all are answered. Then restart with
 *       `--cpu-ms 200` and type in two of them at the same time: each echo
 *       waits for the other's 200 ms, because there is only one thread.
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
  script: "evented.ts",
  summary:
    "Event-based echo server: every client is an async task on one event loop.",
  defaultMaxConns: 10_000,
});
const listener = await listenOrExit(options, (at) => Deno.listen(at));
const server = new EchoServer(options, listener); // the banner; Ctrl-C drains

for (;;) {
  const conn = await server.accept(); // null once a stop signal came
  if (!conn) break;
  // Not awaited: the loop goes back to accept at once, and the event loop
  // runs every client's echo whenever its socket has bytes.
  server.serve(conn, (client) => echo(conn, conn, client, options.cpuMs));
}
