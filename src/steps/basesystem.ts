// basesystem: make `rpm -q --qf '%{installtime:date}\n' basesystem` tell
// when THIS instance was built, not when its template image was. The
// template's date is recorded in the state first, so it is kept, not lost.
//
// Which rpm runs, and with which macros:
// - ROOT is "/": the first executable rpm in the system's PATH, with its own
//   macros (they are the system's), so its configuration alone chooses the
//   database (EL: /var/lib/rpm; Fedora: /usr/lib/sysimage/rpm).
// - ROOT is another tree (an image being built, a test root): ROOT must
//   have an rpm in its PATH (that is what makes it an rpm system), but that
//   binary is not executed: outside a chroot it would load this machine's
//   libraries. This machine's rpm runs instead, with `--root ROOT`, and with
//   ROOT's own macro files loaded after its defaults (`--load`), because
//   `rpm --root` otherwise uses this machine's macros and would look for
//   the database where the host keeps it (Debian's rpm: ~/.rpmdb).
// Every rpm runs from argv (never a shell), with a clean environment (a
// SOURCE_DATE_EPOCH from the caller would make rpm stamp that date instead
// of now), bounded by a timeout.
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import { basename, dirname, join } from "node:path";
import { commandPath, paths, rpmDbFiles, rpmMacroFiles, under } from "../os.ts";
import { lstatOrNull } from "../files.ts";
import { StepError, type StepContext, type StepResult } from "./step.ts";

const RPM_TIMEOUT_MS = 60_000;
const RPM_ENV = { PATH: commandPath.join(":"), HOME: "/root", LANG: "C", LC_ALL: "C" };
// The re-stamp must land between the clock readings taken around it; a
// little slack for rpm rounding to whole seconds.
const STAMP_SLACK_S = 2;
// Bounds on the package-cache search: caches can be large, and this is a boot.
const CACHE_MAX_DEPTH = 8;
const CACHE_MAX_ENTRIES = 20_000;
const CACHE_MAX_CANDIDATES = 32;
const PACKAGE_NAME = /^basesystem-.+\.rpm$/;
const RPM_MAGIC = Buffer.from([0xed, 0xab, 0xee, 0xdb]);

interface Rpm {
  bin: string;
  /** Arguments every call starts with: ROOT's macros (another root only) and --root. */
  prefix: string[];
}

interface Installed {
  time: number;
  nevra: string;
}

interface Package {
  /** The file as this process opens it. */
  file: string;
  /** The file as seen inside ROOT, for messages and the state. */
  shown: string;
  nevra: string;
  buildtime: number;
}

interface Output {
  code: number;
  stdout: string;
  stderr: string;
}

function iso(seconds: number): string {
  return new Date(seconds * 1000).toISOString();
}

function isExecutableFile(path: string): boolean {
  try {
    if (!fs.statSync(path).isFile()) return false;
    fs.accessSync(path, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The most useful line of rpm's complaints (Debian's rpm adds a warning to every install). */
function reason(out: Output): string {
  const lines = `${out.stderr}\n${out.stdout}`.split("\n").map((l) => l.trim()).filter((l) => l !== "");
  const line = lines.find((l) => l.startsWith("error:")) ?? lines.at(-1) ?? `exit status ${out.code}`;
  return line.length > 300 ? line.slice(0, 297) + "..." : line;
}

function rpm(r: Rpm, args: string[], what: string): Promise<Output> {
  return new Promise((resolve, reject) => {
    execFile(
      r.bin,
      [...r.prefix, ...args],
      { env: RPM_ENV, cwd: "/", timeout: RPM_TIMEOUT_MS, killSignal: "SIGKILL", maxBuffer: 1 << 20, encoding: "utf8" },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== "number") {
          const why = err.killed ? `no answer within ${RPM_TIMEOUT_MS / 1000} s` : err.message;
          reject(new StepError(`${what}: ${r.bin}: ${why}`));
          return;
        }
        resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
      },
    );
  });
}

/** The macro files of `root` that exist, in rpm's order; symlinks are skipped (they may point out of ROOT). */
function rootMacroFiles(root: string): string[] {
  const out: string[] = [];
  for (const pattern of rpmMacroFiles) {
    const full = under(root, pattern);
    const base = basename(full);
    let names: string[];
    if (base.endsWith("*")) {
      try {
        names = fs.readdirSync(dirname(full)).filter((n) => n.startsWith(base.slice(0, -1))).sort();
      } catch {
        continue;
      }
    } else {
      names = [base];
    }
    for (const name of names) {
      const file = join(dirname(full), name);
      if (lstatOrNull(file)?.isFile()) out.push(file);
    }
  }
  return out;
}

