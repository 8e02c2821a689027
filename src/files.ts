// Careful file operations for a process that runs as root on a machine it
// must never make worse: writes are atomic (temp file, fsync, rename, fsync
// of the directory), nothing follows a symlink it did not create, and
// owners and modes are set on the file descriptor, not on a path that could
// have been swapped.
import * as fs from "node:fs";
import { basename, dirname, join } from "node:path";
import { randomBytes } from "node:crypto";

const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_APPEND, O_NOFOLLOW, O_DIRECTORY } = fs.constants;

/** A file operation refused for safety; the message says why. */
export class FileRefused extends Error {}

export interface Ownership {
  mode: number;
  uid?: number;
  gid?: number;
}

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException)?.code;
}

/** lstat that returns null for a missing path. */
export function lstatOrNull(path: string): fs.Stats | null {
  try {
    return fs.lstatSync(path);
  } catch (e) {
    if (errno(e) === "ENOENT" || errno(e) === "ENOTDIR") return null;
    throw e;
  }
}

function describe(st: fs.Stats): string {
  if (st.isSymbolicLink()) return "a symlink";
  if (st.isDirectory()) return "a directory";
  if (st.isFile()) return "a regular file";
  return "not a regular file";
}

/** Refuse unless `path` is missing or a regular file (not a symlink). */
export function requireRegularOrMissing(path: string): fs.Stats | null {
  const st = lstatOrNull(path);
  if (st && !st.isFile()) throw new FileRefused(`${path} is ${describe(st)}; refusing to replace it`);
  return st;
}

/**
 * Read a regular file without following a symlink, at most `max` bytes.
 * Returns null when the file does not exist.
 */
export function readFileSafe(path: string, max = 1 << 20): Buffer | null {
  let fd: number;
  try {
    fd = fs.openSync(path, O_RDONLY | O_NOFOLLOW);
  } catch (e) {
    if (errno(e) === "ENOENT") return null;
    if (errno(e) === "ELOOP") throw new FileRefused(`${path} is a symlink; refusing to read through it`);
    throw e;
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new FileRefused(`${path} is ${describe(st)}`);
    if (st.size > max) throw new FileRefused(`${path} is ${st.size} bytes, over the limit of ${max}`);
    const buf = Buffer.alloc(st.size);
    let off = 0;
    while (off < buf.length) {
      const n = fs.readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off);
  } finally {
    fs.closeSync(fd);
  }
}

function tempName(target: string): string {
  return join(dirname(target), `.${basename(target)}.imds-init-${randomBytes(6).toString("hex")}`);
}

/**
 * Remove temp files an earlier, interrupted write of `target` left behind.
 * Only names of our own pattern are touched; unlink never follows a symlink.
 */
export function removeStaleTemps(target: string): void {
  const prefix = `.${basename(target)}.imds-init-`;
  let names: string[];
  try {
    names = fs.readdirSync(dirname(target));
  } catch {
    return;
  }
  for (const name of names) {
    if (name.startsWith(prefix) && /^[0-9a-f]{12}$/.test(name.slice(prefix.length))) {
      try {
        fs.unlinkSync(join(dirname(target), name));
      } catch {
        // best effort: a leftover temp file never affects the real one
      }
    }
  }
}

/** write(2) until every byte is written: a short write is not an error. */
export function writeAll(fd: number, data: Buffer): void {
  let off = 0;
  while (off < data.length) off += fs.writeSync(fd, data, off, data.length - off);
}

function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, O_RDONLY | O_DIRECTORY);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Replace `target` with `data` atomically: a reader sees the old file or the
 * new one, never a mix, even if the process is killed or the power fails.
 * Refuses when `target` exists and is not a regular file (a symlink above
 * all). The parent directory must exist and must not be a symlink.
 */
export function writeFileAtomic(target: string, data: string | Buffer, own: Ownership): void {
  const dir = dirname(target);
  const dst = lstatOrNull(dir);
  if (!dst) throw new FileRefused(`${dir} does not exist`);
  if (!dst.isDirectory()) throw new FileRefused(`${dir} is ${describe(dst)}; refusing to write into it`);
  replaceFile(target, data, own);
  fsyncDir(dir);
}

/**
 * writeFileAtomic for `name` inside the directory open as `dirFd`. Every path
 * goes through /proc/self/fd/N, which names that very directory whatever
 * happens to its name: a directory someone else owns (a user's ~/.ssh) can be
 * renamed or swapped for a symlink between our checks and the rename, and the
 * file must still land in the directory that was checked. Needs /proc.
 */
