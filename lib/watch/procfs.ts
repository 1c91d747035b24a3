/**
 * Reading Linux's /proc for watch.ts: the kernel's socket tables
 * (/proc/net/tcp, tcp6, unix) and, per process, its sockets (fd links), CPU
 * time, memory, threads and command line. Every reader returns undefined (or
 * empty) for a process that has exited meanwhile, and throws
 * `Deno.errors.PermissionDenied` only where watch.ts must tell the user.
 *
 * @module
 */

/** A TCP socket as /proc/net/tcp{,6} shows it. */
export interface TcpSocket {
  /** `127.0.0.1:8080`, `[::1]:8080`. */
  local: string;
  localPort: number;
  remote: string;
  /** Kernel state: 0x0A is LISTEN, 0x01 ESTABLISHED (proc(5), tcp_states.h). */
  state: number;
  /** Send-Q: bytes sent and not yet acknowledged. */
  txQueue: number;
  /** Recv-Q; for a listener, the connections waiting in its accept queue. */
  rxQueue: number;
  /** 0 while no process holds it: a connection not yet accepted. */
  inode: number;
  uid: number;
}

/** A Unix stream socket as /proc/net/unix shows it. */
export interface UnixSocket {
  path: string;
  listening: boolean;
  inode: number;
}

export const LISTEN = 0x0a;

/**
 * The TCP sockets of this network namespace, IPv4 and IPv6: those whose
 * local port is `port`, or, without one, the listening ones. A busy machine
 * has thousands of lines; only the wanted ones are parsed.
 */
export function tcpSockets(port?: number): TcpSocket[] {
  const sockets: TcpSocket[] = [];
  const hexPort = port?.toString(16).toUpperCase().padStart(4, "0");
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text = "";
    try {
      text = Deno.readTextFileSync(file);
    } catch { /* no IPv6 in this kernel */ }
    // Each line: "sl: LOCAL:PORT REMOTE:PORT ST TX:RX ... UID TIMEOUT INODE".
    // The text's own search finds the lines wanted: ":PORT " (local or
    // remote) or " 0A " (the state LISTEN: no other field holds letters and
    // blanks so).
    const needle = hexPort === undefined ? " 0A " : `:${hexPort} `;
    for (let hit = text.indexOf(needle); hit >= 0;) {
      const start = text.lastIndexOf("\n", hit) + 1;
      const next = text.indexOf("\n", hit);
      const end = next < 0 ? text.length : next;
      hit = text.indexOf(needle, end);
      const line = text.slice(start, end);
      const local = line.indexOf(":", line.indexOf(": ") + 2);
      if (
        hexPort !== undefined &&
        line.slice(local + 1, local + 6) !== `${hexPort} `
      ) {
        continue; // the remote port: the client's end
      }
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      const [tx, rx] = f[4].split(":");
      const address = parseAddress(f[1]);
      sockets.push({
        local: address.text,
        localPort: address.port,
        remote: parseAddress(f[2]).text,
        state: parseInt(f[3], 16),
        txQueue: parseInt(tx, 16),
        rxQueue: parseInt(rx, 16),
        uid: Number(f[7]),
        inode: Number(f[9]),
      });
    }
  }
  return sockets;
}

/** `0100007F:1F90` (IPv4) or 32 hex digits (IPv6), as the kernel prints. */
function parseAddress(hex: string): { text: string; port: number } {
  const [ip, portHex] = hex.split(":");
  const port = parseInt(portHex, 16);
  // The kernel prints each 32-bit word in host order (little-endian here).
  const bytes: number[] = [];
  for (let w = 0; w < ip.length; w += 8) {
    const word = ip.slice(w, w + 8);
    for (let b = 6; b >= 0; b -= 2) {
      bytes.push(parseInt(word.slice(b, b + 2), 16));
    }
  }
  if (bytes.length === 4) return { text: `${bytes.join(".")}:${port}`, port };
  const mapped = bytes.slice(0, 10).every((b) => b === 0) &&
    bytes[10] === 0xff && bytes[11] === 0xff;
  if (mapped) return { text: `${bytes.slice(12).join(".")}:${port}`, port };
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) {
    groups.push(((bytes[i] << 8) | bytes[i + 1]).toString(16));
  }
  return { text: `[${compress(groups)}]:${port}`, port };
}

