/**
 * Binding a listener, or exit 1 with one line saying why not (port in use,
 * not permitted, no such address): every server's first call, and the first
 * thing that goes wrong.
 *
 * @module
 */
import { fail, type ServerOptions } from "./cli.ts";
import { formatAddr } from "./log.ts";

/**
 * The address of `options` as `Deno.listen` takes it: `{ hostname, port }`,
 * or for `--unix` `{ transport: "unix", path }` (typed as the TCP form, into
 * which a model spreads `reusePort`).
 */
export type ListenAt = Deno.TcpListenOptions & { transport?: "tcp" };

/** See {@linkcode ListenAt}. */
export function listenAt(options: ServerOptions): ListenAt {
  if (options.unix === undefined) {
    return { hostname: options.host, port: options.port };
  }
  return { transport: "unix", path: options.unix } as unknown as ListenAt;
}

/**
 * Calls `listen` (the model's `Deno.listen`) on the address of `options`, or
 * exits 1: "cannot listen on 127.0.0.1:8080: address in use". A Unix socket
 * left by a dead server (nobody answers on it) is removed first, as the
 * classic C servers unlink before bind.
 */
export async function listenOrExit<L extends Deno.Listener>(
  options: ServerOptions,
  listen: (at: ListenAt) => L = (at) => Deno.listen(at) as unknown as L,
): Promise<L> {
  const at = listenAt(options);
  const { unix } = options;
  const { host: hostname, port } = options;
  const where = unix !== undefined
    ? `unix:${unix}`
    : formatAddr({ transport: "tcp", hostname, port });
  try {
    try {
      return listen(at);
    } catch (error) {
      const stale = unix !== undefined &&
        error instanceof Deno.errors.AddrInUse && await isStaleSocket(unix);
      if (!stale) throw error;
      await Deno.remove(unix);
      return listen(at);
    }
  } catch (error) {
    // "Address in use" only for a socket: other files say what they are.
    const problem = error instanceof Deno.errors.AddrInUse &&
      unix !== undefined && await unixPathProblem(unix);
    const why = problem
      ? `${problem} (not a socket; left as it is)`
      : bindErrorText(error, unix !== undefined);
    fail(options.script, `cannot listen on ${where}: ${why}`);
  }
}

/**
 * What stands at `path` where a Unix socket was to be bound ("is a FIFO", "is
 * a dangling symlink to x"), or undefined for a socket or nothing: bind(2)
 * says EADDRINUSE for any of them, which reads as a running server.
 */
export async function unixPathProblem(
  path: string,
): Promise<string | undefined> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.lstat(path);
  } catch {
    return undefined; // gone, or not ours to see: bind's own error stands
  }
  if (info.isSymlink) {
    const target = await Deno.readLink(path).catch(() => "?");
    const dangling = await Deno.stat(path).then(() => "", () => "dangling ");
    return `is a ${dangling}symlink to ${target}`;
  }
  if (info.isSocket) return undefined;
  if (info.isDirectory) return "is a directory";
  if (info.isFile) return "is a regular file";
  if (info.isFifo) return "is a FIFO";
  if (info.isCharDevice) return "is a character device";
  if (info.isBlockDevice) return "is a block device";
  return "is not a socket";
}

async function isStaleSocket(path: string): Promise<boolean> {
  try {
    if (!(await Deno.lstat(path)).isSocket) return false;
    (await Deno.connect({ transport: "unix", path })).close();
    return false;
  } catch (error) {
    return error instanceof Deno.errors.ConnectionRefused;
  }
}

/** Why binding failed, in a few words: "address in use", for TCP, UDP or `unix`. */
export function bindErrorText(error: unknown, unix = false): string {
  if (error instanceof Deno.errors.AddrInUse) return "address in use";
  if (error instanceof Deno.errors.AddrNotAvailable) {
    return "address not available on this machine";
  }
  if (error instanceof Deno.errors.NotCapable) {
    return "not permitted by Deno (run with --allow-net, or --allow-read --allow-write for --unix)";
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return unix
      ? "permission denied (cannot create a file in that directory)"
      : "permission denied (ports below 1024 need root)";
  }
  if (unix && error instanceof Deno.errors.NotFound) {
    return "no such file or directory";
  }
  const message = error instanceof Error ? error.message : String(error);
  if (/lookup|resolve/i.test(message)) return "unknown host";
  return message.replace(/ \(os error \d+\)$/, "").toLowerCase();
}

/** Where a UDP socket binds, as `Deno.listenDatagram` takes it. */
export type DatagramAt = Deno.UdpListenOptions & { transport: "udp" };

/**
 * Binds a UDP socket with `listen` (the model's `Deno.listenDatagram`), or
 * exits 1 with one line: the unstable flag it needs, or why binding failed.
 */
export function listenDatagramOrExit(
  { script, host: hostname, port }: Pick<
    ServerOptions,
    "script" | "host" | "port"
  >,
  listen: (at: DatagramAt) => Deno.DatagramConn = (at) =>
    Deno.listenDatagram(at),
): Deno.DatagramConn {
  if (typeof Deno.listenDatagram !== "function") { // no --unstable-net
    fail(
      script,
      'Deno.listenDatagram needs --unstable-net (or "unstable": ["net"] in deno.json)',
    );
  }
  try {
    return listen({ transport: "udp", hostname, port });
  } catch (error) {
    const where = formatAddr({ transport: "udp", hostname, port });
    fail(script, `cannot listen on ${where}: ${bindErrorText(error)}`);
  }
}