export function writeFileAtomicIn(dirFd: number, name: string, data: string | Buffer, own: Ownership): void {
  if (name === "" || name === "." || name === ".." || name.includes("/")) throw new Error(`not a file name: ${JSON.stringify(name)}`);
  replaceFile(`/proc/self/fd/${dirFd}/${name}`, data, own);
  fs.fsyncSync(dirFd);
}

// The temp file, fsync and rename of an atomic write; the caller has checked
// the directory and fsyncs it afterwards.
function replaceFile(target: string, data: string | Buffer, own: Ownership): void {
  requireRegularOrMissing(target);
  removeStaleTemps(target);
  const tmp = tempName(target);
  const fd = fs.openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, own.mode & 0o777);
  try {
    try {
      writeAll(fd, typeof data === "string" ? Buffer.from(data) : data);
      if (own.uid !== undefined || own.gid !== undefined) fs.fchownSync(fd, own.uid ?? -1, own.gid ?? -1);
      fs.fchmodSync(fd, own.mode); // the umask must not decide the mode
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    // Checked again right before the rename: a symlink planted meanwhile is
    // replaced by rename, never followed, but we would rather not replace it.
    requireRegularOrMissing(target);
    fs.renameSync(tmp, target);
  } catch (e) {
    try {
      fs.unlinkSync(tmp);
    } catch {
      // already renamed or never created
    }
    throw e;
  }
}

/**
 * Make sure `path` is a real directory (not a symlink) with the given owner
 * and mode, creating it when missing. Returns what it had to change.
 */
export function ensureDir(path: string, own: Ownership): string[] {
  const changes: string[] = [];
  let st = lstatOrNull(path);
  if (!st) {
    try {
      mkdirWithParents(path, own.mode & 0o777);
      changes.push("created");
    } catch (e) {
      if (errno(e) !== "EEXIST") throw e;
    }
    st = lstatOrNull(path);
  }
  if (!st) throw new FileRefused(`${path} vanished while being created`);
  if (!st.isDirectory()) throw new FileRefused(`${path} is ${describe(st)}; refusing to use it`);
  let fd: number;
  try {
    fd = fs.openSync(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  } catch (e) {
    if (errno(e) === "ELOOP" || errno(e) === "ENOTDIR") throw new FileRefused(`${path} changed into a symlink; refusing to use it`);
    throw e;
  }
  try {
    const fst = fs.fstatSync(fd);
    if ((own.uid !== undefined && fst.uid !== own.uid) || (own.gid !== undefined && fst.gid !== own.gid)) {
      fs.fchownSync(fd, own.uid ?? -1, own.gid ?? -1);
      if (!changes.includes("created")) changes.push(`owner ${fst.uid}:${fst.gid} -> ${own.uid ?? fst.uid}:${own.gid ?? fst.gid}`);
    }
    if ((fst.mode & 0o7777) !== own.mode) {
      fs.fchmodSync(fd, own.mode);
      if (!changes.includes("created")) changes.push(`mode ${(fst.mode & 0o7777).toString(8)} -> ${own.mode.toString(8)}`);
    }
  } finally {
    fs.closeSync(fd);
  }
  return changes;
}

/**
 * Open `path` for appending, creating it with `mode` when missing; refuses a
 * symlink. The caller owns the returned descriptor.
 */
export function openAppend(path: string, mode: number): number {
  const open = () => fs.openSync(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW, mode);
  try {
    try {
      return open();
    } catch (e) {
      if (errno(e) !== "ENOENT") throw e;
      mkdirWithParents(dirname(path), 0o755, true);
      return open();
    }
  } catch (e) {
    if (errno(e) === "ELOOP") throw new FileRefused(`${path} is a symlink; refusing to write through it`);
    throw e;
  }
}

/**
 * mkdir `path`; missing parents (a bare --root without /var/lib or /var/log)
 * are created 0755 like `mkdir -p`, as a package would have shipped them.
 */
function mkdirWithParents(path: string, mode: number, existingOk = false): void {
  try {
    fs.mkdirSync(path, { mode });
  } catch (e) {
    if (errno(e) === "EEXIST" && existingOk) return;
    if (errno(e) !== "ENOENT") throw e;
    fs.mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
    fs.mkdirSync(path, { mode });
  }
}

/** Create `path` exclusively (it must not exist), write, fsync, close. */
export function writeFileExclusive(path: string, data: Buffer, mode: number): void {
  const fd = fs.openSync(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode & 0o777);
  try {
    writeAll(fd, data);
    fs.fchmodSync(fd, mode);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
