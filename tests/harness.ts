/**
 * Test harness: start a script as a real subprocess on port 0, read its banner
 * and log, talk to it over real sockets, and always end what was started, by
 * pid, even when a test fails or times out.
 *
 * @module
 */
import assert from "node:assert/strict";

/** The project root, where the scripts and deno.json live. */
export const ROOT: string = new URL("..", import.meta.url).pathname;

/** The runnable scripts at the root: the seven models first, then the tools. */
export const SCRIPTS: readonly string[] = [
  "iterative.ts",
  "evented.ts",
  "forked.ts",
  "threaded.ts",
  "prefork.ts",
  "cluster.ts",
  "udp_echo.ts",
  "client.ts",
  "bench.ts",
  "watch.ts",
];

/** How a subprocess ended, with everything it wrote on stderr. */
export interface Exit {
  code: number;
  signal: Deno.Signal | null;
  stderr: string;
}

/** A script running as a subprocess, its stdout read line by line. */
export class Script implements AsyncDisposable {
  /** Every stdout line so far. */
  readonly lines: string[] = [];
  /** Resolves when the process has exited and its output is read. */
  readonly exited: Promise<Exit>;
  #child: Deno.ChildProcess;
  #waiters = new Set<() => void>();
  #stderr = "";
  #done = false;

