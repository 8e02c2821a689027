// The fault suite, filesystem side (issue 6): the built binary, run for real
// against the project's metadata emulator (real sockets) in scratch roots
// made hostile: symlinked ~/.ssh and authorized_keys, wrong owners and
// modes, a read-only state directory, a full disk, a missing home; killed
// with SIGKILL at random points; run ten times in a row; moved to a new
// instance. Every case snapshots the whole root before and after (path ->
// type, mode, owner, sha256 or link target) and names exactly what may
// differ: what was there is still there, and nothing else changed.
//
// Mounts happen only inside `unshare --mount --propagation private`, so the
// machine running the tests never sees them.
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import * as fs from "node:fs";
import { spawn, spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BINARY, requireBinary } from "./binary.ts";
import { startEmulator, type Emulator, type InstanceData } from "../scripts/imds-emulator.ts";
import { ENV, sh, snapshotTree as snapshot, treeChanges as changes, byPath, type Snapshot } from "./scratch.ts";

const ID1 = "i-0fa17000000000001";
const ID2 = "i-0fa17000000000002";
const HOST1 = "node-1.fault.internal";
const HOST2 = "node-2.fault.internal";
const OLD_HOSTNAME = "template.localdomain\n";
const ALICE = { uid: 1000, gid: 1000 };

// ---------------------------------------------------------------- helpers

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Run argv (never through a shell); SIGKILL it after `killAfterMs`, or once `killWhen` resolves. */
function run(argv: string[], opts: { killAfterMs?: number; killWhen?: Promise<unknown>; timeoutMs?: number } = {}): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(argv[0]!, argv.slice(1), { env: ENV, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const guard = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 25_000);
    const killer = opts.killAfterMs !== undefined ? setTimeout(() => child.kill("SIGKILL"), opts.killAfterMs) : undefined;
    void opts.killWhen?.then(() => child.kill("SIGKILL"));
    child.once("error", reject);
    child.once("close", (code, signal) => {
      clearTimeout(guard);
      if (killer) clearTimeout(killer);
      resolve({ code, signal, stdout, stderr, ms: performance.now() - started });
    });
  });
}

function imdsArgs(root: string, emu: Emulator, config: string): string[] {
  return [BINARY, "run", "--root", root, "--config", config, "--metadata-url", emu.url];
}

/** Leftovers of an interrupted run: our temp names, user-data copies, and the run lock and its temp files. */
function leftovers(s: Snapshot): string[] {
  return [...s.keys()].filter(
    (p) =>
      /(^|\/)\.[^/]+\.imds-init-[0-9a-f]{12}$/.test(p) ||
      /^var\/lib\/imds-init\/user-data\.[A-Za-z0-9._-]+\.[0-9a-f]{12}$/.test(p) ||
      /^var\/lib\/imds-init\/(lock|\.lock\.\d+\.[0-9a-f]{8})$/.test(p),
  );
}

function read(root: string, rel: string): string {
  return fs.readFileSync(join(root, rel), "utf8");
}

function markers(root: string): string[] {
  const p = join(root, "ud-marker");
  return fs.existsSync(p) ? read(root, "ud-marker").split("\n").filter(Boolean) : [];
}

interface StateFile {
  version: number;
  instance_id?: string;
  first_seen?: string;
  steps: Record<string, { instance_id: string; result: string; at: string; summary?: string }>;
}

function state(root: string): StateFile {
  return JSON.parse(read(root, "var/lib/imds-init/state.json")) as StateFile;
}

function results(root: string): Record<string, string> {
  return Object.fromEntries(Object.entries(state(root).steps).map(([k, v]) => [k, `${v.result} ${v.instance_id}`]));
}

/** Processes chrooted into `root` or below it (user-data scripts a killed run left running). */
function procsIn(root: string): number[] {
  const out: number[] = [];
  for (const pid of fs.readdirSync("/proc")) {
    if (!/^[0-9]+$/.test(pid)) continue;
    try {
      const r = fs.readlinkSync(`/proc/${pid}/root`);
      if (r === root || r.startsWith(root + "/")) out.push(Number(pid));
    } catch {
      // gone, or a kernel thread
    }
  }
  return out;
}

async function waitNoProcsIn(root: string): Promise<void> {
  for (let i = 0; i < 200 && procsIn(root).length > 0; i++) await new Promise((r) => setTimeout(r, 25));
  expect(procsIn(root), `processes still chrooted into ${root}`).toEqual([]);
}

/** Keys as authorized_keys lines: "type base64 comment". */
function keyFile(...lines: string[]): string {
  return lines.map((l) => l + "\n").join("");
}

// ---------------------------------------------------------------- fixtures

let scratch: string;
let template: string; // a fresh image: no imds-init state yet
let previous: string; // the same image after a first boot as instance 2
let cfg: string; // ssh_keys.users: [root, alice]
let cfgBob: string; // ssh_keys.users: [root, bob, alice]; bob's home is missing
const pub: Record<"admin" | "aliceOwn" | "ops" | "ci" | "carol", string> = { admin: "", aliceOwn: "", ops: "", ci: "", carol: "" };
let rootKeysBefore: string;
let aliceKeysBefore: string;
let emu1: Emulator; // instance 1: keys ops, ci
let emu2: Emulator; // instance 2: keys ops, carol
let emuWait: Emulator; // instance 1, user-data that waits for ROOT/go
let slowData: InstanceData; // instance 1, user-data that sleeps: time to be killed in
let rootCount = 0;

