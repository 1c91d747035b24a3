/**
 * The link from a server to each child it starts, where a C server forks and
 * the child inherits the client's socket (Deno can do neither): a Unix socket
 * the child connects back to, made for it alone in the server's private
 * directory (the one path its sandbox may open); or, for a command, its stdin
 * and stdout. Every child is tied to the server's {@linkcode Lifeline}; out of
 * file descriptors, starting one waits and tries again instead of failing its
 * client.
 *
 * @module
 */
import { fail } from "../cli.ts";
import { spawnErrorText } from "./children.ts";
import { Lifeline } from "./lifeline.ts";
import type { Duplex } from "../relay.ts";
import { sleep } from "../time.ts";

/**
 * A child's end of the relay. Once the child stopped reading (it exited),
 * writes drop the bytes, so that a client still sending gets all of the
 * child's output and a clean end, not a reset.
 */
export interface ChildLink extends Duplex {
  close(): void;
}

/** A child just started, and its link (rejects if it ends before it connects). */
export interface LinkedChild {
  /** Leads its own process group; reap it with terminateChild. */
  process: Deno.ChildProcess;
  link: Promise<ChildLink>;
}

/**
 * Starts one child (the model's `new Deno.Command(...).spawn()`), given the
 * socket it must connect back to, or none when its stdin and stdout are the
 * link; `env` marks it for the lifeline.
 */
export type SpawnChild = (
  socket: string | undefined,
  env: Record<string, string>,
) => Deno.ChildProcess;

/** The children of one server: linked, and ended if it dies. */
export class LinkedChildren {
  private constructor(
    private readonly dir: string | undefined,
    private readonly lifeline: Lifeline,
  ) {}

  /**
   * Starts the lifeline and, with `connectBack`, makes the socket directory,
   * `$TMPDIR/MODEL-PID-XXXXXX` (mode 0700: this user's only); exits 1 with one
   * line when it cannot, before the server prints its banner.
   */
  static async open(
    script: string,
    connectBack: boolean,
  ): Promise<LinkedChildren> {
    let dir: string | undefined;
    if (connectBack) {
      const prefix = `${script.replace(/\.ts$/, "")}-${Deno.pid}-`;
      dir = await Deno.makeTempDir({ prefix })
        .catch((error) => fail(script, noTempDir(error)));
    }
    try {
      return new LinkedChildren(dir, Lifeline.start(dir));
    } catch (error) {
      if (dir) await Deno.remove(dir, { recursive: true });
      fail(script, `cannot start the watchdog: ${spawnErrorText(error)}`);
    }
  }

  /**
   * Starts a child with `spawn`, `name` naming its socket. Out of file
   * descriptors, it waits and tries again, and resolves undefined once
   * `signal` aborts. Throws when the child cannot be started.
   */
  start(
    name: string,
    signal: AbortSignal,
    spawn: SpawnChild,
  ): Promise<LinkedChild | undefined> {
    const socket = this.dir && `${this.dir}/${name}.sock`;
    return whileOutOfFds(() => {
      if (signal.aborted) return undefined;
      if (socket) return this.#connectingBack(socket, spawn);
      const process = spawn(undefined, this.lifeline.env);
      return { process, link: Promise.resolve(dropOnceGone(pipesOf(process))) };
    }, (ms) => sleep(ms, signal));
  }

  // The socket takes one connection and is gone (its file too): nobody else
  // can reach the child through it. A spare descriptor is held from the start
  // for the child's connection (see acceptOne), so that no child waits for a
  // descriptor that another starting child holds.
  #connectingBack(socket: string, spawn: SpawnChild): LinkedChild {
    const spare = Deno.openSync(this.dir!);
    let listener: Deno.Listener | undefined;
    const release = () => [spare, listener].forEach(closeQuietly);
    let process: Deno.ChildProcess;
    try {
      listener = Deno.listen({ transport: "unix", path: socket });
      process = spawn(socket, this.lifeline.env);
    } catch (error) {
      release();
      throw error;
    }
    const exited = process.status.then(() => undefined);
    const conn = Promise.race([acceptOne(listener, spare), exited]);
    const link = conn.finally(release).then((accepted) => {
      if (accepted) return dropOnceGone(accepted);
      throw new Error("the child ended before it connected");
    });
    return { process, link };
  }

  /** Once every child is reaped: ends the lifeline, removes the directory. */
  async close(): Promise<void> {
    await this.lifeline.close();
    if (this.dir) {
      await Deno.remove(this.dir, { recursive: true }).catch(() => {});
    }
  }
}

/** The `deno run` flags of a child that may open `socket` and nothing else. */
export function onlyTo(socket: string): string[] {
  return [
    `--allow-net=unix:${socket}`,
    `--allow-read=${socket}`,
    `--allow-write=${socket}`,
  ];
}