  /** Spawns `deno run -A SCRIPT ARGS...` in the project root. */
  constructor(
    script: string,
    args: string[],
    options: {
      stdin?: "piped" | "null";
      /**
       * Run it in a session and process group of its own, as a shell runs a
       * job, so that `Deno.kill(-pid, signal)` signals the whole group the
       * way a terminal's Ctrl-C does.
       */
      detached?: boolean;
      /**
       * Run `./SCRIPT` in this directory, by its shebang line, the way a
       * user runs a copied script (default: `deno run -A` in the root).
       */
      copyIn?: string;
      /** Run it under `ulimit -n FDLIMIT`: at most that many open files. */
      fdLimit?: number;
    } = {},
  ) {
    let [program, argv] = options.copyIn === undefined
      ? [Deno.execPath(), ["run", "-A", script, ...args]]
      : [`./${script}`, args];
    if (options.fdLimit !== undefined) {
      argv = [
        "-c",
        `ulimit -n ${options.fdLimit}; exec "$@"`,
        "sh",
        program,
        ...argv,
      ];
      program = "/bin/sh";
    }
    const child = new Deno.Command(program, {
      args: argv,
      cwd: options.copyIn ?? ROOT,
      stdin: options.stdin ?? "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
      detached: options.detached ?? false,
    }).spawn();
    this.#child = child;
    running.add(this);
    const stdout = this.#readLines();
    const stderr = this.#readStderr();
    this.exited = (async () => {
      const status = await child.status;
      await Promise.all([stdout, stderr]);
      this.#done = true;
      running.delete(this);
      this.#notify();
      return { code: status.code, signal: status.signal, stderr: this.#stderr };
    })();
  }

  /** The process id: what the test signals and kills. */
  get pid(): number {
    return this.#child.pid;
  }

  /** The child's stdin, when started with `stdin: "piped"`. */
  get stdin(): WritableStream<Uint8Array> {
    return this.#child.stdin;
  }

  /** Everything written on stderr so far. */
  get stderr(): string {
    return this.#stderr;
  }

  /** Sends `signal` to the process, unless it has already exited. */
  kill(signal: Deno.Signal = "SIGTERM"): void {
    if (this.#done) return;
    try {
      this.#child.kill(signal);
    } catch { /* exited in between */ }
  }

  /**
   * Resolves with the first stdout line at index `from` or later that matches
   * `pattern`; rejects after `ms`, or when the process exits without one.
   */
  async waitForLine(pattern: RegExp, ms = 10_000, from = 0): Promise<string> {
    const deadline = AbortSignal.timeout(ms);
    for (let i = from;;) {
      for (; i < this.lines.length; i++) {
        if (pattern.test(this.lines[i])) return this.lines[i];
      }
      if (this.#done) {
        throw new Error(
          `exited without printing ${pattern}; stderr: ${this.#stderr}`,
        );
      }
      if (deadline.aborted) {
        throw new Error(
          `no line matching ${pattern} within ${ms} ms; got:\n${
            this.lines.join("\n")
          }`,
        );
      }
      await new Promise<void>((resolve) => {
        const wake = () => {
          this.#waiters.delete(wake);
          deadline.removeEventListener("abort", wake);
          resolve();
        };
        this.#waiters.add(wake);
        deadline.addEventListener("abort", wake);
      });
    }
  }

  /**
   * Resolves with the first `count` stdout lines that match `pattern`, once
   * there are that many (say, one "closed" line per client, whatever numbers
   * the clients got); rejects like {@linkcode waitForLine} after `ms` in all.
   */
  async waitForLines(
    pattern: RegExp,
    count: number,
    ms = 10_000,
  ): Promise<string[]> {
    const deadline = performance.now() + ms;
    const found: string[] = [];
    for (let from = 0; found.length < count;) {
      const line = await this.waitForLine(
        pattern,
        Math.max(0, deadline - performance.now()),
        from,
      );
      from = this.lines.indexOf(line, from) + 1;
      found.push(line);
    }
    return found;
  }

  /** Resolves with how the process ended; rejects if it takes over `ms`. */
  async waitForExit(ms = 10_000): Promise<Exit> {
    return await withTimeout(this.exited, ms, `pid ${this.pid} to exit`);
  }

  /** Ends the process if still running (SIGKILL) and waits for it. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.kill("SIGKILL");
    await this.exited;
  }

  #notify(): void {
    for (const wake of [...this.#waiters]) wake();
  }

  async #readLines(): Promise<void> {
    let partial = "";
    for await (
      const text of this.#child.stdout.pipeThrough(new TextDecoderStream())
    ) {
      const parts = (partial + text).split("\n");
      partial = parts.pop()!;
      this.lines.push(...parts);
      this.#notify();
    }
    if (partial) this.lines.push(partial);
  }

  async #readStderr(): Promise<void> {
    for await (
      const text of this.#child.stderr.pipeThrough(new TextDecoderStream())
    ) {
      this.#stderr += text;
    }
  }
}

/** Every script started and not yet exited: what a test must end. */
const running = new Set<Script>();

/** A server started on port 0, its banner read. */
export class Server extends Script {
  /** The first stdout line. */
  banner = "";
  /** The host from the banner (IPv6 without brackets). */
  host = "";
  /** The real port from the banner. */
  port = 0;
  /** The Unix socket path from the banner, for `--unix`. */
  path = "";

  /** Connects a client to this server (TCP or Unix, as it listens). */
  connect(): Promise<Deno.Conn> {
    return this.path
      ? Deno.connect({ transport: "unix", path: this.path })
      : Deno.connect({ hostname: this.host, port: this.port });
  }
}

/**
 * Starts `script` as a server and resolves once its banner is printed. Unless
 * `args` says where to listen, it listens on port 0.
 */
export async function startServer(
  script: string,
  args: string[] = [],
  options: { detached?: boolean; copyIn?: string; fdLimit?: number } = {},
): Promise<Server> {
  const where = args.some((arg) => arg === "--unix") ||
    /^\d+$/.test(args[0] ?? "");
  const server = new Server(script, where ? args : ["0", ...args], options);
  try {
    server.banner = await server.waitForLine(/./, 15_000);
  } catch (error) {
    await server[Symbol.asyncDispose]();
    throw error;
  }
  const json = server.banner.startsWith("{");
  if (json) {
    const event = JSON.parse(server.banner);
    server.host = event.host ?? "";
    server.port = event.port ?? 0;
    server.path = event.path ?? "";
  } else {
    const match = server.banner.match(
      /^listening on (?:unix:(\S+)|\[?([^\]\s]+?)\]?:(\d+))(?: |$)/,
    );
    assert.ok(match, `not a banner: ${server.banner}`);
    server.path = match[1] ?? "";
    server.host = match[2] ?? "";
    server.port = Number(match[3] ?? 0);
  }
  return server;
}

/** Runs `script ARGS...` to its end (at most `ms`) and returns how it ended. */
export async function runScript(
  script: string,
  args: string[],
  ms = 15_000,
): Promise<Exit & { stdout: string }> {
  await using run = new Script(script, args);
  const exit = await run.waitForExit(ms);
  return { ...exit, stdout: run.lines.join("\n") };
}

/**
 * Registers a test bounded to `ms` that ends, by pid, every process it
 * started, whether it passes, fails or times out.
 */
export function serverTest(
  name: string,
  fn: () => Promise<void>,
  options: { ms?: number; ignore?: boolean } = {},
): void {
  const ms = options.ms ?? 30_000;
  Deno.test({
    name,
    ignore: options.ignore,
    async fn() {
      const before = new Set(running);
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        await Promise.race([
          fn(),
          new Promise<never>((_, reject) => {
            timer = setTimeout(
              () => reject(new Error(`test timed out after ${ms} ms`)),
              ms,
            );
          }),
        ]);
      } finally {
        clearTimeout(timer);
        const started = [...running].filter((script) => !before.has(script));
        await Promise.all(
          started.map((script) => script[Symbol.asyncDispose]()),
        );
      }
    },
  });
}

// ---------------------------------------------------------------------------
// Sockets and bytes
// ---------------------------------------------------------------------------

/** Rejects with "timed out waiting for WHAT" if `promise` takes over `ms`. */
export async function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`timed out waiting for ${what} (${ms} ms)`)),
          ms,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Resolves true if `promise` settles within `ms`, false if not. For asserting
 * that something does *not* happen (a waiting client gets no echo), where no
 * event exists to await and a bounded wait is the only witness.
 */
