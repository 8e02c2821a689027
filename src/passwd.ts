// Users from ROOT/etc/passwd: name, uid, gid, home. Read from the file, not
// through getpwnam, because the target may be a root other than "/" and
// because a boot agent should not depend on NSS modules being ready.
//
// Decisions:
// - Lines of other users may be odd (NIS "+" entries, comments, junk): they
//   are skipped. The wanted user's line must be exactly seven fields with
//   decimal ids and an absolute home, or it is an error for that user.
// - The first line for a name wins, as with the "files" NSS module.
import { paths, under } from "./os.ts";
import { readFileSafe } from "./files.ts";

export interface PasswdUser {
  name: string;
  uid: number;
  gid: number;
  /** As written in passwd, i.e. inside the root. */
  home: string;
}

/** A user that cannot be used; the message names the user and says why. */
export class UserError extends Error {}

// Big directories synced into /etc/passwd reach megabytes; more is not a passwd file.
const MAX_PASSWD_BYTES = 16 << 20;
const ID = /^(0|[1-9][0-9]{0,9})$/;

export class Passwd {
  readonly path: string;
  private readonly lines: string[];

  constructor(path: string, text: string) {
    this.path = path;
    this.lines = text.split("\n");
  }

  /** Read ROOT/etc/passwd (never through a symlink, bounded). */
  static load(root: string): Passwd {
    const path = under(root, paths.passwd);
    const buf = readFileSafe(path, MAX_PASSWD_BYTES);
    if (buf === null) throw new UserError(`${path} does not exist`);
    return new Passwd(path, buf.toString("utf8"));
  }

  /** The user called `name`; UserError when missing or malformed. */
  lookup(name: string): PasswdUser {
    for (let i = 0; i < this.lines.length; i++) {
      const line = this.lines[i]!.replace(/\r$/, "");
      if (!line.startsWith(name + ":")) continue;
      const where = `${this.path} line ${i + 1}`;
      const f = line.split(":");
      if (f.length !== 7) throw new UserError(`user ${name}: malformed entry (${f.length} fields, not 7) at ${where}`);
      const [, , uid, gid, , home] = f as [string, string, string, string, string, string, string];
      if (!ID.test(uid) || !ID.test(gid) || Number(uid) > 0xfffffffe || Number(gid) > 0xfffffffe)
        throw new UserError(`user ${name}: malformed uid or gid at ${where}`);
      if (!home.startsWith("/") || /[\x00-\x1f\x7f]/.test(home) || home.split("/").includes(".."))
        throw new UserError(`user ${name}: home directory ${JSON.stringify(home)} at ${where} is not an absolute path without ".."`);
      return { name, uid: Number(uid), gid: Number(gid), home };
    }
    throw new UserError(`user ${name} does not exist in ${this.path}`);
  }
}
