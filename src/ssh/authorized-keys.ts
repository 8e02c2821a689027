// A user's ~/.ssh/authorized_keys: which keys it already has, and adding
// the missing ones without losing or rewriting anything that was there.
//
// Decisions:
// - A key is present when some line holds the same type and blob, with or
//   without options before it (recognised the way sshd does: a key at the
//   start of the line, else options up to the first unquoted blank, then
//   the key). Commented-out keys are not present: sshd does not use them.
// - Existing bytes are kept exactly; new lines are appended after a newline
//   is added to a file that lacks a final one. Nothing to add means no
//   write at all (same inode, same mtime).
// - ~/.ssh and authorized_keys are never followed when they are symlinks,
//   to anything: refused, for that user only. A home directory is never
//   created. The home is opened once and everything below it is reached
//   through /proc/self/fd/N, so a user who owns the home cannot swap ~/.ssh
//   for a symlink between our checks and our writes. Without /proc (never
//   the case at boot) plain paths are used, with the same checks.
// - An authorized_keys with more than one hard link is refused: fixing its
//   owner or mode, or reading it, would act on another file too.
// - ~/.ssh becomes 0700 and authorized_keys 0600, both owned by the user;
//   wrong owners and modes are fixed through file descriptors and reported.
import * as fs from "node:fs";
import { join } from "node:path";
import { FileRefused, lstatOrNull, readFileSafe, writeFileAtomic, writeFileAtomicIn } from "../files.ts";
import { under } from "../os.ts";
import type { PasswdUser } from "../passwd.ts";
import { UserError } from "../passwd.ts";
import { resolveInRoot, PathNotFound } from "./home.ts";
import { authorizedKeyLine, isKeyType, keyIdentity, type PublicKey } from "./keys.ts";

const { O_RDONLY, O_DIRECTORY, O_NOFOLLOW, O_NONBLOCK } = fs.constants;

// sshd reads the whole file; a few thousand keys is already extraordinary.
export const MAX_AUTHORIZED_KEYS_BYTES = 4 << 20;
const SSH_DIR_MODE = 0o700;
const KEYS_FILE_MODE = 0o600;

function keyAt(s: string, i: number): string | null {
  const m = /^([A-Za-z0-9@._-]+)[ \t]+([A-Za-z0-9+/]+={0,2})(?=[ \t]|$)/.exec(s.slice(i));
  if (!m || !isKeyType(m[1]!)) return null;
  const blob = Buffer.from(m[2]!, "base64");
  if (blob.length < 4) return null;
  const n = blob.readUInt32BE(0);
  if (4 + n > blob.length || blob.subarray(4, 4 + n).toString("latin1") !== m[1]) return null;
  return keyIdentity(m[1]!, blob);
}

/**
 * The identity (type and blob) of the key on one authorized_keys line, or
 * null for blank lines, comments and lines that hold no key we know.
 */
export function authorizedLineKey(line: string): string | null {
  const s = line.endsWith("\r") ? line.slice(0, -1) : line;
  let i = 0;
  while (s[i] === " " || s[i] === "\t") i++;
  if (i === s.length || s[i] === "#") return null;
  const direct = keyAt(s, i);
  if (direct) return direct;
  // Options: up to the first blank outside double quotes; \" never toggles.
  let quoted = false;
  for (; i < s.length && (quoted || (s[i] !== " " && s[i] !== "\t")); i++) {
    if (s[i] === "\\" && s[i + 1] === '"') i++;
    else if (s[i] === '"') quoted = !quoted;
  }
  if (quoted) return null; // sshd refuses a line with an unterminated quote
  while (s[i] === " " || s[i] === "\t") i++;
  return keyAt(s, i);
}

/** Identities of every key in an authorized_keys file. */
export function presentKeys(data: Buffer): Set<string> {
  const out = new Set<string>();
  // latin1: type and base64 are ASCII; other bytes only need to survive untouched.
  for (const line of data.toString("latin1").split("\n")) {
    const id = authorizedLineKey(line);
    if (id) out.add(id);
  }
  return out;
}

/** `data` with `lines` appended; a missing final newline is added first. */
export function appendLines(data: Buffer, lines: string[]): Buffer {
  const sep = data.length > 0 && data[data.length - 1] !== 0x0a ? "\n" : "";
  return Buffer.concat([data, Buffer.from(sep + lines.map((l) => l + "\n").join(""), "utf8")]);
}

export interface InstallOutcome {
  /** Keys added (or that would be, in a dry run). */
  added: number;
  /** Keys that were already there. */
  present: number;
  /** Owner and mode fixes made (or that would be), each "PATH: what". */
  fixed: string[];
  /** ~/.ssh was missing: created (or would be). */
  created: string | null;
}

let procFds: boolean | undefined;
function haveProcFds(): boolean {
  if (procFds === undefined) {
    try {
      procFds = fs.statSync("/proc/self/fd").isDirectory();
    } catch {
      procFds = false;
    }
  }
  return procFds;
}