/**
 * In a child started by {@linkcode LinkedChildren}: connects to `socket`,
 * runs `serve` on the connection and exits 0; exits 1 when the link fails,
 * quietly when the parent closed it or died (the client is gone).
 */
export async function connectBack(
  socket: string,
  serve: (parent: Deno.Conn) => Promise<void>,
): Promise<never> {
  try {
    using parent = await Deno.connect({ transport: "unix", path: socket });
    await serve(parent);
  } catch (error) {
    const gone = error instanceof Deno.errors.BrokenPipe ||
      error instanceof Deno.errors.ConnectionReset ||
      error instanceof Deno.errors.ConnectionRefused ||
      error instanceof Deno.errors.NotFound;
    if (!gone) {
      console.error(`${error instanceof Error ? error.message : error}`);
    }
    Deno.exit(1);
  }
  Deno.exit(0);
}

/** `link`, with writes that drop the bytes once the child stopped reading. */
function dropOnceGone(link: Duplex & { close(): void }): ChildLink {
  let gone = false;
  const unlessGone = async <T>(io: () => Promise<T>, otherwise: T) => {
    try {
      if (!gone) return await io();
    } catch {
      gone = true;
    }
    return otherwise;
  };
  return {
    read: (buffer) => link.read(buffer),
    write: (bytes) => unlessGone(() => link.write(bytes), bytes.length),
    closeWrite: () => unlessGone(() => link.closeWrite(), undefined),
    close: () => closeQuietly(link),
  };
}

/**
 * Calls `attempt` until it does not fail for want of a file descriptor
 * (EMFILE, ENFILE), rethrowing any other failure. Between tries it awaits
 * `pause(ms)`, ms 10 doubling to 1000; a pause that returns no promise
 * retries in the same turn of the event loop.
 */
async function whileOutOfFds<T>(
  attempt: () => T | Promise<T>,
  pause: (ms: number) => Promise<void> | void,
): Promise<T> {
  for (let ms = 10;; ms = Math.min(2 * ms, 1000)) {
    try {
      return await attempt();
    } catch (error) {
      const code = (error as { code?: unknown } | null)?.code;
      if (code !== "EMFILE" && code !== "ENFILE") throw error;
    }
    const paused = pause(ms);
    if (paused) await paused;
  }
}

/**
 * Accepts the child's one connection. An accept that fails for want of a
 * descriptor has found the connection waiting: closing `spare` and accepting
 * again, in the same turn of the event loop, gives it the spare's descriptor.
 * Failing that, it waits and tries again (the child waits in the backlog)
 * until the listener is closed.
 */
function acceptOne(
  listener: Deno.Listener,
  spare: Deno.FsFile,
): Promise<Deno.Conn> {
  let spared = false;
  return whileOutOfFds(() => listener.accept(), (ms) => {
    if (spared) return sleep(ms);
    spared = true;
    spare.close();
  });
}

function closeQuietly(resource: { close(): void } | undefined): void {
  try {
    resource?.close();
  } catch { /* closed already */ }
}

/**
 * The link over a command's stdin and stdout. Output is read into a buffer of
 * our own and copied, because a BYOB read takes its buffer away.
 */
function pipesOf(process: Deno.ChildProcess): Duplex & { close(): void } {
  const writer = process.stdin.getWriter();
  const reader = process.stdout.getReader({ mode: "byob" });
  let spare = new ArrayBuffer(64 * 1024);
  return {
    async read(buffer) {
      const size = Math.min(buffer.length, spare.byteLength);
      const { value, done } = await reader.read(new Uint8Array(spare, 0, size));
      if (value) spare = value.buffer as ArrayBuffer;
      if (done || !value) return null;
      buffer.set(value);
      return value.length;
    },
    // Resolves once the pipe took the bytes: a child that does not read holds
    // the client back.
    async write(bytes) {
      await writer.write(bytes);
      return bytes.length;
    },
    closeWrite: () => writer.close(),
    close() {
      writer.close().catch(() => {});
      reader.cancel().catch(() => {});
    },
  };
}

/** The line that says where makeTempDir failed, and why in a few words. */
function noTempDir(error: unknown): string {
  const env = { name: "env", variable: "TMPDIR" } as const;
  const dir = Deno.permissions.querySync(env).state === "granted"
    ? Deno.env.get("TMPDIR") ?? "/tmp"
    : "$TMPDIR";
  // Deno's message is strerror's, then " (os error N): tmpdir".
  const why = error instanceof Deno.errors.NotFound
    ? "no such directory"
    : error instanceof Deno.errors.PermissionDenied // EPERM too
    ? "permission denied"
    : (error as Error).message.replace(/ \(os error .*/, "").toLowerCase();
  return `cannot make a directory for the children's sockets in ${dir}: ${why}`;
}
