// One run at a time on a root. Two runs at once (an rc restart while the
// last start's user-data still runs, an admin re-running by hand during
// boot) would each read the state, then overwrite the other's, remove the
// other's temp files as stale, and could both run user-data.
//
// Node has no flock(2), so the lock is a file, created whole with link(2)
// (which fails if it exists), naming its holder by pid, the process's start
// time and the boot id: a holder that died (SIGKILL, power loss) or belongs
// to another boot is seen as gone, even if its pid was reused.
import * as fs from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { paths } from "./os.ts";
import { readFileSafe } from "./files.ts";

export interface Holder {
  pid: number;
  /** Field 22 of /proc/PID/stat: the process's start, in clock ticks after boot. */
  start: string;
  boot: string;
  /** When it took the lock (ISO 8601). */
  since: string;
}

export type Acquired =
  | { kind: "held"; release: () => void }
  /** Another live run held it for the whole wait. */
  | { kind: "busy"; holder: Holder }
  /** The lock could not be taken at all (a read-only or full state directory). */
  | { kind: "error"; error: string };

const POLL_MS = 100;

function readOr(path: string, dflt: string): string {
  try {
    return fs.readFileSync(path, "utf8");
  } catch {
    return dflt;
  }
}

/** The lock's line: never through a symlink, never more than a line's worth; "" when unreadable. */
function lockText(lock: string): string {
  try {
    return readFileSafe(lock, 512)?.toString("utf8") ?? "";
  } catch {
    return "";
  }
}

function startTime(pid: number | "self"): string | null {
  const stat = readOr(`/proc/${pid}/stat`, "");
  // The command name (field 2) may hold spaces and parentheses: count from the last ")".
  const after = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return after[19] ?? null; // field 22
}

function bootId(): string {
  return readOr(paths.bootId, "unknown").trim();
}

function parse(text: string): Holder | null {
  const m = /^imds-init lock: pid (\d+) start (\d+) boot (\S+) since (\S+)\n$/.exec(text);
  return m ? { pid: Number(m[1]), start: m[2]!, boot: m[3]!, since: m[4]! } : null;
}

function alive(h: Holder): boolean {
  return h.boot === bootId() && startTime(h.pid) === h.start;
}

/** The live run holding the lock in `dir`, if any (for `imds-init status`). */
export function runningHolder(dir: string): Holder | null {
  const lock = join(dir, paths.lockName);
  try {
    if (!fs.lstatSync(lock).isFile()) return null;
  } catch {
    return null;
  }
  const h = parse(lockText(lock));
  return h && alive(h) ? h : null;
}

const errno = (e: unknown): string | undefined => (e as NodeJS.ErrnoException).code;

/** Temp files of runs killed while they waited for the lock. */
function removeDeadTemps(dir: string): void {
  const pattern = new RegExp(`^\\.${paths.lockName}\\.(\\d+)\\.[0-9a-f]{8}$`);
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) {
    const pid = pattern.exec(name)?.[1];
    if (pid && !fs.existsSync(`/proc/${pid}`)) {
      try {
        fs.unlinkSync(join(dir, name));
      } catch {
        // best effort
      }
    }
  }
}

/**
 * Take the lock in the state directory `dir` (which must exist), waiting up
 * to `waitMs` for a live holder; `onWait` is told once who is waited for.
 */
export async function acquire(dir: string, waitMs: number, onWait: (h: Holder) => void): Promise<Acquired> {
  const lock = join(dir, paths.lockName);
  const me: Holder = { pid: process.pid, start: startTime("self") ?? "0", boot: bootId(), since: new Date().toISOString() };
  const tmp = join(dir, `.${paths.lockName}.${process.pid}.${randomBytes(4).toString("hex")}`);
  const line = `imds-init lock: pid ${me.pid} start ${me.start} boot ${me.boot} since ${me.since}\n`;
  // The very file that was looked at: same inode (numbers are reused) and same line.
  const still = (ino: number, text: string): boolean => {
    try {
      return fs.lstatSync(lock).ino === ino && lockText(lock) === text;
    } catch {
      return false;
    }
  };
  try {
    fs.writeFileSync(tmp, line, { flag: "wx", mode: 0o600 });
  } catch (e) {
    try {
      fs.unlinkSync(tmp);
    } catch {
      // never created
    }
    return { kind: "error", error: `cannot create ${tmp}: ${(e as Error).message}` };
  }
  const deadline = performance.now() + waitMs;
  let told = false;
  try {
    for (;;) {
      try {
        fs.linkSync(tmp, lock);
        const ino = fs.lstatSync(lock).ino;
        removeDeadTemps(dir);
        return {
          kind: "held",
          release: () => {
            // Only our own: never a lock that another run took over from us.
            try {
              if (still(ino, line)) fs.unlinkSync(lock);
            } catch {
              // gone already
            }
          },
        };
      } catch (e) {
        if (errno(e) !== "EEXIST") return { kind: "error", error: `cannot create ${lock}: ${(e as Error).message}` };
      }
      let st: fs.Stats;
      try {
        st = fs.lstatSync(lock);
      } catch {
        continue; // released between our link and this look: try again
      }
      if (!st.isFile()) return { kind: "error", error: `${lock} is not a regular file; refusing to use it` };
      const text = lockText(lock);
      const holder = parse(text);
      if (!holder || !alive(holder)) {
        // Its holder is gone. Removed only if it is still the very file that
        // was judged (a run that took it over meanwhile keeps its own).
        try {
          if (still(st.ino, text)) fs.unlinkSync(lock);
        } catch {
          // someone else removed it first
        }
        continue;
      }
      if (performance.now() >= deadline) return { kind: "busy", holder };
      if (!told) {
        told = true;
        onWait(holder);
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  } finally {
    try {
      fs.unlinkSync(tmp);
    } catch {
      // best effort: a leftover is never mistaken for the lock
    }
  }
}