/** IPv6 groups as text, the longest run of zero groups as "::" (RFC 5952). */
function compress(groups: string[]): string {
  let [best, bestLength] = [-1, 1];
  for (let i = 0; i < groups.length;) {
    let j = i;
    while (j < groups.length && groups[j] === "0") j++;
    if (j - i > bestLength) [best, bestLength] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  if (best < 0) return groups.join(":");
  const head = groups.slice(0, best).join(":");
  const tail = groups.slice(best + bestLength).join(":");
  return `${head}::${tail}`;
}

/** Every Unix stream socket bound to a path (listeners and their clients). */
export function unixSockets(): UnixSocket[] {
  const sockets: UnixSocket[] = [];
  let text = "";
  try {
    text = Deno.readTextFileSync("/proc/net/unix");
  } catch { /* not Linux */ }
  for (const line of text.split("\n").slice(1)) {
    // Num RefCount Protocol Flags Type St Inode Path
    const f = line.trim().split(/\s+/);
    if (f.length < 8 || f[4] !== "0001") continue; // SOCK_STREAM with a path
    sockets.push({
      path: f.slice(7).join(" "),
      listening: f[3] === "00010000", // __SO_ACCEPTCON
      inode: Number(f[6]),
    });
  }
  return sockets;
}

/** A process's open file descriptors, by number ([] once it has exited). */
export function fds(pid: number): string[] {
  try {
    return [...Deno.readDirSync(`/proc/${pid}/fd`)].map((entry) => entry.name);
  } catch (error) {
    if (error instanceof Deno.errors.PermissionDenied) throw error;
    return []; // exited
  }
}

/**
 * The socket inodes a process holds: those of its descriptors `names` (all,
 * by default) that are `socket:[INODE]` links.
 */
export function socketInodes(pid: number, names = fds(pid)): number[] {
  const inodes: number[] = [];
  for (const name of names) {
    try {
      const link = Deno.readLinkSync(`/proc/${pid}/fd/${name}`);
      if (link.startsWith("socket:[")) inodes.push(Number(link.slice(8, -1)));
    } catch { /* closed meanwhile */ }
  }
  return inodes;
}

/** What /proc/PID/stat (or .../task/TID/stat) says, in the units we use. */
export interface Stat {
  name: string;
  ppid: number;
  /** utime + stime, in clock ticks. */
  cpuTicks: number;
  /** Start time, in clock ticks after boot: tells a reused pid apart. */
  start: number;
}

/** /proc/PID/stat (or `PID/task/TID`), or undefined once it has exited. */
export function stat(path: string): Stat | undefined {
  let text;
  try {
    text = Deno.readTextFileSync(`/proc/${path}/stat`);
  } catch {
    return undefined;
  }
  // The name is in parentheses and may itself hold spaces and parentheses.
  const close = text.lastIndexOf(")");
  const f = text.slice(close + 2).split(" ");
  return {
    name: text.slice(text.indexOf("(") + 1, close),
    ppid: Number(f[1]),
    cpuTicks: Number(f[11]) + Number(f[12]),
    start: Number(f[19]),
  };
}

/**
 * Clock ticks per second of /proc times: USER_HZ, which Linux fixes at 100
 * for user space on every architecture (`getconf CLK_TCK`).
 */
export const TICKS_PER_SECOND = 100;

/** Seconds since boot (/proc/uptime). */
export function uptime(): number {
  return Number(Deno.readTextFileSync("/proc/uptime").split(" ")[0]);
}

/** Resident memory (KiB) and owner uid from /proc/PID/status. */
export function status(
  pid: number,
): { rssKiB: number; uid: number } | undefined {
  let text;
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/status`);
  } catch {
    return undefined;
  }
  return {
    rssKiB: Number(text.match(/^VmRSS:\s+(\d+)/m)?.[1] ?? 0), // 0: a zombie
    uid: Number(text.match(/^Uid:\s+(\d+)/m)?.[1] ?? -1),
  };
}

/** The command line's arguments ([] for a kernel thread or a gone process). */
export function cmdline(pid: number): string[] {
  try {
    const text = Deno.readTextFileSync(`/proc/${pid}/cmdline`);
    return text.split("\0").filter((arg, i, all) =>
      arg !== "" || i < all.length - 1
    );
  } catch {
    return [];
  }
}

/** The names of a process's environment variables ([] if not ours to read). */
export function environNames(pid: number): string[] {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/environ`).split("\0")
      .map((entry) => entry.slice(0, entry.indexOf("=")));
  } catch {
    return [];
  }
}

/** The thread ids of a process. */
export function tasks(pid: number): number[] {
  try {
    return [...Deno.readDirSync(`/proc/${pid}/task`)].map((t) =>
      Number(t.name)
    );
  } catch {
    return [];
  }
}

/** The pids of a process's children (every thread's). */
export function children(pid: number): number[] {
  const found: number[] = [];
  for (const tid of tasks(pid)) {
    try {
      const text = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/children`);
      for (const child of text.split(" ")) if (child) found.push(Number(child));
    } catch { /* exited */ }
  }
  return found;
}

/** Every process id on the machine. */
export function allPids(): number[] {
  const pids: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (/^\d+$/.test(entry.name)) pids.push(Number(entry.name));
  }
  return pids;
}

/** The user name of `uid`, from /etc/passwd, or `uid N`. */
export function userName(uid: number): string {
  try {
    for (const line of Deno.readTextFileSync("/etc/passwd").split("\n")) {
      const [name, , id] = line.split(":");
      if (Number(id) === uid && line) return name;
    }
  } catch { /* no passwd file */ }
  return `uid ${uid}`;
}