function userData(id: string, extra = ""): string {
  return `#!/bin/sh\necho ${id} >>/ud-marker\n${extra}echo "user-data for ${id} done"\n`;
}

function instance(id: string, host: string, keys: [string, string][], ud: string): InstanceData {
  return {
    "meta-data": {
      "ami-id": "ami-0fa170000000000aa",
      "instance-id": id,
      "instance-type": "t3.micro",
      "local-hostname": host,
      hostname: host,
      "public-keys": keys.map(([name, key]) => ({ name, "openssh-key": key })),
    },
    "user-data": ud,
  };
}

/** A copy of `src` (default: the template) at a new scratch path. */
function newRoot(src = template): string {
  const dst = join(scratch, `root-${++rootCount}`);
  sh("cp", ["-a", src, dst]);
  return dst;
}

function buildTemplate(dir: string): void {
  for (const d of ["etc/ssh", "var/log"]) fs.mkdirSync(join(dir, d), { recursive: true, mode: 0o755 });
  fs.mkdirSync(join(dir, "root/.ssh"), { recursive: true, mode: 0o700 });
  fs.chmodSync(join(dir, "root"), 0o700);
  fs.mkdirSync(join(dir, "home/alice/.ssh"), { recursive: true, mode: 0o700 });
  fs.chownSync(join(dir, "home/alice"), ALICE.uid, ALICE.gid);
  fs.chmodSync(join(dir, "home/alice"), 0o700);
  fs.chownSync(join(dir, "home/alice/.ssh"), ALICE.uid, ALICE.gid);
  fs.writeFileSync(
    join(dir, "etc/passwd"),
    "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\nbob:x:1001:1001:Bob:/home/bob:/bin/sh\n",
  );
  fs.writeFileSync(join(dir, "etc/hostname"), OLD_HOSTNAME, { mode: 0o644 });
  // user-data runs chrooted into the root: a shell, sleep and their libraries.
  for (const bin of ["/bin/sh", "/bin/sleep"]) {
    const libs = sh("ldd", [fs.realpathSync(bin)]).match(/\/[^ \t\n]*/g) ?? [];
    for (const f of [bin, ...libs]) {
      fs.mkdirSync(join(dir, f, ".."), { recursive: true });
      sh("cp", ["-L", f, join(dir, f)]);
    }
  }
  sh("ssh-keygen", ["-q", "-A", "-f", dir]);
  fs.writeFileSync(join(dir, "root/.ssh/authorized_keys"), rootKeysBefore, { mode: 0o600 });
  fs.writeFileSync(join(dir, "home/alice/.ssh/authorized_keys"), aliceKeysBefore, { mode: 0o600 });
  fs.chownSync(join(dir, "home/alice/.ssh/authorized_keys"), ALICE.uid, ALICE.gid);
}

beforeAll(async () => {
  requireBinary();
  scratch = fs.realpathSync(fs.mkdtempSync(join(tmpdir(), "imds-faults-fs-")));
  fs.mkdirSync(join(scratch, "keys"));
  for (const name of Object.keys(pub) as (keyof typeof pub)[]) {
    sh("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", `${name}@fault`, "-f", join(scratch, "keys", name)]);
    pub[name] = read(join(scratch, "keys"), `${name}.pub`).trim();
  }
  // An admin's hand-made file: a comment, a key with options, no final newline.
  rootKeysBefore = `# keys installed by hand\nno-pty,from="10.0.0.0/8" ${pub.admin}`;
  aliceKeysBefore = keyFile(pub.aliceOwn);

  const conf = (users: string) => `metadata:\n  deadline_s: 10\nssh_keys:\n  users: [${users}]\nuser_data:\n  timeout_s: 30\n`;
  cfg = join(scratch, "imds-init.yaml");
  fs.writeFileSync(cfg, conf("root, alice"));
  cfgBob = join(scratch, "imds-init-bob.yaml");
  fs.writeFileSync(cfgBob, conf("root, bob, alice"));

  const keys1: [string, string][] = [["ops", pub.ops], ["ci", pub.ci]];
  const keys2: [string, string][] = [["ops", pub.ops], ["carol", pub.carol]];
  emu1 = await startEmulator({ data: instance(ID1, HOST1, keys1, userData(ID1)) });
  emu2 = await startEmulator({ data: instance(ID2, HOST2, keys2, userData(ID2)) });
  slowData = instance(ID1, HOST1, keys1, userData(ID1, "sleep 0.2\n"));
  emuWait = await startEmulator({
    data: instance(ID1, HOST1, keys1, userData(ID1, "i=0; while [ ! -e /go ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done\n")),
  });

  template = join(scratch, "template");
  buildTemplate(template);
  previous = newRoot();
  const r = await run(imdsArgs(previous, emu2, cfg));
  expect(r.code, r.stderr).toBe(0);
  expect(markers(previous)).toEqual([ID2]);
});

afterAll(async () => {
  await Promise.all([emu1, emu2, emuWait].map((e) => e?.close()));
  if (scratch) {
    for (let i = 0; i < 200 && procsIn(scratch).length > 0; i++) await new Promise((r) => setTimeout(r, 25));
    fs.rmSync(scratch, { recursive: true, force: true });
  }
});

