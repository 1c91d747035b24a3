/**
 * Waiting, the one way every script here does it: a sleep that a stop can cut
 * short, and a bounded wait for a promise.
 *
 * @module
 */

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
  });
}

/**
 * Resolves when `promise` settles (either way) or after `ms`, whichever is
 * first: true when it settled in time.
 */
export async function within(
  promise: Promise<unknown>,
  ms: number,
): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise.then(() => true, () => true),
      new Promise<boolean>((resolve) =>
        timer = setTimeout(() => resolve(false), ms)
      ),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
