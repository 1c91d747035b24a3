/**
 * Which copy of a script this is: the one way every script that runs itself
 * again (a child per client, a pool worker, the watchdog) tells its copies
 * apart. Deno cannot fork(), so a copy is the same file run with `--role
 * NAME` first; a copy in a Web Worker is told by its global scope. Each
 * script asks {@linkcode role} once, right after its imports.
 *
 * @module
 */
/** The flag that names a copy's role: `script.ts --role child ...`. */
const ROLE_FLAG = "--role";

/**
 * `"main"` for the script the user ran, `"thread"` in a Web Worker, or the
 * NAME of `--role NAME` for a copy started by {@linkcode runAgain}.
 */
export function role(args: string[] = Deno.args): string {
  if ("WorkerGlobalScope" in globalThis) return "thread";
  return args[0] === ROLE_FLAG && args[1] ? args[1] : "main";
}

/** The arguments that start a copy in `name`'s role: `--role NAME`. */
export function asRole(name: string): string[] {
  return [ROLE_FLAG, name];
}

/** A copy's own arguments: what follows `--role NAME`. */
export function roleArgs(args: string[] = Deno.args): string[] {
  return args[0] === ROLE_FLAG ? args.slice(2) : args;
}

/**
 * The `deno` arguments that run `script` (the caller's `import.meta.filename
 * ?? import.meta.url`) again in `name`'s role, with `args`. The copy has only
 * the permissions in `denoFlags`, never prompts, ignores any deno.json.
 */
export function runAgain(
  script: string,
  name: string,
  args: string[],
  denoFlags: string[] = [],
): string[] {
  const run = ["run", "--no-prompt", "--no-config"];
  return [...run, ...denoFlags, script, ...asRole(name), ...args];
}