export async function settlesWithin(
  promise: Promise<unknown>,
  ms: number,
): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const settled = await Promise.race([
    promise.then(() => true, () => true),
    new Promise<boolean>((resolve) =>
      timer = setTimeout(() => resolve(false), ms)
    ),
  ]);
  clearTimeout(timer);
  return settled;
}

/** Writes all of `bytes`. */
export async function writeAll(
  conn: Deno.Conn,
  bytes: Uint8Array,
): Promise<void> {
  for (let off = 0; off < bytes.length;) {
    off += await conn.write(bytes.subarray(off));
  }
}

/** Reads exactly `n` bytes; rejects if the stream ends first. */
export async function readExactly(
  conn: Deno.Conn,
  n: number,
): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  for (let off = 0; off < n;) {
    const got = await conn.read(out.subarray(off));
    if (got === null) {
      throw new Error(`stream ended after ${off} of ${n} bytes`);
    }
    off += got;
  }
  return out;
}

/** Reads until the peer closes; returns everything read. */
export async function readToEnd(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    chunks.push(buffer.slice(0, n));
  }
  return concat(chunks);
}

/** Joins byte arrays. */
export function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(
    chunks.reduce((sum, chunk) => sum + chunk.length, 0),
  );
  let off = 0;
  for (const chunk of chunks) {
    out.set(chunk, off);
    off += chunk.length;
  }
  return out;
}

/** Sends `bytes` and resolves with the echo of exactly as many bytes. */
export async function roundTrip(
  conn: Deno.Conn,
  bytes: Uint8Array,
): Promise<Uint8Array> {
  const [echoed] = await Promise.all([
    readExactly(conn, bytes.length),
    writeAll(conn, bytes),
  ]);
  return echoed;
}

