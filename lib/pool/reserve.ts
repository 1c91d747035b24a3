/**
 * The port of a pool whose workers each bind it with SO_REUSEPORT (prefork.ts,
 * threaded.ts --pool): found and held by the supervisor while they bind.
 *
 * @module
 */
import { fail, type ServerOptions } from "../cli.ts";
import { listenOrExit } from "../listen.ts";

/**
 * Why workers cannot share a port on `os`, or undefined when they can:
 * Deno sets SO_REUSEPORT on Linux only, and ignores `reusePort` elsewhere.
 */
export function reusePortMissing(os: string): string | undefined {
  return os === "linux" ? undefined : `the workers share the port with ` +
    `SO_REUSEPORT, which Deno offers on Linux only (this is ${os})`;
}

/**
 * Finds the port (0 becomes a free one) and holds it while the workers bind
 * it: first without SO_REUSEPORT, which fails with one line if anybody holds
 * it (even another reusePort group); then with it, so the workers can join.
 * A client that connects before the workers listen may be hashed to this
 * listener and is reset when it closes.
 */
export async function reservePort(
  options: ServerOptions,
): Promise<{ addr: Deno.NetAddr; close(): void }> {
  const missing = reusePortMissing(Deno.build.os);
  if (missing) fail(options.script, missing);
  const probe = await listenOrExit(options);
  const { hostname, port } = probe.addr as Deno.NetAddr;
  probe.close();
  const held = await listenOrExit(
    { ...options, host: hostname, port },
    (at) => Deno.listen({ ...at, reusePort: true }),
  );
  return { addr: held.addr as Deno.NetAddr, close: () => held.close() };
}