// What a first boot as instance 1 changes in the template, and nothing else.
const FIRST_BOOT = [
  "~ etc/hostname",
  "~ home/alice/.ssh/authorized_keys",
  "~ root/.ssh/authorized_keys",
  "+ ud-marker",
  "+ var/lib",
  "+ var/lib/imds-init",
  "+ var/lib/imds-init/state.json",
  "+ var/log/imds-init-user-data.log",
  "+ var/log/imds-init.log",
];

// What a booted root changes when it boots as a new instance.
const NEW_INSTANCE = [
  "~ etc/hostname",
  "~ home/alice/.ssh/authorized_keys",
  "~ root/.ssh/authorized_keys",
  "~ ud-marker",
  "~ var/lib/imds-init/state.json",
  "~ var/log/imds-init-user-data.log",
  "~ var/log/imds-init.log",
];

/** The template's authorized_keys after instance 1 (ops, ci) was merged in. */
function rootKeysAfter1(): string {
  return rootKeysBefore + "\n" + keyFile(pub.ops, pub.ci);
}
function aliceKeysAfter1(): string {
  return aliceKeysBefore + keyFile(pub.ops, pub.ci);
}

// ---------------------------------------------------------------- hostile filesystem

describe("hostile filesystem", () => {
  const symlinkCases = [
    { what: "~/.ssh a symlink to a directory outside the root", link: "root/.ssh", target: "dir", word: ".ssh" },
    { what: "~/.ssh a dangling symlink", link: "root/.ssh", target: "missing", word: ".ssh" },
    { what: "authorized_keys a symlink to a file outside the root", link: "root/.ssh/authorized_keys", target: "file", word: ".ssh/authorized_keys" },
    { what: "authorized_keys a dangling symlink", link: "root/.ssh/authorized_keys", target: "missing", word: ".ssh/authorized_keys" },
  ] as const;

  it.concurrent.each(symlinkCases)("$what: refused for that user, target untouched, exit 1, other users and steps done", async ({ link, target, word }) => {
    const root = newRoot();
    const outside = join(scratch, `outside-${rootCount}`);
    fs.mkdirSync(outside);
    fs.mkdirSync(join(outside, "dir"), { mode: 0o700 });
    fs.writeFileSync(join(outside, "dir/authorized_keys"), "precious, not ours\n", { mode: 0o644 });
    fs.writeFileSync(join(outside, "file"), "precious, not ours\n", { mode: 0o644 });
    fs.rmSync(join(root, link), { recursive: true });
    fs.symlinkSync(join(outside, target), join(root, link));
    const before = snapshot(root);
    const outsideBefore = snapshot(outside);

    const r = await run(imdsArgs(root, emu1, cfg));
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain(`imds-init: ssh-keys: root: ${join(root, "root", word)} is a symlink; refusing to use it\n`);
    expect(r.stderr).not.toContain("internal error");
    expect(snapshot(outside), "the symlink's target").toEqual(outsideBefore);
    expect(fs.readlinkSync(join(root, link))).toBe(join(outside, target));
    expect(read(root, "home/alice/.ssh/authorized_keys")).toBe(aliceKeysAfter1());
    expect(read(root, "etc/hostname")).toBe(`${HOST1}\n`);
    expect(results(root)).toEqual({
      hostname: `ok ${ID1}`,
      "ssh-keys": `failed ${ID1}`,
      "user-data": `ok ${ID1}`,
      fingerprints: `ok ${ID1}`,
      basesystem: `ok ${ID1}`,
    });
    expect(markers(root)).toEqual([ID1]);
    expect(r.stdout).toContain("-----BEGIN SSH HOST KEY FINGERPRINTS-----");
    expect(changes(before, snapshot(root))).toEqual(FIRST_BOOT.filter((c) => c !== "~ root/.ssh/authorized_keys"));
  });

  it.concurrent("wrong owner and mode on existing ~/.ssh and authorized_keys: fixed to what sshd StrictModes accepts, reported, keys merged", async () => {
    const root = newRoot();
    // alice's: owned by someone else and world-writable (StrictModes rejects both);
    // root's: 0755/0644, accepted by sshd but looser than imds-init makes them.
    const aliceSsh = join(root, "home/alice/.ssh");
    fs.chownSync(aliceSsh, 1234, 1234);
    fs.chmodSync(aliceSsh, 0o777);
    fs.chownSync(join(aliceSsh, "authorized_keys"), 1234, 1234);
    fs.chmodSync(join(aliceSsh, "authorized_keys"), 0o666);
    fs.chmodSync(join(root, "root/.ssh"), 0o755);
    fs.chmodSync(join(root, "root/.ssh/authorized_keys"), 0o644);
    const before = snapshot(root);

    const r = await run(imdsArgs(root, emu1, cfg));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`imds-init: ssh-keys: fixed ${aliceSsh}: owner 1234:1234 -> 1000:1000, mode 777 -> 700\n`);
    expect(r.stderr).toContain(`imds-init: ssh-keys: fixed ${aliceSsh}/authorized_keys: owner 1234:1234 -> 1000:1000, mode 666 -> 600\n`);
    expect(r.stderr).toContain(`imds-init: ssh-keys: fixed ${join(root, "root/.ssh")}: mode 755 -> 700\n`);
    expect(r.stderr).toContain(`imds-init: ssh-keys: fixed ${join(root, "root/.ssh/authorized_keys")}: mode 644 -> 600\n`);
    const after = snapshot(root);
    expect(after.get("home/alice/.ssh")).toMatchObject({ kind: "dir", mode: 0o700, ...ALICE });
    expect(after.get("home/alice/.ssh/authorized_keys")).toMatchObject({ kind: "file", mode: 0o600, ...ALICE });
    expect(after.get("root/.ssh")).toMatchObject({ kind: "dir", mode: 0o700, uid: 0, gid: 0 });
    expect(after.get("root/.ssh/authorized_keys")).toMatchObject({ kind: "file", mode: 0o600, uid: 0, gid: 0 });
    expect(read(root, "home/alice/.ssh/authorized_keys")).toBe(aliceKeysAfter1());
    expect(read(root, "root/.ssh/authorized_keys")).toBe(rootKeysAfter1());
    expect(changes(before, after)).toEqual([...FIRST_BOOT, "~ home/alice/.ssh", "~ root/.ssh"].sort(byPath));

    // Loosened again with every key present: fixed in place, the same file, not rewritten.
    fs.chownSync(join(aliceSsh, "authorized_keys"), 0, 0);
    fs.chmodSync(join(aliceSsh, "authorized_keys"), 0o664);
    const again = snapshot(root);
    const r2 = await run([...imdsArgs(root, emu1, cfg), "--force", "--only", "ssh-keys"]);
    expect(r2.code, r2.stderr).toBe(0);
    expect(r2.stderr).toContain(`imds-init: ssh-keys: fixed ${aliceSsh}/authorized_keys: owner 0:0 -> 1000:1000, mode 664 -> 600\n`);
    const fixed = snapshot(root);
    expect(fixed.get("home/alice/.ssh/authorized_keys")).toMatchObject({ mode: 0o600, ...ALICE, ino: again.get("home/alice/.ssh/authorized_keys")!.ino });
    expect(read(root, "home/alice/.ssh/authorized_keys")).toBe(aliceKeysAfter1());
    expect(changes(again, fixed)).toEqual(["~ home/alice/.ssh/authorized_keys", "~ var/lib/imds-init/state.json", "~ var/log/imds-init.log"]);
  });

  it.concurrent("a missing home directory: an error for that user, not created; other users and steps proceed", async () => {
    const root = newRoot();
    const before = snapshot(root);
    const r = await run(imdsArgs(root, emu1, cfgBob));
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain(`imds-init: ssh-keys: home directory ${join(root, "home/bob")} of user bob does not exist; not creating it\n`);
    expect(fs.existsSync(join(root, "home/bob"))).toBe(false);
    expect(read(root, "root/.ssh/authorized_keys")).toBe(rootKeysAfter1());
    expect(read(root, "home/alice/.ssh/authorized_keys")).toBe(aliceKeysAfter1());
    expect(results(root)).toMatchObject({ hostname: `ok ${ID1}`, "ssh-keys": `failed ${ID1}`, "user-data": `ok ${ID1}`, fingerprints: `ok ${ID1}` });
    expect(markers(root)).toEqual([ID1]);
    expect(changes(before, snapshot(root))).toEqual(FIRST_BOOT);
  });

  it.concurrent("a read-only state directory: clear EROFS errors, exit 1, user-data not run, no partial files; the next boot completes", async () => {
    // An instance-2 machine booting as instance 1 with /var/lib/imds-init read-only
    // (a bind mount made read-only inside a private mount namespace: chmod does not stop root).
    const root = newRoot(previous);
    const dir = join(root, "var/lib/imds-init");
    const before = snapshot(root);
    const script = 'set -e; mount --bind "$1" "$1"; mount -o remount,bind,ro "$1"; shift; exec "$@"';
    const r = await run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", dir, ...imdsArgs(root, emu1, cfg)]);
    expect(r.code, r.stderr).toBe(1);
    const file = join(dir, "state.json");
    expect(r.stderr).toMatch(new RegExp(`^imds-init: cannot save state to ${file}: EROFS: read-only file system`, "m"));
    expect(r.stderr).toMatch(new RegExp(`^imds-init: running without the run lock: cannot create ${dir}/\\.lock\\.\\d+\\.[0-9a-f]{8}: EROFS: read-only file system`, "m"));
    // Its copy cannot be written beside the state, so it never gets as far as recording a start.
    expect(r.stderr).toMatch(new RegExp(`^imds-init: user-data: failed: not run: cannot write ${dir}/user-data\\.${ID1}\\.[0-9a-f]{12}: EROFS: read-only file system.*; tried again at the next boot$`, "m"));
    expect(r.stderr).not.toContain("internal error");
    // The steps that do not need the state directory did their work.
    expect(read(root, "etc/hostname")).toBe(`${HOST1}\n`);
    expect(read(root, "root/.ssh/authorized_keys")).toBe(rootKeysBefore + "\n" + keyFile(pub.ops, pub.carol, pub.ci));
    expect(r.stdout).toContain("-----BEGIN SSH HOST KEY FINGERPRINTS-----");
    expect(markers(root), "user-data must not run when its start cannot be recorded").toEqual([ID2]);
    const after = snapshot(root);
    expect(leftovers(after)).toEqual([]);
    expect(changes(before, after)).toEqual([
      "~ etc/hostname",
      "~ home/alice/.ssh/authorized_keys",
      "~ root/.ssh/authorized_keys",
      "~ var/log/imds-init.log",
    ]);

    // Writable again (the mount is gone with its namespace): the next boot finishes the job.
    const r2 = await run(imdsArgs(root, emu1, cfg));
    expect(r2.code, r2.stderr).toBe(0);
    expect(markers(root)).toEqual([ID2, ID1]);
    expect(Object.values(results(root))).toEqual(Array(5).fill(`ok ${ID1}`));
  });

  it.concurrent("a full disk: authorized_keys, hostname and state never truncated, clear ENOSPC errors, exit 1; the next boot completes", async () => {
    // The whole root on a small tmpfs, filled up, inside a private mount
    // namespace; what the run left there is copied out for inspection.
    const root = newRoot(previous);
    const stage = newRoot(previous);
    const out = join(scratch, `full-out-${rootCount}`);
    fs.mkdirSync(out);
    const before = snapshot(stage);
    const realBefore = snapshot(root);
    expect(changes(realBefore, before)).toEqual([]);
    const script = [
      'R=$1 STAGE=$2 OUT=$3; shift 3',
      'mount -t tmpfs -o size=8m fulldisk "$R" && cp -a "$STAGE/." "$R/" || exit 98',
      'dd if=/dev/zero of="$R/fill" bs=4k 2>/dev/null',
      'echo "fulldisk: free blocks $(stat -f -c %a "$R")" >&2',
      '"$@"; rc=$?',
      'rm -f "$R/fill" && cp -a "$R/." "$OUT/" || exit 99',
      "exit $rc",
    ].join("\n");
    const r = await run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", root, stage, out, ...imdsArgs(root, emu1, cfg)]);
    expect(r.stderr).toContain("fulldisk: free blocks 0\n");
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).not.toContain("internal error");
    expect(r.stderr).toContain("imds-init: cannot write the log file any more (ENOSPC: no space left on device, write); logging to the console only\n");
    expect(r.stderr).toContain(`imds-init: hostname: failed: cannot write ${join(root, "etc/hostname")}: ENOSPC: no space left on device`);
    expect(r.stderr).toContain(`imds-init: ssh-keys: user root: cannot write ${join(root, "root/.ssh/authorized_keys")}: ENOSPC: no space left on device`);
    expect(r.stderr).toContain(`imds-init: ssh-keys: user alice: cannot write ${join(root, "home/alice/.ssh/authorized_keys")}: ENOSPC: no space left on device`);
    expect(r.stderr).toMatch(new RegExp(`^imds-init: cannot save state to ${join(root, "var/lib/imds-init/state.json")}: ENOSPC: no space left on device`, "m"));
    expect(r.stderr).toMatch(/^imds-init: user-data: failed: not run: cannot write .*\/var\/lib\/imds-init\/user-data\.\S+: ENOSPC: .*; tried again at the next boot$/m);
    expect(r.stdout).toContain("-----BEGIN SSH HOST KEY FINGERPRINTS-----");

    // On the full disk: every file as it was, byte for byte, but the log,
    // which may have taken what fitted in its last page before it failed.
    const after = snapshot(out);
    expect(leftovers(after)).toEqual([]);
    expect(changes(before, after).filter((c) => c !== "~ var/log/imds-init.log")).toEqual([]);
    expect(read(out, "var/log/imds-init.log").startsWith(read(stage, "var/log/imds-init.log"))).toBe(true);
    expect(read(out, "var/lib/imds-init/state.json")).toBe(read(stage, "var/lib/imds-init/state.json"));
    // Nothing leaked out of the namespace into the real tree.
    expect(changes(realBefore, snapshot(root))).toEqual([]);

    // With space again, the next boot completes.
    const r2 = await run(imdsArgs(out, emu1, cfg));
    expect(r2.code, r2.stderr).toBe(0);
    expect(markers(out)).toEqual([ID2, ID1]);
    expect(read(out, "etc/hostname")).toBe(`${HOST1}\n`);
  });
});