/** Sends `text` and resolves with the echoed text. */
export async function roundTripText(
  conn: Deno.Conn,
  text: string,
): Promise<string> {
  return new TextDecoder().decode(
    await roundTrip(conn, new TextEncoder().encode(text)),
  );
}

/**
 * `size` bytes of a repeatable pseudo-random pattern (xorshift32 from `seed`),
 * every byte value included: data that a dropped, duplicated or reordered
 * chunk cannot match by chance.
 */
export function pattern(size: number, seed = 1): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Asserts two byte arrays are equal, naming the first differing offset. */
export function assertSameBytes(
  actual: Uint8Array,
  expected: Uint8Array,
  what = "echo",
): void {
  const n = Math.min(actual.length, expected.length);
  let i = 0;
  while (i < n && actual[i] === expected[i]) i++;
  if (i < n || actual.length !== expected.length) {
    assert.fail(
      `${what}: ${actual.length} bytes instead of ${expected.length}, first difference at ${i}`,
    );
  }
}

/**
 * Streams `bytes` to the server while reading the echo concurrently, and
 * asserts the echo is byte-identical. Half-closes after writing and requires
 * the server to close after the last byte.
 */
export async function streamAndCheck(
  conn: Deno.Conn,
  bytes: Uint8Array,
): Promise<void> {
  const writing = (async () => {
    const chunk = 64 * 1024;
    for (let off = 0; off < bytes.length; off += chunk) {
      await writeAll(conn, bytes.subarray(off, off + chunk));
    }
    await conn.closeWrite();
  })();
  const [echoed] = await Promise.all([readToEnd(conn), writing]);
  assertSameBytes(echoed, bytes);
}

/**
 * Connects `count` clients and, while all of them stay connected, has every
 * one send and check an echo, `rounds` times: a server that serves clients one
 * at a time cannot pass.
 */
export async function talkAtOnce(
  server: Server,
  count: number,
  rounds = 3,
): Promise<void> {
  const clients = await Promise.all(
    Array.from({ length: count }, () => server.connect()),
  );
  try {
    for (let round = 0; round < rounds; round++) {
      const echoes = await Promise.all(
        clients.map((conn, i) => roundTripText(conn, `${round}:${i}`)),
      );
      echoes.forEach((echo, i) => assert.equal(echo, `${round}:${i}`));
    }
  } finally {
    clients.forEach((conn) => conn.close());
  }
}

/**
 * For a server started with `--max-conns 2`: two clients are served, a third
 * one is connected (in the backlog) but gets no echo until one of the first
 * two leaves. `whileWaiting` runs while the third waits (to count children or
 * workers, say), `onceServed` once the third has been served.
 */
export async function assertThirdClientWaits(
  server: Server,
  whileWaiting?: () => Promise<void>,
  onceServed?: () => Promise<void>,
): Promise<void> {
  using first = await server.connect();
  using second = await server.connect();
  assert.equal(await roundTripText(first, "1"), "1");
  assert.equal(await roundTripText(second, "2"), "2");
  using third = await server.connect(); // waits in the backlog, not refused
  const thirdEcho = roundTripText(third, "3");
  assert.equal(
    await settlesWithin(thirdEcho, 500),
    false,
    "third client served over the limit",
  );
  assert.equal(await roundTripText(second, "2 again"), "2 again");
  await whileWaiting?.();
  first.close();
  assert.equal(await thirdEcho, "3");
  await onceServed?.(); // the first client's resources, say, are gone by now
}

/** Resolves with the process's resident set size, in KiB (Linux /proc). */
export async function rssKiB(
  pid: number,
  field: "VmRSS" | "VmHWM" = "VmRSS",
): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const match = status.match(new RegExp(`^${field}:\\s+(\\d+) kB`, "m"));
  assert.ok(match, `no ${field} in /proc/${pid}/status`);
  return Number(match[1]);
}

