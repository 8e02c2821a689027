// rc/imds-init, the SysV init script, run for real: the built binary, the
// project's metadata emulator, and a scratch root (IMDS_INIT_ROOT) holding
// what a booting system has at that point.
import { describe, expect, it, beforeAll, afterAll, beforeEach } from "vitest";
import { execFile, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createServer } from "node:net";
import { startEmulator, loadData, type Emulator } from "../scripts/imds-emulator.ts";
import { BINARY, requireBinary } from "./binary.ts";

const RC = fileURLToPath(new URL("../rc/imds-init", import.meta.url));
const data = loadData(new URL("../scripts/demo-instance.json", import.meta.url));
const meta = data["meta-data"] as Record<string, unknown>;
const keys = (meta["public-keys"] as { "openssh-key": string }[]).map((k) => k["openssh-key"]);
const bootId = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();

let emu: Emulator;
let dir: string;
let root: string;
let consoleFile: string;

beforeAll(async () => {
  requireBinary();
  // No user-data: under --root a script runs chrooted into the root, which
  // has no shell here (test/user-data.test.ts and the boot test run scripts).
  emu = await startEmulator({ data: { ...data, "user-data": null } });
});
afterAll(async () => {
  await emu?.close();
});

function makeRoot(): void {
  dir = mkdtempSync(join(tmpdir(), "imds-rc-"));
  root = join(dir, "root");
  for (const d of ["etc/ssh", "root", "var/run", "var/log", "var/lib"]) mkdirSync(join(root, d), { recursive: true });
  writeFileSync(join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
  writeFileSync(join(root, "etc/imds-init.yaml"), `metadata:\n  urls: [${emu.url}]\n  deadline_s: 5\n`);
  consoleFile = join(dir, "console");
  writeFileSync(consoleFile, "");
}

// Asynchronous: the emulator answers from this process's event loop. The
// script's own output pipes close when it exits: the background user-data
// run writes to IMDS_INIT_CONSOLE, not to them.
function rc(action: string, env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(
      RC,
      action ? [action] : [],
      { encoding: "utf8", timeout: 60_000, env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", IMDS_INIT: BINARY, IMDS_INIT_ROOT: root, IMDS_INIT_CONSOLE: consoleFile, ...env } },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== "number") reject(err);
        else resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
      },
    );
  });
}