/** The rpm to run for ROOT, or a reason why ROOT is not an rpm system. */
function findRpm(root: string): Rpm | string {
  if (root === "/") {
    const bin = commandPath.map((d) => join(d, "rpm")).find(isExecutableFile);
    return bin ? { bin, prefix: ["--root", "/"] } : "no rpm in PATH";
  }
  if (!commandPath.some((d) => lstatOrNull(under(root, join(d, "rpm"))) !== null)) return "no rpm in ROOT's PATH";
  const bin = commandPath.map((d) => join(d, "rpm")).find(isExecutableFile);
  if (!bin) throw new StepError(`${root} has rpm, but this machine has none in ${commandPath.join(":")} to run with --root ${root}`);
  const prefix: string[] = [];
  for (const file of rootMacroFiles(root)) prefix.push("--load", file);
  prefix.push("--root", root);
  return { bin, prefix };
}

/** The database directory rpm would use for ROOT, when a database is there. */
async function findDb(root: string, r: Rpm): Promise<{ dbpath: string } | string> {
  const out = await rpm(r, ["--eval", "%{_dbpath}"], "rpm --eval %{_dbpath}");
  const dbpath = out.stdout.trim();
  if (out.code !== 0 || !dbpath.startsWith("/") || dbpath.includes("\n")) return "rpm names no database path";
  const dir = under(root, dbpath);
  if (!rpmDbFiles.some((f) => lstatOrNull(join(dir, f)) !== null)) return `no rpm database in ${dbpath}`;
  return { dbpath };
}

async function installed(r: Rpm): Promise<Installed[]> {
  const out = await rpm(r, ["-q", "--qf", "%{installtime}\\t%{nevra}\\n", "basesystem"], "rpm -q basesystem");
  if (out.code !== 0) {
    if (/package basesystem is not installed/.test(out.stdout)) return [];
    throw new StepError(`rpm -q basesystem failed: ${reason(out)}`);
  }
  const list: Installed[] = [];
  for (const line of out.stdout.split("\n")) {
    if (line === "") continue;
    const m = /^(\d{1,12})\t(\S+)$/.exec(line);
    if (!m) throw new StepError(`rpm -q basesystem: unexpected output ${JSON.stringify(line.slice(0, 100))}`);
    list.push({ time: Number(m[1]), nevra: m[2]! });
  }
  return list;
}

/**
 * Check that `file` is a binary basesystem package we may hand to rpm:
 * a regular file (not a symlink), with the rpm lead magic (rpm would
 * otherwise read a text file as a manifest naming other packages), whose
 * header says basesystem. Returns the package or why it was refused.
 */
async function inspect(r: Rpm, file: string, shown: string): Promise<Package | string> {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ELOOP") return "a symlink";
    return (e as Error).message;
  }
  const head = Buffer.alloc(4);
  try {
    if (!fs.fstatSync(fd).isFile()) return "not a regular file";
    if (fs.readSync(fd, head, 0, 4, 0) !== 4 || !head.equals(RPM_MAGIC)) return "not an rpm package";
  } finally {
    fs.closeSync(fd);
  }
  const out = await rpm(
    r,
    ["-qp", "--nomanifest", "--qf", "%{name}\\t%{nevra}\\t%{buildtime}\\t%|sourcepackage?{source}:{binary}|\\n", file],
    `rpm -qp ${shown}`,
  );
  if (out.code !== 0) return `unreadable package (${reason(out)})`;
  const m = /^([^\t\n]*)\t(\S+)\t(\d+)\t(source|binary)\n?$/.exec(out.stdout);
  if (!m) return "unreadable package header";
  if (m[1] !== "basesystem") return `a package of ${JSON.stringify(m[1]!.slice(0, 64))}, not basesystem`;
  if (m[4] !== "binary") return "a source package";
  return { file, shown, nevra: m[2]!, buildtime: Number(m[3]) };
}

/** basesystem-*.rpm files under the caches, without following symlinked directories, bounded. */
function cacheFiles(root: string, refused: string[]): { file: string; shown: string }[] {
  const found: { file: string; shown: string }[] = [];
  let budget = CACHE_MAX_ENTRIES;
  const walk = (dir: string, shown: string, depth: number): void => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      if (--budget < 0) return;
      const path = join(dir, e.name);
      const inRoot = join(shown, e.name);
      if (e.isDirectory() && depth < CACHE_MAX_DEPTH) walk(path, inRoot, depth + 1);
      else if (PACKAGE_NAME.test(e.name) && !e.name.endsWith(".src.rpm")) {
        if (e.isFile()) found.push({ file: path, shown: inRoot });
        else refused.push(`${inRoot} (${e.isSymbolicLink() ? "a symlink" : "not a regular file"})`);
      }
    }
  };
  for (const cache of paths.packageCaches) {
    const dir = under(root, cache);
    const st = lstatOrNull(dir);
    if (st?.isDirectory()) walk(dir, cache, 1);
    else if (st) refused.push(`${cache} (not a real directory)`);
  }
  return found;
}