/** Asserts stderr is one-line-reason shaped: no stack trace, no panic. */
export function assertNoStackTrace(stderr: string): void {
  assert.doesNotMatch(
    stderr,
    /^\s+at |Uncaught|panicked|Stack backtrace/m,
    stderr,
  );
}

// ---------------------------------------------------------------------------
// Processes (Linux /proc)
// ---------------------------------------------------------------------------

/** The pids of `pid`'s children, zombies included, sorted; [] once it is gone. */
export async function childrenOf(pid: number): Promise<number[]> {
  const pids: number[] = [];
  try {
    for await (const task of Deno.readDir(`/proc/${pid}/task`)) {
      const text = await Deno.readTextFile(
        `/proc/${pid}/task/${task.name}/children`,
      )
        .catch(() => "");
      pids.push(...text.split(" ").filter(Boolean).map(Number));
    }
  } catch { /* the process is gone */ }
  return pids.sort((a, b) => a - b);
}

/** `pid` and all its descendants. */
export async function processTree(pid: number): Promise<number[]> {
  const pids = [pid];
  for (const child of await childrenOf(pid)) {
    pids.push(...await processTree(child));
  }
  return pids;
}

/** The state letter of a process (R, S, Z...), or undefined when it is gone. */
export async function processState(pid: number): Promise<string | undefined> {
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2)[0];
  } catch {
    return undefined;
  }
}

/**
 * Polls `check` until it returns something truthy, and resolves with that;
 * rejects after `ms`. Only for what no event announces to an outside observer
 * (a process gone, a thread ended, a port refusing).
 */
