/**
 * What forked.ts's parent does for each client once it has a child for it,
 * as a C parent's SIGCHLD handler reaps: relay the client's bytes to the child
 * and back, log the child's stderr, end it when the client is ended from
 * outside (idle timeout, shutdown), and reap it.
 *
 * @module
 */
import type { Logger } from "../log.ts";
import { pipe } from "../relay.ts";
import type { Session } from "../serve.ts";
import { within } from "../time.ts";
import {
  describeExit,
  forEachLine,
  spawnErrorText,
  terminateChild,
} from "./children.ts";
import type { ChildLink, LinkedChildren, SpawnChild } from "./link.ts";

/**
 * Serves `session` through a child that `spawn` starts, until the child's
 * output ends or either side fails; then ends and reaps the child. Logs
 * "spawned", its stderr and "reaped"; `what` names it if it cannot start.
 */
export async function serveInChild(
  session: Session,
  children: LinkedChildren,
  log: Logger,
  spawn: SpawnChild,
  what = "child",
): Promise<void> {
  const { id, signal } = session;
  const started = children.start(String(id), signal, spawn);
  const child = await started.catch((error) => {
    log.error(`#${id} cannot start ${what}: ${spawnErrorText(error)}`, { id });
    session.end("cannot start child");
  });
  if (!child) return; // a shutdown came first, or it could not start
  const { process, link } = child;
  const [pid, startedAt] = [process.pid, performance.now()];
  const who = { id, child: pid };
  if (log.verbose) log.event("spawned", `#${id} spawned child ${pid}`, who);
  const stderrLogged = forEachLine(process.stderr, (line) => {
    log.event("stderr", `#${id} child ${pid}: ${line}`, { ...who, line }, true);
  });
  // A shutdown or idle timeout ends the child at once; one whose client is
  // gone gets a second to exit. Signals go to its group: no grandchild stays.
  const end = (termAfterMs: number) =>
    terminateChild(process, { termAfterMs, group: true });
  let ended: Promise<Deno.CommandStatus> | undefined;
  signal.addEventListener("abort", () => ended = end(0), { once: true });

  const failure = await relayWith(session, link).catch((error) => error);
  session.close(); // the child reads EOF, or fails to write
  const status = await (ended ?? end(1000));
  await within(stderrLogged, 100); // its last words before its exit line
  const { text, fields } = describeExit(status, performance.now() - startedAt);
  const reaped = `#${id} reaped child ${pid}: ${text}`;
  if (log.verbose) log.event("reaped", reaped, { ...who, ...fields });
  if (failure !== undefined) throw failure;
}

/**
 * Relays until the child's output ended and was all sent; a client still
 * sending gets a second to see that end (a clean close, not a reset).
 * Rejects on either side's first failure, or if the child never connects.
 */
async function relayWith(
  session: Session,
  linking: Promise<ChildLink>,
): Promise<void> {
  const link = await linking;
  const toChild = pipe(session.conn, link, (n) => session.bytesIn += n);
  const toClient = pipe(link, session.conn, (n) => session.bytesOut += n);
  try {
    await Promise.race([toClient, toChild.then(() => toClient)]);
    await within(toChild, 1000);
  } finally {
    link.close();
  }
}
