/**
 * The stop signals: Ctrl-C, `kill`, and the terminal closing (SIGHUP), which
 * drains like the others, not kills. Every script stops on these alike.
 *
 * @module
 */

const SHUTDOWN_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;

/**
 * Calls `stop(signal, count)` on every SIGINT, SIGTERM or SIGHUP (`count`:
 * how many so far; a second means "now"). Register it before the banner, so
 * that no signal finds the default action (death).
 */
export function onShutdownSignal(
  stop: (signal: string, count: number) => void,
): void {
  let count = 0;
  for (const signal of SHUTDOWN_SIGNALS) {
    Deno.addSignalListener(signal, () => stop(signal, ++count));
  }
}