/** The package to re-stamp with: basesystem.package, else the best one in the caches. */
async function findPackage(ctx: StepContext, r: Rpm, current: Installed[]): Promise<Package> {
  const configured = ctx.config.basesystem.package;
  const file = under(ctx.root, configured);
  if (lstatOrNull(file) !== null) {
    const p = await inspect(r, file, configured);
    if (typeof p === "string") throw new StepError(`basesystem.package ${configured} refused: ${p}`);
    return p;
  }
  const refused: string[] = [];
  const candidates = cacheFiles(ctx.root, refused);
  const good: Package[] = [];
  for (const c of candidates.slice(0, CACHE_MAX_CANDIDATES)) {
    const p = await inspect(r, c.file, c.shown);
    if (typeof p === "string") refused.push(`${c.shown} (${p})`);
    else good.push(p);
  }
  for (const p of refused) ctx.log.debug(`not used: ${p}`, { step: "basesystem" });
  // The installed version itself if the cache has it (then only the date
  // changes); else the newest build. Ties go to the first path in name order.
  const same = good.find((p) => current.some((i) => i.nevra === p.nevra));
  const best = same ?? good.reduce<Package | undefined>((a, p) => (a && a.buildtime >= p.buildtime ? a : p), undefined);
  if (best) return best;
  throw new StepError(
    `no basesystem package to re-stamp with: ${configured} (basesystem.package) does not exist and ` +
      `${paths.packageCaches.join(" and ")} hold no basesystem-*.rpm` +
      (refused.length > 0 ? ` that can be used (refused: ${refused.slice(0, 5).join(", ")}${refused.length > 5 ? ", ..." : ""})` : "") +
      `; put one at ${configured} (e.g. \`dnf download basesystem\` when building the image; scripts/install.sh can add one) or point basesystem.package at one`,
  );
}

export async function run(ctx: StepContext): Promise<StepResult> {
  // Dates already recorded for this same instance (a --force run, a retry)
  // are kept: a second re-stamp must not pass the instance's date off as
  // the template's.
  const prev = ctx.previous && ctx.instanceId !== null && ctx.previous.instance_id === ctx.instanceId ? ctx.previous.data : undefined;
  const prevTemplate = typeof prev?.template_built === "string" ? prev.template_built : undefined;
  const prevInstance = typeof prev?.instance_built === "string" ? prev.instance_built : undefined;

  const noBasesystem = (why: string): StepResult => {
    const firstBoot = prevInstance ?? ctx.now.toISOString();
    return {
      summary: `no rpm basesystem here (${why}); ${ctx.dryRun ? "would record" : "recorded"} first boot ${firstBoot}`,
      data: { template_built: prevTemplate ?? null, instance_built: firstBoot },
    };
  };

  const r = findRpm(ctx.root);
  if (typeof r === "string") return noBasesystem(r);
  const db = await findDb(ctx.root, r);
  if (typeof db === "string") return noBasesystem(db);
  const before = await installed(r);
  if (before.length === 0) return noBasesystem(`basesystem is not installed in the rpm database in ${db.dbpath}`);

  const templateTime = Math.min(...before.map((i) => i.time));
  const template = prevTemplate ?? iso(templateTime);
  ctx.log.debug(`basesystem ${before.map((i) => i.nevra).join(", ")} installed ${iso(templateTime)}; template built ${template}`, {
    step: "basesystem",
  });

  const pkg = await findPackage(ctx, r, before);
  if (ctx.dryRun) {
    return {
      summary: `would re-stamp ${pkg.nevra} from ${pkg.shown} (installed ${iso(templateTime)}; template built ${template})`,
      data: { template_built: template, instance_built: null, package: pkg.shown, nevra: pkg.nevra },
    };
  }

  // -i --force replaces the installed header when it is the same package;
  // for another version -i would add a second basesystem beside it, so
  // that case upgrades (or, with --force, downgrades) instead.
  const same = before.length === 1 && before[0]!.nevra === pkg.nevra;
  const mode = same ? "-i" : "-U";
  const started = Math.floor(Date.now() / 1000);
  const out = await rpm(
    r,
    [mode, "--force", "--justdb", "--nomanifest", "--noscripts", "--notriggers", pkg.file],
    `rpm ${mode} --justdb ${pkg.shown}`,
  );
  const ended = Math.ceil(Date.now() / 1000);
  if (out.code !== 0) throw new StepError(`rpm ${mode} --force --justdb ${pkg.shown} failed: ${reason(out)}`);

  const after = await installed(r);
  const stamped = after.length === 1 ? after[0]! : undefined;
  const data = {
    template_built: template,
    instance_built: stamped ? iso(stamped.time) : null,
    package: pkg.shown,
    nevra: pkg.nevra,
  };
  if (!stamped || stamped.time < started - STAMP_SLACK_S || stamped.time > ended + STAMP_SLACK_S) {
    const got = after.length === 0 ? "basesystem is no longer installed" : after.map((i) => `${i.nevra} installed ${iso(i.time)}`).join(", ");
    return { failed: true, summary: `re-stamp did not take: ${got}, expected one basesystem installed at ${iso(started)}`, data };
  }
  return { summary: `re-stamped ${stamped.nevra}: template built ${template}, instance built ${iso(stamped.time)}`, data };
}
