/**
 * The stop signals: Ctrl-C, `kill`, and the terminal closing (SIGHUP), which
 * must drain like the others, not kill. Every script, TCP or UDP, server or
 * supervisor, stops on these the same way.
 *
 * @module
 */

const SHUTDOWN_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;

/**
 * Calls `stop(signal, count)` on every SIGINT, SIGTERM or SIGHUP, `count`
 * being how many have arrived so far (a second Ctrl-C means "now"). Register
 * it before anything is printed, so that no signal finds the default action
 * (death) once a parent or test has seen the banner.
 */
export function onShutdownSignal(
  stop: (signal: string, count: number) => void,
): void {
  let count = 0;
  for (const signal of SHUTDOWN_SIGNALS) {
    Deno.addSignalListener(signal, () => stop(signal, ++count));
  }
}
