// The user-data step: fetch user-data, gunzip it (bounded), and run it when
// it is a #! script; anything else is described and ignored, never run.
//
// Decisions:
// - The script is written to a fresh file in the state directory (0700,
//   created exclusively, never through a symlink) and executed directly: the
//   kernel reads the #! line, no shell of ours is involved. The file is
//   deleted after the run: user-data often carries bootstrap secrets, and an
//   image made from this instance must not bake them in (the service still
//   has the original). A copy left by a crash is removed on the next run.
// - --root DIR: the script runs chrooted into DIR (via chroot(8): node cannot
//   chroot) with cwd "/" inside it, so its interpreter, its paths and its
//   commands are the image's, never the build host's. Running it on the host
//   with only cwd=DIR would let `/etc/...` in the script change the host.
//   Only what the caller mounted in DIR (/proc, /dev) is there. The script
//   still runs as the host's root with the host's kernel: a chroot is not a
//   sandbox.
// - stdin is /dev/null, the environment is scriptEnv and nothing else, stdout
//   and stderr go straight to the log file (no pipes through us), so a daemon
//   the script leaves running cannot hold the step: it ends at the script's
//   exit. The script runs in its own session and process group; on timeout
//   the group gets SIGTERM, then SIGKILL after a grace period.
// - user-data content is never logged; only its size, sha256, the
//   interpreter named on its #! line and, for ignored data, its kind.
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { paths, under, scriptEnv, commandPath, chrootCommand } from "../os.ts";
import { ensureDir, openAppend, requireRegularOrMissing, lstatOrNull, writeAll, writeFileExclusive } from "../files.ts";
import { StepError, shown, type StepContext, type StepResult } from "./step.ts";

/** How long a timed-out script's process group has between SIGTERM and SIGKILL. */
export const killGraceMs = 5000;
const scriptName = /^user-data\.[A-Za-z0-9._-]+\.[0-9a-f]{12}$/;

export function isGzip(b: Buffer): boolean {
  return b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b;
}

/**
 * Gunzip at most `max` bytes of output. zlib stops as soon as the output
 * passes the limit, so a bomb costs `max` bytes of memory, not its size.
 */
export function gunzipBounded(gz: Buffer, max: number): Buffer {
  try {
    // Loaded here, not imported: loading zlib costs a boot about 5 ms of
    // CPU, and most user-data is not gzip.
    return process.getBuiltinModule("node:zlib").gunzipSync(gz, { maxOutputLength: max });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ERR_BUFFER_TOO_LARGE")
      throw new StepError(`user-data is gzip that expands past ${max} bytes (metadata.max_bytes): refused, not run`);
    throw new StepError(`user-data starts like gzip but does not decompress (${(e as Error).message}): not run`);
  }
}

export type UserDataKind = { script: true; interpreter: string; hint?: string } | { script: false; why: string };

function hex(b: Buffer): string {
  return [...b.subarray(0, 4)].map((x) => "0x" + x.toString(16).padStart(2, "0")).join(" ");
}

// Formats other agents understand; named so the admin knows why nothing ran.
const directives = ["#cloud-config-archive", "#cloud-config", "#cloud-boothook", "#include-once", "#include", "#part-handler", "#upstart-job", "## template: jinja"];

/** What user-data is, without revealing its content: a script to run, or why it is ignored. */
export function describeUserData(b: Buffer): UserDataKind {
  if (b.length === 0) return { script: false, why: "it is empty" };
  if (b[0] === 0x23 && b[1] === 0x21) {
    const end = b.indexOf(0x0a);
    const line = b.subarray(2, end < 0 ? Math.min(b.length, 256) : Math.min(end, 256)).toString("latin1");
    const interpreter = line.replace(/^[ \t]+/, "").split(/[ \t]/)[0] ?? "";
    const kind: UserDataKind = { script: true, interpreter };
    if (line.includes("\r")) kind.hint = "its #! line ends in a carriage return (CRLF line endings), which the kernel takes as part of the interpreter's name";
    else if (interpreter === "") kind.hint = "its #! line names no interpreter";
    return kind;
  }
  if (isGzip(b)) return { script: false, why: `gzip inside gzip is not supported` };
  if (b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf) return { script: false, why: "it starts with a UTF-8 byte order mark, so no #! line: not a script" };
  const head = b.subarray(0, 512);
  if (head.some((x) => (x < 0x20 && x !== 0x09 && x !== 0x0a && x !== 0x0d) || x === 0x7f)) return { script: false, why: `binary data (starts ${hex(b)}) is not supported` };
  const first = head.toString("latin1").split("\n")[0]!.trim().toLowerCase();
  for (const d of directives) if (first.startsWith(d)) return { script: false, why: `${d} is not supported` };
  if (/^(content-type:|mime-version:)/.test(first)) return { script: false, why: "MIME multipart is not supported" };
  const win = /^<(powershell|script|persist)>/.exec(first);
  if (win) return { script: false, why: `Windows <${win[1]}> user-data is not supported` };
  if (/^\s*#!/.test(head.toString("latin1"))) return { script: false, why: "its #! is not at the very start (leading blank lines or spaces): not a script" };
  return { script: false, why: "text without a #! line is not a script" };
}

/** How a run ended. */
export interface Outcome {
  status: number | null;
  signal: NodeJS.Signals | null;
  ms: number;
  timedOut: boolean;
  /** spawn failed (the interpreter is missing, not executable...): nothing ran. */
  error?: NodeJS.ErrnoException;
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // ESRCH: the group is gone already
  }
}

