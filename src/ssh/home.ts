// Where a path from inside the target root really is. Home directories may
// sit behind symlinks (Fedora Atomic's /home -> var/home); with --root DIR
// such a link, when absolute, must be read as relative to DIR, never to the
// host's "/", or a scratch root would send us writing into the host.
import * as fs from "node:fs";
import { join, resolve } from "node:path";

// The kernel's own limit on symlinks followed in one lookup.
const MAX_LINKS = 40;

export class PathNotFound extends Error {}

/**
 * `path` (absolute, inside `root`) with every symlink resolved as if `root`
 * were "/": absolute targets restart at `root`, ".." never climbs above it.
 * Throws PathNotFound when a component is missing.
 */
export function resolveInRoot(root: string, path: string): string {
  const base = resolve(root);
  const todo = path.split("/").filter((c) => c !== "" && c !== ".");
  const done: string[] = [];
  let links = 0;
  while (todo.length > 0) {
    const c = todo.shift()!;
    if (c === "..") {
      done.pop();
      continue;
    }
    const p = join(base, ...done, c);
    let st: fs.Stats;
    try {
      st = fs.lstatSync(p);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ENOTDIR") throw new PathNotFound(`${p} does not exist`);
      throw e;
    }
    if (st.isSymbolicLink()) {
      if (++links > MAX_LINKS) throw new Error(`${join(base, path)}: too many symlinks`);
      const target = fs.readlinkSync(p);
      if (target.startsWith("/")) done.length = 0;
      todo.unshift(...target.split("/").filter((x) => x !== "" && x !== "."));
      continue;
    }
    done.push(c);
  }
  return join(base, ...done);
}
