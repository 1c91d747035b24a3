/**
 * Child processes linked to the server that starts them: what a Deno server
 * does where a C server calls fork() and the child inherits the client's
 * socket. Deno can do neither, so each child gets a link, the byte stream
 * that its client is relayed through: a Unix socket the child connects back
 * to, made for it alone in the server's private directory (the one path the
 * child's sandbox may open); or, for a command, its stdin and stdout. Every
 * child is tied to the server's {@linkcode Lifeline}, and out of file
 * descriptors, starting a child waits and tries again, as the accept loop
 * does, instead of failing its client.
 *
 * @module
 */
import { fail } from "../cli.ts";
import { spawnErrorText } from "./children.ts";
import { Lifeline } from "./lifeline.ts";
import type { Duplex } from "../relay.ts";
import { sleep } from "../time.ts";

/**
 * A child's end of the relay: bytes both ways, and a close of both ways.
 * Once the child has stopped reading (it exited), writes succeed and drop
 * the bytes, so that a client that is still sending gets all of the child's
 * output and a clean end, not a reset.
 */
export interface ChildLink extends Duplex {
  /** Releases the link (the child's next read or write fails). */
  close(): void;
}

/** A child just started, and its link once it can be talked to. */
export interface LinkedChild {
  /** The process. It leads its own process group; reap it (terminateChild). */
  process: Deno.ChildProcess;
  /** The link; rejects when the child ends before it connects back. */
  link: Promise<ChildLink>;
}

/**
 * Starts one child (the model's `new Deno.Command(...).spawn()`): with the
 * path of the socket it must connect back to, or with none when its stdin
 * and stdout are the link (a command). `env` marks it for the lifeline.
 */
export type SpawnChild = (
  socket: string | undefined,
  env: Record<string, string>,
) => Deno.ChildProcess;

/** The children of one server: linked, and ended if it dies. */
export class LinkedChildren {
  /** Use {@linkcode LinkedChildren.open}. */
  private constructor(
    /** The private socket directory, for children that connect back. */
    readonly dir: string | undefined,
    /** Ends the children if the server dies. */
    readonly lifeline: Lifeline,
  ) {}

  /**
   * Starts the lifeline, and with `connectBack` makes the socket directory;
   * exits 1 with one line saying why when it cannot, before the server
   * prints its banner. The directory is `$TMPDIR/MODEL-PID-XXXXXX`, mode
   * 0700: only this user can enter it.
   */
  static async open(
    script: string,
    connectBack: boolean,
  ): Promise<LinkedChildren> {
    let dir: string | undefined;
    if (connectBack) {
      const prefix = `${script.replace(/\.ts$/, "")}-${Deno.pid}-`;
      try {
        dir = await Deno.makeTempDir({ prefix });
      } catch (error) {
        const why = `${tempDir()}: ${errorText(error)}`;
        fail(
          script,
          `cannot make a directory for the children's sockets in ${why}`,
        );
      }
    }
    try {
      return new LinkedChildren(dir, Lifeline.start(dir));
    } catch (error) {
      if (dir) await Deno.remove(dir, { recursive: true });
      fail(script, `cannot start the watchdog: ${spawnErrorText(error)}`);
    }
  }

  /**
   * Starts a child with `spawn`; `name` names its socket. While out of file
   * descriptors it waits and tries again, and resolves undefined if `signal`
   * aborts meanwhile. Throws when the child cannot be started.
   */
  start(
    name: string,
    signal: AbortSignal,
    spawn: SpawnChild,
  ): Promise<LinkedChild | undefined> {
    const env = this.lifeline.env;
    return whileOutOfFds(() => {
      if (!this.dir) {
        const process = spawn(undefined, env);
        return {
          process,
          link: Promise.resolve(dropOnceGone(pipesOf(process))),
        };
      }
      return this.#connectingBack(`${this.dir}/${name}.sock`, spawn);
    }, signal);
  }