/** The state file's record for a step, once it has one with a final result. */
async function finalRecord(step: string, timeoutMs = 20_000): Promise<{ result: string; instance_id: string }> {
  const file = join(root, "var/lib/imds-init/state.json");
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (existsSync(file)) {
      const rec = (JSON.parse(readFileSync(file, "utf8")) as { steps: Record<string, { result: string; instance_id: string }> }).steps[step];
      if (rec && rec.result !== "started") return rec;
    }
    if (Date.now() > end) throw new Error(`no final ${step} record in ${file} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function fingerprintsOf(rootDir: string): string[] {
  const dir = join(rootDir, "etc/ssh");
  return readdirSync(dir)
    .filter((f) => f.endsWith(".pub"))
    .sort()
    .map((f) => {
      const r = spawnSync("ssh-keygen", ["-lf", join(dir, f)], { encoding: "utf8" });
      return r.stdout.trim();
    });
}

describe("rc/imds-init", () => {
  beforeEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
    makeRoot();
  });

  it("start: makes host keys, runs the steps, prints the fingerprint block, runs user-data in the background; once per boot", async () => {
    const r = await rc("start");
    expect(r.stderr).toContain("imds-init: hostname: set to");
    expect(r.code).toBe(0);
    // Host keys made for the root, and exactly those fingerprinted.
    const fps = fingerprintsOf(root);
    expect(fps.length).toBeGreaterThanOrEqual(2);
    const block = ["ec2: " + "#".repeat(61), "ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----", ...fps.map((f) => `ec2: ${f}`), "ec2: -----END SSH HOST KEY FINGERPRINTS-----", "ec2: " + "#".repeat(61)];
    expect(r.stdout).toContain(block.join("\n") + "\n");
    expect(readFileSync(join(root, "etc/hostname"), "utf8").trim()).toBe(meta["local-hostname"]);
    const authorized = readFileSync(join(root, "root/.ssh/authorized_keys"), "utf8");
    for (const k of keys) expect(authorized).toContain(k.split(" ").slice(0, 2).join(" "));
    expect(readFileSync(join(root, "var/run/imds-init.boot"), "utf8").trim()).toBe(bootId);

    // user-data: not in the foreground run; done by the background one.
    expect(r.stderr).not.toContain("user-data");
    const rec = await finalRecord("user-data");
    expect(rec).toEqual(expect.objectContaining({ instance_id: meta["instance-id"] }));
    await expect.poll(() => readFileSync(consoleFile, "utf8"), { timeout: 5000 }).toContain("imds-init: user-data: no user-data");

    // A second start in the same boot does nothing.
    const again = await rc("start");
    expect(again).toEqual({ code: 0, stdout: "imds-init: already done this boot (restart runs it again)\n", stderr: "" });
  });

  it("restart runs the steps again in the same boot; per-instance steps are already done", async () => {
    expect((await rc("start")).code).toBe(0);
    const r = await rc("restart");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("-----BEGIN SSH HOST KEY FINGERPRINTS-----");
    expect(r.stderr).toMatch(/hostname: already done for i-0abc4d2f6e8a91b37/);
  });

  it("status calls imds-init status on the root", async () => {
    expect((await rc("start")).code).toBe(0);
    await finalRecord("user-data");
    const r = await rc("status");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(meta["instance-id"] as string);
    expect(r.stdout).toContain(join(root, "var/lib/imds-init/state.json"));
  });

  it("stop does nothing, and succeeds", async () => {
    expect(await rc("stop")).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(readdirSync(join(root, "etc/ssh"))).toEqual([]);
  });

  it("anything else: usage, exit 2", async () => {
    for (const a of ["reload", "bogus", ""]) {
      const r = await rc(a);
      expect(r.code).toBe(2);
      expect(r.stderr).toBe(`usage: ${RC} {start|stop|restart|force-reload|status}\n`);
    }
  });

  it("a step failing (metadata service unreachable): exit 1, and the fingerprints are still printed", async () => {
    // A port that was just free: nothing answers there.
    const srv = createServer().listen(0, "127.0.0.1");
    await new Promise((r) => srv.once("listening", r));
    const port = (srv.address() as { port: number }).port;
    await new Promise((r) => srv.close(r));
    writeFileSync(join(root, "etc/imds-init.yaml"), `metadata:\n  urls: [http://127.0.0.1:${port}]\n  deadline_s: 1\n`);
    const r = await rc("start");
    expect(r.code).toBe(1);
    expect(r.stdout).toContain("-----BEGIN SSH HOST KEY FINGERPRINTS-----");
    // Not marked done: the next start tries again.
    expect(existsSync(join(root, "var/run/imds-init.boot"))).toBe(false);
  });

  it("a configuration error: exit 6 (LSB: not configured), nothing run", async () => {
    writeFileSync(join(root, "etc/imds-init.yaml"), "hostname:\n  sorce: hostname\n");
    const r = await rc("start");
    expect(r.code).toBe(6);
    expect(r.stderr).toContain('unknown key "hostname.sorce"');
    expect(existsSync(join(root, "etc/hostname"))).toBe(false);
  });

  it("the binary missing: start exits 5, status 4 (LSB: not installed, unknown)", async () => {
    const env = { IMDS_INIT: join(dir, "no-such-imds-init") };
    expect(await rc("start", env)).toMatchObject({ code: 5, stderr: expect.stringContaining("not installed") });
    expect((await rc("status", env)).code).toBe(4);
  });

  it("takes extra options for run from the root's /etc/default/imds-init", async () => {
    mkdirSync(join(root, "etc/default"));
    writeFileSync(join(root, "etc/default/imds-init"), 'IMDS_INIT_OPTS="--skip hostname,ssh-keys"\n');
    const r = await rc("start");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("-----BEGIN SSH HOST KEY FINGERPRINTS-----");
    expect(existsSync(join(root, "etc/hostname"))).toBe(false);
    expect(existsSync(join(root, "root/.ssh/authorized_keys"))).toBe(false);
  });
});
