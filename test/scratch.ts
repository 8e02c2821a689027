// Helpers for the end-to-end fault tests: scratch roots laid out like
// scripts/demo.sh makes them, the project's metadata emulator started as a
// process of its own (real sockets, its command-line options), the built
// binary run without blocking (so cases can run concurrently), and a
// snapshot of a whole tree to assert that nothing was lost and nothing
// outside the expected files changed.
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { BINARY } from "./binary.ts";
import type { InstanceData, RequestRecord } from "../scripts/imds-emulator.ts";

export const ENV = { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" };
export const EMULATOR = fileURLToPath(new URL("../scripts/imds-emulator.ts", import.meta.url));
/** The Node that runs the tests (26, with type stripping) also runs the emulator. */
export const NODE = process.execPath;

/** /etc/hostname of every scratch root before a run. */
export const TEMPLATE_HOSTNAME = "template.localdomain\n";

/** Run a command (never through a shell); its stdout, or an error naming it. */
export function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", env: ENV });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: exit ${r.status}: ${r.stderr}`);
  return r.stdout;
}

// ------------------------------------------------------------ scratch roots

interface Template {
  root: string;
  /** root's authorized_keys line, with options. */
  adminLine: string;
}

let template: Template | null = null;

/** Built once per process (host keys take a moment), then copied for each root. */
function buildTemplate(): Template {
  if (template) return template;
  const dir = fs.mkdtempSync(join(tmpdir(), "imds-template-"));
  process.once("exit", () => fs.rmSync(dir, { recursive: true, force: true }));
  const root = join(dir, "root");
  for (const d of ["etc/ssh", "root", "var/log"]) fs.mkdirSync(join(root, d), { recursive: true });
  fs.chmodSync(join(root, "root"), 0o700);
  fs.writeFileSync(join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n", { mode: 0o644 });
  fs.writeFileSync(join(root, "etc/hostname"), TEMPLATE_HOSTNAME, { mode: 0o644 });
  // user-data runs chrooted into the root: this machine's /bin/sh and its libraries.
  const sh0 = fs.realpathSync("/bin/sh");
  const libs = sh("ldd", [sh0]).match(/\/[^ \t\n]+/g) ?? [];
  for (const f of ["/bin/sh", ...libs]) {
    fs.mkdirSync(join(root, dirname(f)), { recursive: true });
    fs.copyFileSync(f, join(root, f)); // follows symlinks, like cp -L
    fs.chmodSync(join(root, f), 0o755);
  }
  sh("ssh-keygen", ["-q", "-A", "-f", root]); // host keys, as the image's sshd would make them
  sh("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "admin@console", "-f", join(dir, "admin")]);
  const adminLine = `no-pty,from="10.0.0.0/8" ${fs.readFileSync(join(dir, "admin.pub"), "utf8").trim()}`;
  fs.mkdirSync(join(root, "root/.ssh"), { mode: 0o700 });
  fs.writeFileSync(join(root, "root/.ssh/authorized_keys"), adminLine + "\n", { mode: 0o600 });
  template = { root, adminLine };
  return template;
}

export interface Scratch {
  /** The scratch directory: root/ and whatever else a test puts beside it. */
  dir: string;
  /** The target root: etc/passwd, etc/hostname, etc/ssh host keys, root/.ssh, bin/sh and its libraries. */
  root: string;
  /** The line already in ROOT/root/.ssh/authorized_keys: an admin's key with options. */
  adminLine: string;
  /** Write a config file beside the root; returns its path. */
  config(yaml: string, name?: string): string;
  /** Remove the whole scratch directory. */
  cleanup(): void;
}

/** A fresh scratch root, as scripts/demo.sh makes one, plus /etc/hostname. */
export function makeRoot(): Scratch {
  const t = buildTemplate();
  const dir = fs.mkdtempSync(join(tmpdir(), "imds-scratch-"));
  const root = join(dir, "root");
  sh("cp", ["-a", t.root, root]);
  return {
    dir,
    root,
    adminLine: t.adminLine,
    config(yaml, name = "imds-init.yaml") {
      const file = join(dir, name);
      fs.writeFileSync(file, yaml);
      return file;
    },
    cleanup() {
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Host public key files of the template, as ssh-keygen -A made them (name -> line). */
export function templateHostKeys(): Map<string, string> {
  const { root } = buildTemplate();
  const out = new Map<string, string>();
  for (const name of fs.readdirSync(join(root, "etc/ssh")).sort())
    if (name.endsWith(".pub")) out.set(name, fs.readFileSync(join(root, "etc/ssh", name), "utf8").trim());
  return out;
}

// ------------------------------------------------------------ the emulator

export interface RunningEmulator {
  url: string;
  /** The emulator's request log (GET /_emulator/requests). */
  requests(): Promise<RequestRecord[]>;
  stop(): Promise<void>;
}

const running = new Set<() => void>();
process.once("exit", () => {
  for (const kill of running) kill();
});

/**
 * Start scripts/imds-emulator.ts as a process serving `data`, with its
 * command-line options `extraArgs` (--mode, --put-status, --cut PATH...).
 * Resolves once it prints its URL (before it accepts connections with --late-start).
 */
export async function startEmulator(data: InstanceData, extraArgs: string[] = []): Promise<RunningEmulator> {
  const dir = fs.mkdtempSync(join(tmpdir(), "imds-emu-"));
  const file = join(dir, "data.json");
  fs.writeFileSync(file, JSON.stringify(data));
  const child = spawn(NODE, [EMULATOR, "--data", file, ...extraArgs], { env: ENV, stdio: ["ignore", "pipe", "pipe"] });
  const kill = (): void => void child.kill("SIGKILL");
  running.add(kill);
  let out = "";
  let err = "";
  child.stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      out += d;
      const m = /^listening on (\S+)\n/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`the emulator exited (${code}) before listening: ${err}`)));
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  // One request through its HTTP path first (control paths are never logged
  // or faulted), so a cold process on a busy machine does not turn the
  // binary's first request into a timeout.
  if (!extraArgs.includes("--late-start")) await (await fetch(`${url}/_emulator/requests`)).text();
  return {
    url,
    async requests() {
      const r = await fetch(`${url}/_emulator/requests`);
      return ((await r.json()) as { requests: RequestRecord[] }).requests;
    },
    async stop() {
      running.delete(kill);
      child.kill("SIGTERM");
      const t = setTimeout(kill, 2000);
      await exited;
      clearTimeout(t);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

// ------------------------------------------------------------ the binary

export interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall time, milliseconds. */
  ms: number;
}

/**
 * Run argv (the built binary unless argv[0] is given as `binary`) with a
 * clean environment, never through a shell, without blocking the event
 * loop; SIGKILL after `timeoutMs`.
 */
export function runAsync(args: string[], opts: { timeoutMs?: number; binary?: string; env?: Record<string, string> } = {}): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(opts.binary ?? BINARY, args, { env: opts.env ?? ENV, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const guard = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 25_000);
    child.once("error", reject);
    child.once("close", (code, signal) => {
      clearTimeout(guard);
      resolve({ code, signal, stdout, stderr, ms: performance.now() - started });
    });
  });
}

// ------------------------------------------------------------ snapshots

export interface Entry {
  kind: "file" | "dir" | "link" | "other";
  mode: number;
  uid: number;
  gid: number;
  /** Regular files. */
  sha256?: string;
  /** Symlinks. */
  target?: string;
  ino: number;
  mtimeMs: number;
}
export type Snapshot = Map<string, Entry>;

/** Every path under `dir` (relative, "" excluded), never following a symlink. */
export function snapshotTree(dir: string): Snapshot {
  const out: Snapshot = new Map();
  const walk = (rel: string): void => {
    for (const name of fs.readdirSync(join(dir, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const p = join(dir, r);
      const st = fs.lstatSync(p);
      const e: Entry = { kind: "other", mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, ino: st.ino, mtimeMs: st.mtimeMs };
      if (st.isSymbolicLink()) {
        e.kind = "link";
        e.target = fs.readlinkSync(p);
      } else if (st.isDirectory()) {
        e.kind = "dir";
      } else if (st.isFile()) {
        e.kind = "file";
        e.sha256 = createHash("sha256").update(fs.readFileSync(p)).digest("hex");
      }
      out.set(r, e);
      if (e.kind === "dir") walk(r);
    }
  };
  walk("");
  return out;
}

/**
 * What changed from `a` to `b`, sorted by path: "+ p" added, "- p" removed,
 * "~ p" kind, mode, owner, content or target changed. With `inodes`, a
 * regular file rewritten with the same bytes (new inode or mtime) counts too.
 */
export function treeChanges(a: Snapshot, b: Snapshot, inodes = false): string[] {
  const out: string[] = [];
  for (const [p, e] of a) {
    const f = b.get(p);
    if (!f) out.push(`- ${p}`);
    else if (
      e.kind !== f.kind ||
      e.mode !== f.mode ||
      e.uid !== f.uid ||
      e.gid !== f.gid ||
      e.sha256 !== f.sha256 ||
      e.target !== f.target ||
      (inodes && e.kind === "file" && (e.ino !== f.ino || e.mtimeMs !== f.mtimeMs))
    )
      out.push(`~ ${p}`);
  }
  for (const p of b.keys()) if (!a.has(p)) out.push(`+ ${p}`);
  return out.sort(byPath);
}

/** Change lines ("+ path", "~ path"...) ordered by path, byte-wise. */
export function byPath(x: string, y: string): number {
  const a = x.slice(2);
  const b = y.slice(2);
  return a < b ? -1 : a > b ? 1 : 0;
}