// ---------------------------------------------------------------- crash safety

describe("crash safety", () => {
  // Old and new complete contents for a machine of instance 2 booting as instance 1.
  const OLD_HOST2 = () => `${HOST2}\n`;
  const oldKeys = () => rootKeysBefore + "\n" + keyFile(pub.ops, pub.carol);
  const newKeys = () => oldKeys() + keyFile(pub.ci);
  const oldAlice = () => aliceKeysBefore + keyFile(pub.ops, pub.carol);
  const newAlice = () => oldAlice() + keyFile(pub.ci);
  // Paths a run may change, killed or not.
  const mayChange = new Set([
    "etc/hostname",
    "root/.ssh/authorized_keys",
    "home/alice/.ssh/authorized_keys",
    "ud-marker",
    "var/lib/imds-init/state.json",
    "var/log/imds-init.log",
    "var/log/imds-init-user-data.log",
  ]);

  /** state.json is complete: it parses and is exactly what imds-init writes for that object. */
  function completeState(text: string): StateFile {
    const s = JSON.parse(text) as StateFile;
    expect(JSON.stringify(s, null, 2) + "\n").toBe(text);
    expect(s.version).toBe(1);
    return s;
  }

  /** After the unkilled run: everything done for instance 1, and user-data ran at most once. */
  async function expectCompleted(root: string, before: Snapshot): Promise<void> {
    await waitNoProcsIn(root);
    expect(read(root, "etc/hostname")).toBe(`${HOST1}\n`);
    expect(read(root, "root/.ssh/authorized_keys")).toBe(newKeys());
    expect(read(root, "home/alice/.ssh/authorized_keys")).toBe(newAlice());
    const s = completeState(read(root, "var/lib/imds-init/state.json"));
    expect(s.instance_id).toBe(ID1);
    for (const [name, rec] of Object.entries(s.steps)) {
      expect(rec.instance_id, name).toBe(ID1);
      expect(rec.result, name).toBe(name === "user-data" && rec.result === "started" ? "started" : "ok");
    }
    const ran = markers(root).filter((m) => m === ID1).length;
    expect(ran, "user-data runs for instance 1").toBeLessThanOrEqual(1);
    if (s.steps["user-data"]!.result === "ok") expect(ran).toBe(1);
    expect(markers(root).filter((m) => m === ID2)).toEqual([ID2]);
    const after = snapshot(root);
    expect(leftovers(after)).toEqual([]);
    for (const c of changes(before, after)) expect(mayChange.has(c.slice(2)), c).toBe(true);
  }

  it.concurrent("temp files of a write cut short are removed by the next run; names not of our pattern are kept", async ({ expect }) => {
    const root = newRoot(previous);
    const hex = "0123456789ab";
    // What a run killed inside each write would leave: part of the new content.
    const stale = [
      `etc/.hostname.imds-init-${hex}`,
      `root/.ssh/.authorized_keys.imds-init-${hex}`,
      `home/alice/.ssh/.authorized_keys.imds-init-${hex}`,
      `var/lib/imds-init/.state.json.imds-init-${hex}`,
      `var/lib/imds-init/user-data.${ID1}.${hex}`,
    ];
    const notOurs = [`etc/.hostname.imds-init-${hex}0`, `etc/.hostname.imds-init-notours`, `root/.ssh/authorized_keys.imds-init-${hex}`, `var/lib/imds-init/user-data.${ID1}`];
    for (const p of [...stale, ...notOurs]) fs.writeFileSync(join(root, p), "half writ", { mode: 0o600 });
    const before = snapshot(root);
    const r = await run(imdsArgs(root, emu1, cfg));
    expect(r.code, r.stderr).toBe(0);
    const after = snapshot(root);
    expect(leftovers(after)).toEqual([]);
    expect(changes(before, after)).toEqual(
      [
        ...stale.map((p) => `- ${p}`),
        ...NEW_INSTANCE,
      ].sort(byPath),
    );
    for (const p of notOurs) expect(read(root, p)).toBe("half writ");
  });

  it("killed while user-data runs: it never runs again, its copy is removed by the next run", async () => {
    const root = newRoot(previous);
    const before = snapshot(root);
    // SIGKILL imds-init once user-data has started (its marker line is there);
    // the script is in its own session and survives, as at a real crash.
    const started = (async () => {
      for (let i = 0; i < 1000 && !markers(root).includes(ID1); i++) await new Promise((r) => setTimeout(r, 10));
    })();
    const killed = await run(imdsArgs(root, emuWait, cfg), { killWhen: started });
    expect(killed.signal, killed.stderr).toBe("SIGKILL");
    expect(markers(root)).toEqual([ID2, ID1]);
    expect(procsIn(root).length, "the user-data script, still running").toBeGreaterThan(0);
    expect(state(root).steps["user-data"]).toMatchObject({ instance_id: ID1, result: "started" });
    expect(leftovers(snapshot(root)).filter((p) => p.startsWith("var/lib/imds-init/user-data."))).toHaveLength(1);
    fs.writeFileSync(join(root, "go"), "");
    await waitNoProcsIn(root);
    fs.rmSync(join(root, "go"));

    const r = await run(imdsArgs(root, emuWait, cfg));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(new RegExp(`^imds-init: user-data: already ran for ${ID1} at .* \\(started\\); --force runs it again$`, "m"));
    expect(markers(root)).toEqual([ID2, ID1]);
    await expectCompleted(root, before);
  });

  it("two runs at once: the second waits for the first, finds everything done, and user-data runs once", async () => {
    const root = newRoot(previous);
    const before = snapshot(root);
    const first = run(imdsArgs(root, emuWait, cfg));
    // The first run is inside user-data (its marker is there) and holds the lock.
    for (let i = 0; i < 1000 && !markers(root).includes(ID1); i++) await new Promise((r) => setTimeout(r, 10));
    expect(markers(root)).toEqual([ID2, ID1]);
    expect(fs.existsSync(join(root, "var/lib/imds-init/lock"))).toBe(true);
    const second = run(imdsArgs(root, emuWait, cfg));
    // Let the second one start and find the lock taken, then let the script finish.
    await new Promise((r) => setTimeout(r, 1500));
    fs.writeFileSync(join(root, "go"), "");
    const [r1, r2] = await Promise.all([first, second]);
    fs.rmSync(join(root, "go"));
    expect(r1.code, r1.stderr).toBe(0);
    expect(r2.code, r2.stderr).toBe(0);
    expect(r2.stderr).toMatch(/^imds-init: waiting for the imds-init run with pid \d+ \(since \S+\) to finish$/m);
    for (const step of ["hostname", "ssh-keys", "user-data", "basesystem"])
      expect(r2.stderr).toMatch(new RegExp(`^imds-init: ${step}: already done for ${ID1} at `, "m"));
    expect(markers(root)).toEqual([ID2, ID1]);
    await expectCompleted(root, before);
  });

  it("a lock left by a run that was killed (or by another boot) does not stop the next run", async () => {
    const root = newRoot(previous);
    const before = snapshot(root);
    // A pid that is certainly gone, and a lock line naming it.
    const gone = spawnSync("true").pid!;
    const lock = join(root, "var/lib/imds-init/lock");
    fs.writeFileSync(lock, `imds-init lock: pid ${gone} start 1 boot ${read("/proc/sys/kernel/random", "boot_id").trim()} since 2026-01-01T00:00:00.000Z\n`, { mode: 0o600 });
    fs.writeFileSync(join(root, "var/lib/imds-init", `.lock.${gone}.0123abcd`), "half");
    const r = await run(imdsArgs(root, emu1, cfg));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toContain("waiting for");
    expect(markers(root)).toEqual([ID2, ID1]);
    await expectCompleted(root, before);
  });

  it("SIGKILL at random points, 40 times: every file old or new and complete, the next run completes, user-data at most once", { timeout: 90_000 }, async () => {
    const iterations = 40;
    const parallel = 5;
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    // Each run gets its own emulator, answering after 40 ms, so that its
    // requests say how far the run has got (the binary's own start-up is a
    // large, variable part of a run and changes nothing).
    const slowEmulator = async (): Promise<{ emu: Emulator; t0: number }> => {
      const emu = await startEmulator({ data: slowData, latencyMs: 40 });
      return { emu, t0: performance.now() };
    };
    // How long start-up and the work after it take here, under the same load as the killed runs.
    const calib = await Promise.all(
      Array.from({ length: parallel }, async () => {
        const root = newRoot(previous);
        const { emu, t0 } = await slowEmulator();
        const spawned = performance.now();
        const r = await run(imdsArgs(root, emu, cfg));
        expect(r.code, r.stderr).toBe(0);
        await waitNoProcsIn(root);
        await emu.close();
        const startup = t0 + emu.requests[0]!.at - spawned;
        return { startup, work: r.ms - startup };
      }),
    );
    const startup = Math.min(...calib.map((c) => c.startup));
    const work = Math.max(...calib.map((c) => c.work)) * 1.1;
    const stages = new Map<string, number>();
    let midRun = 0;

    const once = async (i: number): Promise<void> => {
      const root = newRoot(previous);
      const before = snapshot(root);
      const stateBefore = read(root, "var/lib/imds-init/state.json");
      const { emu } = await slowEmulator();
      // Most kills land 0..work ms after the first request; one in eight during start-up.
      const k =
        i % 8 === 0
          ? await run(imdsArgs(root, emu, cfg), { killAfterMs: Math.random() * startup })
          : await run(imdsArgs(root, emu, cfg), {
              killWhen: (async () => {
                for (let n = 0; n < 5000 && emu.requests.length === 0; n++) await sleep(2);
                await sleep(Math.random() * work);
              })(),
            });

      // Right after the kill: each file is the old or the new complete content.
      const host = read(root, "etc/hostname");
      expect([OLD_HOST2(), `${HOST1}\n`]).toContain(host);
      const keys = read(root, "root/.ssh/authorized_keys");
      expect([oldKeys(), newKeys()]).toContain(keys);
      expect([oldAlice(), newAlice()]).toContain(read(root, "home/alice/.ssh/authorized_keys"));
      const text = read(root, "var/lib/imds-init/state.json");
      const s = completeState(text);
      if (text !== stateBefore) expect(s.instance_id).toBe(ID1);
      const ud = s.steps["user-data"]!;
      const stage = [
        k.signal ?? `exit ${k.code}`,
        host === OLD_HOST2() ? "hostname old" : "hostname new",
        keys === oldKeys() ? "keys old" : "keys new",
        text === stateBefore ? "state old" : `state new, user-data ${ud.instance_id === ID1 ? ud.result : "due"}`,
      ].join(", ");
      stages.set(stage, (stages.get(stage) ?? 0) + 1);
      // Killed with some of the work done and some not.
      const done = s.steps.basesystem?.instance_id === ID1;
      if (k.signal === "SIGKILL" && (host !== OLD_HOST2() || text !== stateBefore) && !done) midRun++;

      // The next, unkilled run completes.
      await waitNoProcsIn(root);
      const r = await run(imdsArgs(root, emu, cfg));
      await emu.close();
      expect(r.code, `${stage}\n${r.stderr}`).toBe(0);
      await expectCompleted(root, before);
      fs.rmSync(root, { recursive: true });
    };
    for (let done = 0; done < iterations; done += parallel)
      await Promise.all(Array.from({ length: Math.min(parallel, iterations - done) }, (_, j) => once(done + j)));

    // The kills landed all over the run, not only before it started or after it ended.
    const seen = JSON.stringify([...stages], null, 1);
    expect(stages.size, seen).toBeGreaterThanOrEqual(3);
    expect(midRun, seen).toBeGreaterThanOrEqual(3);
  });

});