  // The socket takes one connection and is gone (its file too), so nobody
  // else can reach the child through it. A spare descriptor is held from
  // the start for the child's connection (see acceptOne): a child never
  // waits for a descriptor that another starting child holds.
  #connectingBack(socket: string, spawn: SpawnChild): LinkedChild {
    const spare = Deno.openSync(this.dir!);
    let listener: Deno.Listener;
    let process: Deno.ChildProcess;
    try {
      listener = Deno.listen({ transport: "unix", path: socket });
    } catch (error) {
      spare.close();
      throw error;
    }
    try {
      process = spawn(socket, this.lifeline.env);
    } catch (error) {
      listener.close();
      spare.close();
      throw error;
    }
    const exited = process.status.then(() => null);
    const link = Promise.race([acceptOne(listener, spare, exited), exited]);
    link.finally(() => [listener, spare].forEach(closeQuietly)).catch(() => {});
    return {
      process,
      link: link.then((conn) => {
        if (conn) return dropOnceGone(conn);
        throw new Error("the child ended before it connected");
      }),
    };
  }

  /**
   * Once every child is reaped: ends the lifeline and removes the socket
   * directory.
   */
  async close(): Promise<void> {
    await this.lifeline.close();
    if (this.dir) {
      await Deno.remove(this.dir, { recursive: true }).catch(() => {});
    }
  }
}

/**
 * The `deno run` flags of a child sandboxed to `socket`: it may open that
 * one path, and nothing else.
 */
export function onlyTo(socket: string): string[] {
  return [
    `--allow-net=unix:${socket}`,
    `--allow-read=${socket}`,
    `--allow-write=${socket}`,
  ];
}

/**
 * In a child role started by {@linkcode LinkedChildren}: connects to
 * `socket`, runs `serve` on the connection and exits 0; exits 1 when the
 * link fails, quietly when the parent closed it or died (the client is
 * gone), with one line on stderr otherwise.
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

/** `link` with writes that drop the bytes once the child stopped reading. */
function dropOnceGone<T extends Duplex & { close(): void }>(
  link: T,
): ChildLink {
  let gone = false;
  return {
    read: (buffer) => link.read(buffer),
    async write(bytes) {
      if (!gone) {
        try {
          return await link.write(bytes);
        } catch {
          gone = true;
        }
      }
      return bytes.length;
    },
    async closeWrite() {
      if (!gone) {
        try {
          await link.closeWrite();
        } catch {
          gone = true;
        }
      }
    },
    close: () => closeQuietly(link),
  };
}

/**
 * Calls `start` until it does not fail for want of a file descriptor
 * (EMFILE, ENFILE), waiting 10 ms, doubling to 1 s, between tries; resolves
 * undefined if `signal` aborts first, and rethrows any other failure.
 */
async function whileOutOfFds<T>(
  start: () => T,
  signal: AbortSignal,
): Promise<T | undefined> {
  for (let wait = 10; !signal.aborted; wait = Math.min(2 * wait, 1000)) {
    try {
      return start();
    } catch (error) {
      if (!outOfFds(error)) throw error;
    }
    await sleep(wait, signal);
  }
}

function outOfFds(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === "EMFILE" || code === "ENFILE";
}

/**
 * Accepts the child's one connection. An accept that fails for want of a
 * descriptor has found the connection waiting: closing `spare` and
 * accepting again, in the same turn of the event loop, gives it the spare's
 * descriptor. Failing that, it waits and tries again (the child waits in
 * the socket's backlog), until the child has exited.
 */
async function acceptOne(
  listener: Deno.Listener,
  spare: Deno.FsFile,
  exited: Promise<null>,
): Promise<Deno.Conn | null> {
  let spared = false;
  for (let wait = 10;; wait = Math.min(2 * wait, 1000)) {
    try {
      return await listener.accept();
    } catch (error) {
      if (!outOfFds(error)) throw error;
    }
    if (!spared) {
      spared = true;
      spare.close();
      continue;
    }
    const gone = await Promise.race([sleep(wait).then(() => false), exited]);
    if (gone === null) return null;
  }
}

function closeQuietly(resource: { close(): void }): void {
  try {
    resource.close();
  } catch { /* closed already */ }
}

/**
 * The link over a command's stdin and stdout pipes (web streams). Its output
 * is read into a buffer of our own and copied into the caller's, because a
 * BYOB read takes the buffer it is given away.
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
    // Resolves once the pipe took the bytes: a child that does not read
    // holds the client back.
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

/** Where makeTempDir makes directories, for the error line. */
function tempDir(): string {
  const readable = Deno.permissions.querySync({
    name: "env",
    variable: "TMPDIR",
  }).state === "granted";
  return readable ? Deno.env.get("TMPDIR") ?? "/tmp" : "$TMPDIR";
}

function errorText(error: unknown): string {
  if (error instanceof Deno.errors.NotFound) return "no such directory";
  if (error instanceof Deno.errors.NotADirectory) return "not a directory";
  if (error instanceof Deno.errors.PermissionDenied) return "permission denied";
  const message = error instanceof Error ? error.message : String(error);
  return message.replace(/ \(os error \d+\).*$/, "").toLowerCase();
}