function openDir(path: string, shown: string): number {
  try {
    return fs.openSync(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ELOOP" || code === "ENOTDIR") throw new FileRefused(`${shown} changed into a symlink or file; refusing to use it`);
    throw e;
  }
}

function kind(st: fs.Stats): string {
  return st.isSymbolicLink() ? "a symlink" : st.isDirectory() ? "a directory" : st.isFile() ? "a regular file" : "not a regular file";
}

/** Owner and mode changes needed on `st`, as "owner 0:0 -> 1000:1000" and "mode 755 -> 700". */
function ownershipChanges(st: fs.Stats, user: PasswdUser, mode: number): string[] {
  const out: string[] = [];
  if (st.uid !== user.uid || st.gid !== user.gid) out.push(`owner ${st.uid}:${st.gid} -> ${user.uid}:${user.gid}`);
  if ((st.mode & 0o7777) !== mode) out.push(`mode ${(st.mode & 0o7777).toString(8)} -> ${mode.toString(8)}`);
  return out;
}

function fixOwnership(fd: number, user: PasswdUser, mode: number): void {
  fs.fchownSync(fd, user.uid, user.gid);
  fs.fchmodSync(fd, mode);
}

/**
 * Add the missing `keys` to `user`'s authorized_keys under `root`. Throws
 * UserError or FileRefused, with a message naming the user or the path,
 * when the user's files cannot be used safely; nothing is changed then.
 */
export function installKeys(root: string, user: PasswdUser, keys: readonly PublicKey[], dryRun: boolean): InstallOutcome {
  const homeShown = under(root, user.home);
  let home: string;
  try {
    home = resolveInRoot(root, user.home);
  } catch (e) {
    if (e instanceof PathNotFound) throw new UserError(`home directory ${homeShown} of user ${user.name} does not exist; not creating it`);
    throw new UserError(`home directory ${homeShown} of user ${user.name}: ${(e as Error).message}`);
  }
  const hst = fs.lstatSync(home);
  if (!hst.isDirectory()) throw new UserError(`home ${homeShown} of user ${user.name} is ${kind(hst)}, not a directory`);

  const ids = new Set(keys.map((k) => keyIdentity(k.type, k.blob)));
  const fixed: string[] = [];
  const fds: number[] = [];
  try {
    const homeFd = openDir(home, homeShown);
    fds.push(homeFd);
    const proc = haveProcFds();
    const homeRef = proc ? `/proc/self/fd/${homeFd}` : home;

    const sshShown = join(homeShown, ".ssh");
    const sshRef = `${homeRef}/.ssh`;
    const st = lstatOrNull(sshRef);
    if (st && !st.isDirectory()) throw new FileRefused(`${sshShown} is ${kind(st)}; refusing to use it`);
    if (!st) {
      if (dryRun) return { added: ids.size, present: 0, fixed, created: sshShown };
      try {
        fs.mkdirSync(sshRef, { mode: SSH_DIR_MODE });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      }
      fs.fsyncSync(homeFd);
    }
    const sshFd = openDir(sshRef, sshShown);
    fds.push(sshFd);
    const sshChanges = ownershipChanges(fs.fstatSync(sshFd), user, SSH_DIR_MODE);
    if (sshChanges.length > 0 && st) fixed.push(`${sshShown}: ${sshChanges.join(", ")}`); // a new one is set up, not "fixed"

    const akShown = join(sshShown, "authorized_keys");
    const akRef = proc ? `/proc/self/fd/${sshFd}/authorized_keys` : join(home, ".ssh", "authorized_keys");
    const ast = lstatOrNull(akRef);
    let existing: Buffer = Buffer.alloc(0);
    if (ast) {
      if (!ast.isFile()) throw new FileRefused(`${akShown} is ${kind(ast)}; refusing to use it`);
      if (ast.nlink > 1) throw new FileRefused(`${akShown} has ${ast.nlink} hard links; refusing to use it`);
      if (ast.size > MAX_AUTHORIZED_KEYS_BYTES) throw new FileRefused(`${akShown} is ${ast.size} bytes, over ${MAX_AUTHORIZED_KEYS_BYTES}; refusing to use it`);
      existing = readFileSafe(akRef, MAX_AUTHORIZED_KEYS_BYTES) ?? Buffer.alloc(0);
    }
    const have = presentKeys(existing);
    const toAdd: PublicKey[] = [];
    const adding = new Set<string>();
    for (const k of keys) {
      const id = keyIdentity(k.type, k.blob);
      if (have.has(id) || adding.has(id)) continue;
      adding.add(id);
      toAdd.push(k);
    }
    const akChanges = ast ? ownershipChanges(ast, user, KEYS_FILE_MODE) : [];
    if (akChanges.length > 0) fixed.push(`${akShown}: ${akChanges.join(", ")}`);
    const outcome = { added: toAdd.length, present: ids.size - toAdd.length, fixed, created: st ? null : sshShown };
    if (dryRun) return outcome;

    // Every check passed: only now change anything.
    if (sshChanges.length > 0) fixOwnership(sshFd, user, SSH_DIR_MODE);

    if (toAdd.length > 0) {
      const data = appendLines(existing, toAdd.map(authorizedKeyLine));
      const own = { mode: KEYS_FILE_MODE, uid: user.uid, gid: user.gid };
      try {
        if (proc) writeFileAtomicIn(sshFd, "authorized_keys", data, own);
        else writeFileAtomic(akRef, data, own);
      } catch (e) {
        // write(2) and fsync(2) errors (ENOSPC, EIO) name no file: say which.
        if (e instanceof FileRefused || !(e as NodeJS.ErrnoException).code) throw e;
        throw new UserError(`user ${user.name}: cannot write ${akShown}: ${(e as Error).message}`);
      }
    } else if (akChanges.length > 0) {
      // Nothing to add, but the file's owner or mode is wrong: fixed in
      // place (no rewrite), on the very file that was checked.
      const fd = fs.openSync(akRef, O_RDONLY | O_NOFOLLOW | O_NONBLOCK); // a FIFO swapped in must not block the boot
      fds.push(fd);
      const fst = fs.fstatSync(fd);
      if (!fst.isFile() || fst.ino !== ast!.ino || fst.dev !== ast!.dev || fst.nlink > 1)
        throw new FileRefused(`${akShown} changed while being checked; not fixing its owner or mode`);
      fixOwnership(fd, user, KEYS_FILE_MODE);
    }
    return outcome;
  } finally {
    for (const fd of fds.reverse()) fs.closeSync(fd);
  }
}