export async function eventually<T>(
  check: () => Promise<T> | T,
  ms: number,
  what: string,
): Promise<T> {
  const deadline = performance.now() + ms;
  for (;;) {
    const result = await check();
    if (result) return result;
    if (performance.now() > deadline) {
      throw new Error(`timed out waiting for ${what} (${ms} ms)`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * Starts `script` under `ulimit -n fdLimit` and has three times as many
 * clients as fit (`knownFit`, or what its log says; at least 6) each stream 8 KiB and check the
 * echo, all at once: every one must be served byte-exact, none closed unserved,
 * and the server must still answer afterwards. Returns how many fit.
 */
export async function assertServedBeyondFdLimit(
  script: string,
  args: string[],
  fdLimit: number,
  knownFit?: number,
): Promise<number> {
  await using server = await startServer(script, args, { fdLimit });
  let fits = knownFit;
  if (fits === undefined) {
    const note = await server.waitForLine(/lowered to \d+|"event":"max-conns"/);
    fits = Number(
      note.match(/lowered to (\d+)|"maxConns":(\d+)/)!.slice(1)
        .find(Boolean),
    );
  }
  const clients = Math.max(6, 3 * fits);
  await Promise.all(
    Array.from({ length: clients }, async (_, i) => {
      using conn = await server.connect();
      await streamAndCheck(conn, pattern(8 * 1024, i + 1));
    }),
  );
  using last = await server.connect();
  assert.equal(await roundTripText(last, "alive\n"), "alive\n");
  assert.doesNotMatch(server.stderr, /panic/i);
  return fits;
}

/**
 * A Ctrl-C at the terminal: SIGINT to the whole process group of a pool run
 * as a shell's job (its own group) drains as SIGINT to the parent does: the
 * connected clients keep their echoes, it exits 0, and no line matches
 * `unexpected` (a worker killed or restarted).
 */
export async function assertCtrlCDrains(
  script: string,
  args: string[],
  unexpected: RegExp,
): Promise<void> {
  await using server = await startServer(script, [...args, "--grace", "20"], {
    detached: true,
  });
  const clients = await Promise.all([server.connect(), server.connect()]);
  for (const conn of clients) {
    assert.equal(await roundTripText(conn, "before"), "before");
  }
  Deno.kill(-server.pid, "SIGINT");
  await server.waitForLine(/stopping/);
  for (const conn of clients) {
    assert.equal(await roundTripText(conn, "during"), "during");
    conn.close();
  }
  const exit = await server.waitForExit();
  assert.equal(exit.code, 0, exit.stderr);
  assert.doesNotMatch(server.lines.join("\n"), unexpected);
}

/**
 * After a SIGKILL of pool worker `victim`: the parent logs it with "restarting
 * in", a replacement listens, the workers are then `survivor` and it, and the
 * victim is reaped, each line within `ms`. Resolves with the replacement's pid.
 */
export async function replacementOf(
  server: Server,
  victim: number,
  survivor: number,
  ms = 10_000,
): Promise<number> {
  const restarting = await server.waitForLine(
    new RegExp(`\\(pid ${victim}\\) killed by SIGKILL .*; restarting in`),
    ms,
  );
  const listening = await server.waitForLine(
    /\) listening$/,
    ms,
    server.lines.indexOf(restarting),
  );
  const replacement = Number(listening.match(/\(pid (\d+)\)/)![1]);
  assert.deepEqual(
    await childrenOf(server.pid),
    [survivor, replacement].sort((a, b) => a - b),
  );
  assert.equal(await processState(victim), undefined, "victim not reaped");
  return replacement;
}

/** The pid of the pool worker that served `conn`, from its "connected" line. */
export async function servedBy(
  server: Server,
  conn: Deno.Conn,
): Promise<number> {
  const port = (conn.localAddr as Deno.NetAddr).port;
  const line = await server.waitForLine(new RegExp(`:${port} connected`));
  return Number(line.match(/^\[pid (\d+) worker \d+\]/)![1]);
}

/**
 * A pool's two-phase stop, seen from outside: with `count` clients connected,
 * `signal` makes the parent log "stopping (SIGNAL)" only once no worker
 * accepts (the next connect is refused), the clients still get their echoes,
 * and the pool exits 0, long before its grace period is over.
 */
export async function assertPoolStopsOn(
  server: Server,
  signal: Deno.Signal,
  count = 4,
): Promise<void> {
  const clients = await Promise.all(
    Array.from({ length: count }, () => server.connect()),
  );
  for (const conn of clients) {
    assert.equal(await roundTripText(conn, "before"), "before");
  }
  const from = server.lines.length;
  server.kill(signal);
  assert.match(
    await server.waitForLine(/stopping/, 10_000, from),
    new RegExp(`^\\[pid ${server.pid}\\] stopping \\(${signal}\\)`),
  );
  await assert.rejects(server.connect(), Deno.errors.ConnectionRefused);
  for (const conn of clients) {
    assert.equal(await roundTripText(conn, "during"), "during");
    conn.close();
  }
  const exit = await server.waitForExit();
  assert.equal(exit.code, 0, exit.stderr);
  assert.equal(exit.signal, null);
}

/** True when nothing listens on 127.0.0.1:`port` any more. */
export async function refuses(port: number): Promise<boolean> {
  try {
    (await Deno.connect({ hostname: "127.0.0.1", port })).close();
    return false;
  } catch (error) {
    return error instanceof Deno.errors.ConnectionRefused;
  }
}

/**
 * After a pool's parent was SIGKILLed: its orphaned `workers` stop accepting
 * at once, still serve `client`, and exit once it leaves (reparented, they
 * may linger as zombies of pid 1, which hold no socket).
 */
export async function assertOrphansDrain(
  port: number,
  client: Deno.Conn,
  workers: number[],
): Promise<void> {
  await eventually(() => refuses(port), 5000, "the port to refuse");
  assert.equal(await roundTripText(client, "orphaned"), "orphaned");
  client.close();
  await eventually(
    async () =>
      (await Promise.all(workers.map(processState))).every((state) =>
        state === undefined || state === "Z"
      ),
    10_000,
    "the workers to exit",
  );
}
