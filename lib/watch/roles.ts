/**
 * What a process of a server is for, as far as its command line tells: the
 * one table of markers watch.ts knows, then its place in the tree. Markers
 * change as scripts do; a process no marker matches still gets a role from
 * where it sits and what it holds.
 *
 * @module
 */

/** main (alone), parent (has children), worker, child (per client), helper. */
export type Role = "main" | "parent" | "worker" | "child" | "helper";

/** Command-line arguments that name a role (any argument that matches). */
const ARGUMENTS: [RegExp, Role][] = [
  // This collection's scripts start their copies as `SCRIPT --role NAME`
  // (lib/role.ts); forked.ts's watchdog is lifeline.ts in its role.
  [/^--role=.*(watchdog|helper)/, "helper"],
  [/^--role=.*child/, "child"],
  [/^--role=.*worker/, "worker"],
];

/** Environment variable names that name a role. */
const ENVIRONMENT: [RegExp, Role][] = [
  [/^NODE_UNIQUE_ID$/, "worker"], // any node:cluster worker
];

/** What a process's place says when no marker does. */
export interface Place {
  isRoot: boolean;
  hasChildren: boolean;
  /** It holds a listening socket of the server: it accepts. */
  holdsListener: boolean;
}

/** The role of a process from its arguments, environment names and place. */
export function roleOf(argv: string[], env: string[], place: Place): Role {
  if (place.isRoot) return place.hasChildren ? "parent" : "main";
  // `--role NAME` as two arguments reads as `--role=NAME`.
  const args = argv.map((arg, i) =>
    arg === "--role" && i + 1 < argv.length ? `--role=${argv[i + 1]}` : arg
  );
  for (const [pattern, role] of ARGUMENTS) {
    if (args.some((arg) => pattern.test(arg))) return role;
  }
  for (const [pattern, role] of ENVIRONMENT) {
    if (env.some((name) => pattern.test(name))) return role;
  }
  return place.holdsListener ? "worker" : "child";
}