/**
 * Run argv in a new session and process group with stdin /dev/null and
 * stdout/stderr on `outFd`; resolve at the main process's exit (not when
 * every holder of outFd is gone). On timeout (ms; 0 = none) the group gets
 * SIGTERM and, `graceMs` later, SIGKILL.
 */
export function execute(argv: string[], outFd: number, timeoutMs: number, graceMs = killGraceMs): Promise<Outcome> {
  return new Promise((done) => {
    const started = performance.now();
    const nullFd = fs.openSync(paths.devNull, fs.constants.O_RDONLY);
    let settled = false;
    let timedOut = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (o: Omit<Outcome, "ms" | "timedOut">): void => {
      if (settled) return;
      settled = true;
      if (timer && !timedOut) clearTimeout(timer);
      done({ ...o, ms: Math.round(performance.now() - started), timedOut });
    };
    let child;
    try {
      child = spawn(argv[0]!, argv.slice(1), {
        cwd: "/",
        env: { ...scriptEnv },
        stdio: [nullFd, outFd, outFd],
        detached: true, // setsid(): its own process group, to kill as a whole
        shell: false,
      });
    } catch (e) {
      fs.closeSync(nullFd);
      finish({ status: null, signal: null, error: e as NodeJS.ErrnoException });
      return;
    }
    fs.closeSync(nullFd); // the child has its own copy now
    child.once("error", (e) => finish({ status: null, signal: null, error: e }));
    child.once("exit", (status, signal) => finish({ status, signal }));
    const pid = child.pid;
    if (pid !== undefined && timeoutMs > 0) {
      timer = setTimeout(() => {
        timedOut = true;
        killGroup(pid, "SIGTERM");
        // Also reaches what the script left behind after it exited on TERM;
        // while any member is alive the group id cannot be reused.
        setTimeout(() => killGroup(pid, "SIGKILL"), graceMs);
      }, timeoutMs);
    }
  });
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

/** chroot(8) on the host, or null. */
function findChroot(): string | null {
  for (const dir of commandPath) {
    const p = join(dir, chrootCommand);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return null;
}

/**
 * Remove script copies an interrupted run left in the state directory (ours
 * by name, regular files only). run.ts calls it at the start of every run,
 * under the run lock: after a crash mid-script user-data is recorded as
 * started and never runs again, so the step itself could not be relied on.
 */
export function removeStaleScripts(dir: string): void {
  // Missing: nothing left behind. A symlink: never followed (saving the state refuses it too).
  if (!lstatOrNull(dir)?.isDirectory()) return;
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return; // best effort, like the unlinks below
  }
  for (const name of names) {
    if (!scriptName.test(name)) continue;
    const p = join(dir, name);
    if (lstatOrNull(p)?.isFile()) {
      try {
        fs.unlinkSync(p);
      } catch {
        // best effort
      }
    }
  }
}

/** The user-data log, opened for appending; its directory is created when missing. */
function openLog(file: string): number {
  const dir = dirname(file);
  if (!lstatOrNull(dir)) fs.mkdirSync(dir, { mode: 0o755 });
  requireRegularOrMissing(file); // a FIFO would block the open, a symlink is refused
  return openAppend(file, 0o600);
}

export async function run(ctx: StepContext): Promise<StepResult> {
  if (!ctx.md) throw new StepError("the metadata service is not available");
  const fetched = await ctx.md.bytes("user-data");
  if (fetched === null) return { summary: "no user-data" };
  const max = ctx.config.metadata.max_bytes;
  const gz = isGzip(fetched);
  const body = gz ? gunzipBounded(fetched, max) : fetched;
  const data: Record<string, unknown> = {
    bytes: body.length,
    sha256: createHash("sha256").update(body).digest("hex"),
  };
  if (gz) data.gzip_bytes = fetched.length;
  const kind = describeUserData(body);
  if (!kind.script) {
    data.ignored = kind.why;
    return { summary: `${ctx.dryRun ? "would ignore" : "ignored"} user-data: ${kind.why} (only #! scripts are run)`, data };
  }
  const interp = /^[!-~]{1,80}$/.test(kind.interpreter) ? kind.interpreter : shown(kind.interpreter, 80);
  data.interpreter = kind.interpreter;
  const chrooted = resolve(ctx.root) !== "/";
  const what = `a ${body.length}-byte #!${interp} script${gz ? ` (gunzipped from ${fetched.length} bytes)` : ""}`;
  if (ctx.dryRun) return { summary: `would run ${what}${chrooted ? ` chrooted into ${resolve(ctx.root)}` : ""}`, data };

  const logPath = under(ctx.root, paths.userDataLog);
  const stateDir = under(ctx.root, paths.stateDir);
  const timeoutS = ctx.config.user_data.timeout_s;
  // Nothing started: the step stays due (see markStarted below).
  const notRun = (why: string): StepError => new StepError(`not run: ${why}; tried again at the next boot`);

  let chroot: string | null = null;
  if (chrooted) {
    chroot = findChroot();
    if (!chroot) throw notRun(`--root needs ${chrootCommand}(8) to run user-data inside ${ctx.root}, and none was found in ${commandPath.join(":")}`);
  }
  let logFd: number;
  try {
    logFd = openLog(logPath);
  } catch (e) {
    throw notRun(`cannot open ${logPath}: ${(e as Error).message}`);
  }
  let file: string | null = null;
  try {
    try {
      ensureDir(stateDir, { mode: 0o700 });
      const id = (ctx.instanceId ?? "unknown").replace(/[^A-Za-z0-9._-]/g, "_");
      file = join(stateDir, `user-data.${id}.${randomBytes(6).toString("hex")}`);
      writeFileExclusive(file, body, 0o700);
      writeAll(logFd, Buffer.from(`=== imds-init user-data: instance ${ctx.instanceId ?? "unknown"}, ${new Date().toISOString()}, ${what} ===\n`));
    } catch (e) {
      throw notRun(`cannot write ${file ?? stateDir}: ${(e as Error).message}`);
    }
    const argv = chroot ? [chroot, resolve(ctx.root), join(paths.stateDir, basename(file))] : [file];
    // Only now: a failure before this point (download, gunzip, files) leaves
    // user-data due, to be tried again at the next boot.
    try {
      ctx.markStarted?.();
    } catch (e) {
      throw notRun((e as Error).message);
    }
    const out = await execute(argv, logFd, timeoutS * 1000);
    data.duration_ms = out.ms;
    data.exit_status = out.status;
    data.signal = out.signal;
    if (out.timedOut) data.timed_out = true;

    let ending: string;
    let failed = true;
    if (out.error) {
      const code = out.error.code ?? "error";
      data.error = code;
      if (code === "ENOENT") ending = `cannot run it: its interpreter ${interp} does not exist (ENOENT)`;
      else if (code === "EACCES") ending = `cannot run it: ${interp} is not executable, or ${stateDir} is on a noexec mount (EACCES)`;
      else ending = `cannot run it: ${out.error.message}`;
      if (kind.hint) ending += `; ${kind.hint}`;
    } else if (out.timedOut) {
      ending = `script timed out after ${timeoutS} s and was killed${out.signal ? ` (${out.signal})` : ""}`;
    } else if (out.signal) {
      ending = `script killed by ${out.signal} after ${seconds(out.ms)}`;
    } else {
      ending = `script exited ${out.status} after ${seconds(out.ms)}`;
      failed = out.status !== 0;
      // chroot(8) itself exits 125-127 when it cannot start the script.
      if (failed && chroot && out.status !== null && out.status >= 125 && out.status <= 127)
        ending += ` (chroot could not start it? check that ${interp} exists and is executable in ${resolve(ctx.root)})`;
      // The #! line's own defect (a CR) is the likelier cause, chrooted or not.
      if (failed && kind.hint) ending += `; ${kind.hint}`;
    }
    try {
      writeAll(logFd, Buffer.from(`=== ${ending} ===\n`));
    } catch {
      // the log is for humans; the state keeps the outcome
    }
    return { summary: `${ending}; output in ${logPath}`, data, failed };
  } finally {
    if (file) {
      try {
        fs.unlinkSync(file);
      } catch {
        // not created, or already gone
      }
    }
    fs.closeSync(logFd);
  }
}