// ---------------------------------------------------------------- idempotence

describe("idempotence", () => {
  /** state.json and the user-data log with what must differ between runs made equal: times, durations, the root's path. */
  function normalized(root: string, rel: string): string {
    return read(root, rel)
      .replaceAll(root, "ROOT")
      .replace(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/g, "TIME")
      .replace(/"duration_ms": \d+/g, '"duration_ms": N')
      .replace(/after \d+\.\d s/g, "after N s");
  }

  it("ten runs in a row leave exactly what one run leaves; a new instance-id re-runs the per-instance steps exactly once", { timeout: 60_000 }, async () => {
    const one = newRoot();
    const ten = newRoot();
    const r1 = await run(imdsArgs(one, emu1, cfg));
    expect(r1.code, r1.stderr).toBe(0);

    const first = await run(imdsArgs(ten, emu1, cfg));
    expect(first.code, first.stderr).toBe(0);
    const afterFirst = snapshot(ten);
    const stateFirst = state(ten);
    for (let i = 2; i <= 10; i++) {
      const r = await run(imdsArgs(ten, emu1, cfg));
      expect(r.code, `run ${i}: ${r.stderr}`).toBe(0);
      for (const step of ["hostname", "ssh-keys", "user-data", "basesystem"])
        expect(r.stderr, `run ${i}`).toMatch(new RegExp(`^imds-init: ${step}: already done for ${ID1} at `, "m"));
      expect(r.stderr).not.toMatch(/set to|installed|fixed|created|script exited|error|fail/i);
      expect(r.stdout).toBe(first.stdout); // the fingerprint block, at every boot
    }
    expect(markers(ten)).toEqual([ID1]);

    // Run 10 against run 1 on the same machine: no file rewritten (same inode,
    // same mtime) but the state (the fingerprints record, every boot) and the log.
    const afterTen = snapshot(ten);
    expect(changes(afterFirst, afterTen, true)).toEqual(["~ var/lib/imds-init/state.json", "~ var/log/imds-init.log"]);
    const stateTen = state(ten);
    const { fingerprints: fpFirst, ...perInstanceFirst } = stateFirst.steps;
    const { fingerprints: fpTen, ...perInstanceTen } = stateTen.steps;
    expect(perInstanceTen).toEqual(perInstanceFirst); // not one byte of a per-instance record changed
    expect({ ...stateTen, steps: {} }).toEqual({ ...stateFirst, steps: {} }); // instance_id, first_seen
    expect(fpTen).toMatchObject({ instance_id: ID1, result: "ok", summary: fpFirst!.summary });
    expect(read(ten, "var/log/imds-init.log").split("\n").filter((l) => l.includes('"msg":"printed 3 host key fingerprints"'))).toHaveLength(10);


    // Ten runs against one run on an identical machine: the same files, modes
    // and owners; the state and user-data log equal but for times, durations
    // and the root's path; the imds-init log is a log (one run's lines vs ten).
    const a = snapshot(one);
    expect(changes(a, afterTen)).toEqual(["~ var/lib/imds-init/state.json", "~ var/log/imds-init-user-data.log", "~ var/log/imds-init.log"]);
    expect(normalized(ten, "var/lib/imds-init/state.json")).toBe(normalized(one, "var/lib/imds-init/state.json"));
    expect(normalized(ten, "var/log/imds-init-user-data.log")).toBe(normalized(one, "var/log/imds-init-user-data.log"));
    for (const p of ["var/lib/imds-init/state.json", "var/log/imds-init-user-data.log", "var/log/imds-init.log"]) {
      const { mode, uid, gid } = a.get(p)!;
      expect(afterTen.get(p), p).toMatchObject({ mode, uid, gid });
    }
    expect(changes(snapshot(template), a)).toEqual(FIRST_BOOT);

    // The steps themselves are idempotent, not only skipped: forced again
    // (as an admin debugging a boot would), they find nothing to change.
    const forced = await run([...imdsArgs(ten, emu1, cfg), "--force", "--skip", "user-data"]);
    expect(forced.code, forced.stderr).toBe(0);
    expect(forced.stderr).toContain(`imds-init: hostname: already ${HOST1}\n`);
    expect(forced.stderr).toContain("imds-init: ssh-keys: 2 keys already present for root; 2 keys already present for alice\n");
    expect(changes(afterTen, snapshot(ten), true)).toEqual(["~ var/lib/imds-init/state.json", "~ var/log/imds-init.log"]);
    expect(markers(ten)).toEqual([ID1]);

    // A new instance-id: the per-instance steps run once more, keys are merged, not clobbered.
    const moved = await run(imdsArgs(ten, emu2, cfg));
    expect(moved.code, moved.stderr).toBe(0);
    expect(moved.stderr).toContain(`imds-init: new instance ${ID2} (was ${ID1}): once-per-instance steps are due\n`);
    expect(moved.stderr).toContain(`imds-init: hostname: set to ${HOST2} (/etc/hostname)\n`);
    expect(moved.stderr).toContain("imds-init: ssh-keys: installed 1 key for root (1 already present); installed 1 key for alice (1 already present)\n");
    expect(markers(ten)).toEqual([ID1, ID2]);
    expect(read(ten, "etc/hostname")).toBe(`${HOST2}\n`);
    expect(read(ten, "root/.ssh/authorized_keys")).toBe(rootKeysAfter1() + keyFile(pub.carol));
    expect(read(ten, "home/alice/.ssh/authorized_keys")).toBe(aliceKeysAfter1() + keyFile(pub.carol));
    expect(Object.values(results(ten))).toEqual(Array(5).fill(`ok ${ID2}`));
    const afterMove = snapshot(ten);
    expect(changes(afterTen, afterMove)).toEqual(NEW_INSTANCE);
    for (let i = 0; i < 3; i++) {
      const r = await run(imdsArgs(ten, emu2, cfg));
      expect(r.code, r.stderr).toBe(0);
    }
    expect(markers(ten)).toEqual([ID1, ID2]);
    expect(changes(afterMove, snapshot(ten), true)).toEqual(["~ var/lib/imds-init/state.json", "~ var/log/imds-init.log"]);
  });
});
