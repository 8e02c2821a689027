// The user-data step against an in-memory metadata service. With a temp
// root the script runs chrooted into it, so each test root holds a tiny
// userland (dash, env, stat, sleep and their libraries, copied from this
// machine). The root "/" path runs in `unshare --mount` with /var under a
// private overlay, so this machine's /var is never written.
import { describe, it, expect, beforeAll, afterAll, beforeEach, afterEach } from "vitest";
import * as fs from "node:fs";
import { execFileSync, spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { defaults } from "../src/config.ts";
import { Log } from "../src/log.ts";
import type { Metadata } from "../src/imds/metadata.ts";
import { scriptEnv } from "../src/os.ts";
import type { StepContext } from "../src/steps/step.ts";
import { run, describeUserData, execute, gunzipBounded, removeStaleScripts } from "../src/steps/user-data.ts";

class FakeMetadata implements Metadata {
  readonly endpoint = "http://fake.invalid";
  readonly protocol = "v2" as const;
  requests = 0;
  readonly userData: Buffer | null;
  constructor(userData: Buffer | string | null) {
    this.userData = typeof userData === "string" ? Buffer.from(userData) : userData;
  }
  async value(): Promise<string | null> {
    this.requests++;
    return null;
  }
  async list(): Promise<string[] | null> {
    this.requests++;
    return null;
  }
  async bytes(path: string): Promise<Buffer | null> {
    this.requests++;
    return path === "user-data" ? this.userData : null;
  }
}

const ID = "i-0123456789abcdef0";
const LEAK = "IMDS_INIT_TEST_MUST_NOT_LEAK";
let base: string; // the template root with the tiny userland
let root: string;
let lines: string[];

function ctx(userData: Buffer | string | null, opts: { dryRun?: boolean; timeout_s?: number; max_bytes?: number } = {}): StepContext {
  const config = defaults();
  if (opts.timeout_s !== undefined) config.user_data.timeout_s = opts.timeout_s;
  if (opts.max_bytes !== undefined) config.metadata.max_bytes = opts.max_bytes;
  return {
    root,
    config,
    log: new Log("debug", (l) => lines.push(l)),
    md: new FakeMetadata(userData),
    instanceId: ID,
    dryRun: opts.dryRun ?? false,
    force: false,
    now: new Date(),
    previous: undefined,
    stdout: () => {},
  };
}

/** Copy a binary and the shared libraries ldd lists into `dst` at the same paths. */
function install(dst: string, bin: string, as: string): void {
  const put = (from: string, to: string) => {
    fs.mkdirSync(dirname(join(dst, to)), { recursive: true });
    fs.copyFileSync(fs.realpathSync(from), join(dst, to));
    fs.chmodSync(join(dst, to), 0o755);
  };
  put(bin, as);
  for (const line of execFileSync("ldd", [bin], { encoding: "utf8" }).split("\n")) {
    const lib = /=>\s+(\/\S+)/.exec(line)?.[1] ?? /^\s*(\/\S+)/.exec(line)?.[1];
    if (lib && !fs.existsSync(join(dst, lib))) put(lib, lib);
  }
}

const out = (f: string) => join(root, "out", f);
const logFile = () => join(root, "var/log/imds-init-user-data.log");
const stateDir = () => join(root, "var/lib/imds-init");

function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return !/^\d+ \(.*\) Z/.test(stat); // a zombie is dead, only not reaped yet
  } catch {
    return false;
  }
}

async function waitDead(pid: number, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (!alive(pid)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return !alive(pid);
}

const bgPids: number[] = [];

beforeAll(() => {
  base = fs.mkdtempSync(join(tmpdir(), "imds-ud-base-"));
  install(base, "/bin/sh", "/bin/sh");
  for (const b of ["env", "stat", "sleep", "cat"]) install(base, execFileSync("sh", ["-c", `command -v ${b}`], { encoding: "utf8" }).trim(), `/bin/${b}`);
  fs.writeFileSync(join(base, "CHROOT_MARKER"), "");
  fs.mkdirSync(join(base, "out"));
  fs.mkdirSync(join(base, "var/lib"), { recursive: true }); // no var/log: the step creates it
  process.env[LEAK] = "secret";
});
afterAll(() => {
  delete process.env[LEAK];
  fs.rmSync(base, { recursive: true, force: true });
});
beforeEach(() => {
  root = fs.mkdtempSync(join(tmpdir(), "imds-ud-"));
  fs.cpSync(base, root, { recursive: true, verbatimSymlinks: true });
  // dash gives background jobs /dev/null as stdin: a chroot needs one, as a real image has
  fs.mkdirSync(join(root, "dev"));
  execFileSync("mknod", ["-m", "666", join(root, "dev/null"), "c", "1", "3"]);
  lines = [];
});
afterEach(() => {
  for (const pid of bgPids.splice(0)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone
    }
  }
  fs.rmSync(root, { recursive: true, force: true });
});

describe("user-data: running a script", () => {
  it("runs a #! script chrooted into the root: cwd /, clean env, stdin /dev/null, output logged", async () => {
    const script = [
      "#!/bin/sh",
      "pwd > /out/pwd",
      "env > /out/env",
      "stat -L -c '%F %t:%T' - > /out/stdin",
      "[ -e /CHROOT_MARKER ] && echo yes > /out/chrooted",
      "echo to-stdout",
      "echo to-stderr >&2",
      "",
    ].join("\n");
    const r = await run(ctx(script));
    expect(r.failed).toBe(false);
    expect(r.summary).toMatch(/^script exited 0 after \d+\.\d s; output in \/.*\/var\/log\/imds-init-user-data\.log$/);
    expect(fs.readFileSync(out("pwd"), "utf8")).toBe("/\n");
    expect(fs.readFileSync(out("chrooted"), "utf8")).toBe("yes\n");
    expect(fs.readFileSync(out("stdin"), "utf8")).toBe("character special file 1:3\n");
    const env = Object.fromEntries(
      fs.readFileSync(out("env"), "utf8").trim().split("\n").map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
    );
    // exactly scriptEnv, plus the PWD the shell itself exports; nothing of ours
    expect(env).toEqual({ ...scriptEnv, PWD: "/" });
    expect(env[LEAK]).toBeUndefined();
    const log = fs.readFileSync(logFile(), "utf8");
    expect(log).toMatch(new RegExp(`^=== imds-init user-data: instance ${ID}, \\d{4}-\\d\\d-\\d\\dT[^,]+Z, a ${script.length}-byte #!/bin/sh script ===\n`));
    expect(log).toContain("to-stdout\n");
    expect(log).toContain("to-stderr\n");
    expect(log).toMatch(/=== script exited 0 after \d+\.\d s ===\n$/);
    expect(fs.statSync(logFile()).mode & 0o777).toBe(0o600);
    expect(fs.statSync(stateDir()).mode & 0o7777).toBe(0o700);
    // the copy of the script is gone after the run
    expect(fs.readdirSync(stateDir())).toEqual([]);
    expect(r.data).toMatchObject({ exit_status: 0, signal: null, bytes: script.length, interpreter: "/bin/sh" });
    expect(typeof r.data!.duration_ms).toBe("number");
    expect(r.data!.sha256).toMatch(/^[0-9a-f]{64}$/);
    // user-data content never reaches the imds-init log
    expect(lines.join("\n")).not.toContain("to-stdout");
  });

  it("appends to the log, a header per run", async () => {
    await run(ctx("#!/bin/sh\necho first-run\n"));
    const first = fs.readFileSync(logFile(), "utf8");
    await run(ctx("#!/bin/sh\necho second-run\n"));
    const both = fs.readFileSync(logFile(), "utf8");
    expect(both.startsWith(first)).toBe(true);
    expect(both.match(/^=== imds-init user-data: /gm)).toHaveLength(2);
    expect(both.indexOf("first-run")).toBeLessThan(both.indexOf("second-run"));
  });

  it("fails on a non-zero exit status and records it", async () => {
    const r = await run(ctx("#!/bin/sh\necho failing\nexit 3\n"));
    expect(r.failed).toBe(true);
    expect(r.summary).toMatch(/^script exited 3 after \d+\.\d s; output in .*imds-init-user-data\.log$/);
    expect(r.data).toMatchObject({ exit_status: 3, signal: null });
    expect(fs.readFileSync(logFile(), "utf8")).toContain("=== script exited 3 after");
  });

  it("records a script killed by a signal as failed", async () => {
    const r = await run(ctx("#!/bin/sh\nkill -SEGV $$\n"));
    expect(r.failed).toBe(true);
    expect(r.summary).toMatch(/^script killed by SIGSEGV after/);
    expect(r.data).toMatchObject({ exit_status: null, signal: "SIGSEGV" });
  });

  it("runs a gzip'ed script", async () => {
    const script = "#!/bin/sh\necho unzipped > /out/gz\n";
    const gz = gzipSync(script);
    const r = await run(ctx(gz));
    expect(r.failed).toBe(false);
    expect(fs.readFileSync(out("gz"), "utf8")).toBe("unzipped\n");
    expect(r.data).toMatchObject({ bytes: script.length, gzip_bytes: gz.length });
  });

  it("a background child does not hold the step", async () => {
    const t = Date.now();
    const r = await run(ctx("#!/bin/sh\n(sleep 20; echo late) &\necho $! > /out/bg\necho started\n"));
    expect(r.failed).toBe(false);
    expect(Date.now() - t).toBeLessThan(3000);
    const bg = Number(fs.readFileSync(out("bg"), "utf8"));
    bgPids.push(bg);
    expect(alive(bg)).toBe(true); // a daemon the script started is left running
  });

  it("a shebang to a missing interpreter fails cleanly", async () => {
    const r = await run(ctx("#!/usr/bin/no-such-interpreter\nprint('x')\n"));
    expect(r.failed).toBe(true);
    // chrooted: chroot(8) reports it with status 127 and its message goes to the log
    expect(r.summary).toMatch(/^script exited 127 after .* \(chroot could not start it\? check that \/usr\/bin\/no-such-interpreter exists/);
    expect(fs.readFileSync(logFile(), "utf8")).toMatch(/chroot: failed to run command/);
    expect(fs.readdirSync(stateDir())).toEqual([]);
  });

  it("removes script copies an interrupted run left behind, and only those", async () => {
    fs.mkdirSync(stateDir(), { recursive: true, mode: 0o700 });
    fs.writeFileSync(join(stateDir(), `user-data.${ID}.0123456789ab`), "#!/bin/sh\n");
    fs.writeFileSync(join(stateDir(), "state.json"), "{}");
    // Done by run.ts at the start of every run (under the run lock), not by the step.
    removeStaleScripts(stateDir());
    expect(fs.readdirSync(stateDir())).toEqual(["state.json"]);
  });
});

describe("user-data: timeout", () => {
  it("kills the script's whole process group on timeout and fails", async () => {
    const t = Date.now();
    const r = await run(ctx("#!/bin/sh\nsleep 300 &\necho $! > /out/bg\nsleep 300\n", { timeout_s: 1 }));
    const took = Date.now() - t;
    expect(r.failed).toBe(true);
    expect(r.summary).toMatch(/^script timed out after 1 s and was killed \(SIGTERM\); output in /);
    expect(r.data).toMatchObject({ timed_out: true, signal: "SIGTERM", exit_status: null });
    expect(took).toBeGreaterThanOrEqual(1000);
    expect(took).toBeLessThan(4000);
    const bg = Number(fs.readFileSync(out("bg"), "utf8"));
    bgPids.push(bg);
    expect(await waitDead(bg, 2000)).toBe(true);
  });

  it("escalates to SIGKILL when the script ignores SIGTERM", async () => {
    const r = await run(ctx("#!/bin/sh\ntrap '' TERM\nsleep 300 &\necho $! > /out/bg\nsleep 300\n", { timeout_s: 1 }));
    expect(r.failed).toBe(true);
    expect(r.summary).toMatch(/^script timed out after 1 s and was killed \(SIGKILL\)/);
    expect(r.data!.duration_ms as number).toBeGreaterThanOrEqual(5500);
    const bg = Number(fs.readFileSync(out("bg"), "utf8"));
    bgPids.push(bg);
    expect(await waitDead(bg, 2000)).toBe(true);
  }, 20_000);
});

describe("user-data: what is not run", () => {
  it("no user-data (404) is fine and touches nothing", async () => {
    const r = await run(ctx(null));
    expect(r).toEqual({ summary: "no user-data" });
    expect(fs.existsSync(stateDir())).toBe(false);
    expect(fs.existsSync(join(root, "var/log"))).toBe(false);
  });

  const ignored: [string, Buffer | string, string][] = [
    ["empty", "", "it is empty"],
    ["#cloud-config", "#cloud-config\npassword: hunter2\nruncmd: [touch /out/ran]\n", "#cloud-config is not supported"],
    ["#include", "#include\nhttps://example.com/hunter2\n", "#include is not supported"],
    ["#cloud-boothook", "#cloud-boothook\ntouch /out/ran # hunter2\n", "#cloud-boothook is not supported"],
    ["MIME multipart", 'Content-Type: multipart/mixed; boundary="x"\nMIME-Version: 1.0\n\n--x\n#!/bin/sh\ntouch /out/ran # hunter2\n', "MIME multipart is not supported"],
    ["binary junk", Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00, 0x68, 0x75, 0x6e]), "binary data (starts 0x7f 0x45 0x4c 0x46) is not supported"],
    ["random bytes", Buffer.from([0x00, 0xff, 0x10, 0x80]), "binary data (starts 0x00 0xff 0x10 0x80) is not supported"],
    ["plain text", "touch /out/ran hunter2\n", "text without a #! line is not a script"],
    ["a #! after a blank line", "\n#!/bin/sh\ntouch /out/ran # hunter2\n", "its #! is not at the very start (leading blank lines or spaces): not a script"],
    ["a byte order mark", "\ufeff#!/bin/sh\ntouch /out/ran # hunter2\n", "it starts with a UTF-8 byte order mark, so no #! line: not a script"],
    ["PowerShell", "<powershell>\nhunter2\n</powershell>\n", "Windows <powershell> user-data is not supported"],
    ["gzip in gzip", gzipSync(gzipSync("#!/bin/sh\ntouch /out/ran\n")), "gzip inside gzip is not supported"],
  ];
  for (const [what, data, why] of ignored) {
    it(`ignores ${what}: success, nothing run or written, content not shown`, async () => {
      const r = await run(ctx(data));
      expect(r.failed).toBeFalsy();
      expect(r.summary).toBe(`ignored user-data: ${why} (only #! scripts are run)`);
      expect(r.data).toMatchObject({ ignored: expect.stringContaining(why.slice(0, 12)) });
      expect(fs.existsSync(out("ran"))).toBe(false);
      expect(fs.existsSync(stateDir())).toBe(false);
      expect(fs.existsSync(join(root, "var/log"))).toBe(false);
      expect(JSON.stringify(r) + lines.join("\n")).not.toContain("hunter2");
    });
  }

  it("refuses a gzip bomb with bounded memory", async () => {
    // 2 GiB of zeros as 128 concatenated gzip members of 16 MiB each (~2 MB).
    const member = gzipSync(Buffer.alloc(16 << 20));
    const bomb = Buffer.concat(Array(128).fill(member));
    const peakBefore = process.resourceUsage().maxRSS; // KiB
    const t = Date.now();
    await expect(run(ctx(bomb))).rejects.toThrow(/^user-data is gzip that expands past 1048576 bytes \(metadata\.max_bytes\): refused, not run$/);
    expect(Date.now() - t).toBeLessThan(2000);
    expect(process.resourceUsage().maxRSS - peakBefore).toBeLessThan(64 * 1024);
    expect(fs.existsSync(stateDir())).toBe(false);
  });

  it("gunzips up to the limit and not a byte more", () => {
    const exact = Buffer.alloc(4096, 0x41);
    expect(gunzipBounded(gzipSync(exact), 4096)).toEqual(exact);
    expect(() => gunzipBounded(gzipSync(Buffer.alloc(4097)), 4096)).toThrow(/expands past 4096 bytes/);
  });

  it("a corrupt gzip fails clearly", async () => {
    const gz = gzipSync("#!/bin/sh\ntouch /out/ran\n");
    const broken = gz.subarray(0, gz.length - 6);
    await expect(run(ctx(broken))).rejects.toThrow(/^user-data starts like gzip but does not decompress/);
    expect(fs.existsSync(out("ran"))).toBe(false);
  });

  it("dry run describes and neither runs nor writes anything", async () => {
    const script = "#!/bin/sh\ntouch /out/ran\n";
    const r = await run(ctx(script, { dryRun: true }));
    expect(r.summary).toBe(`would run a ${script.length}-byte #!/bin/sh script chrooted into ${root}`);
    expect(fs.existsSync(out("ran"))).toBe(false);
    expect(fs.existsSync(stateDir())).toBe(false);
    expect(fs.existsSync(join(root, "var/log"))).toBe(false);
    const r2 = await run(ctx(gzipSync(script), { dryRun: true }));
    expect(r2.summary).toMatch(/^would run a \d+-byte #!\/bin\/sh script \(gunzipped from \d+ bytes\)/);
    const r3 = await run(ctx("#cloud-config\n", { dryRun: true }));
    expect(r3.summary).toBe("would ignore user-data: #cloud-config is not supported (only #! scripts are run)");
  });

  it("describes scripts without showing their content", () => {
    expect(describeUserData(Buffer.from("#!/bin/bash -eu\necho x\n"))).toEqual({ script: true, interpreter: "/bin/bash" });
    expect(describeUserData(Buffer.from("#! /usr/bin/env python3\n"))).toEqual({ script: true, interpreter: "/usr/bin/env" });
    expect(describeUserData(Buffer.from("#!/bin/sh\r\necho x\r\n"))).toMatchObject({ script: true, interpreter: "/bin/sh\r", hint: expect.stringContaining("carriage return") });
    expect(describeUserData(Buffer.from("#!/bin/sh"))).toEqual({ script: true, interpreter: "/bin/sh" });
  });
});

describe("user-data: hostile filesystem", () => {
  it("refuses a symlinked log and runs nothing", async () => {
    fs.mkdirSync(join(root, "var/log"));
    fs.writeFileSync(join(root, "precious"), "keep\n");
    fs.symlinkSync(join(root, "precious"), logFile());
    await expect(run(ctx("#!/bin/sh\ntouch /out/ran\n"))).rejects.toThrow(/^not run: cannot open .*imds-init-user-data\.log: .*symlink.*; tried again at the next boot$/);
    expect(fs.existsSync(out("ran"))).toBe(false);
    expect(fs.readFileSync(join(root, "precious"), "utf8")).toBe("keep\n");
  });

  it("refuses a FIFO as the log instead of blocking on it", async () => {
    fs.mkdirSync(join(root, "var/log"));
    execFileSync("mkfifo", [logFile()]);
    await expect(run(ctx("#!/bin/sh\ntouch /out/ran\n"))).rejects.toThrow(/^not run: cannot open .*not a regular file/);
    expect(fs.existsSync(out("ran"))).toBe(false);
  });

  it("refuses a symlinked state directory and runs nothing", async () => {
    fs.mkdirSync(join(root, "elsewhere"));
    fs.symlinkSync(join(root, "elsewhere"), stateDir());
    await expect(run(ctx("#!/bin/sh\ntouch /out/ran\n"))).rejects.toThrow(/^not run: .*is a symlink; refusing to use it; tried again at the next boot$/);
    expect(fs.existsSync(out("ran"))).toBe(false);
    expect(fs.readdirSync(join(root, "elsewhere"))).toEqual([]);
  });
});

describe("user-data: execute() on this machine (no chroot)", () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(join(tmpdir(), "imds-exec-"));
  });
  afterEach(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const script = (body: string): string => {
    const p = join(dir, "s");
    fs.writeFileSync(p, body, { mode: 0o700 });
    return p;
  };
  const logFd = () => fs.openSync(join(dir, "log"), "a");

  it("a missing interpreter is a spawn error (ENOENT), nothing ran", async () => {
    const fd = logFd();
    const o = await execute([script("#!/no/such/interpreter\n")], fd, 0);
    fs.closeSync(fd);
    expect(o.error?.code).toBe("ENOENT");
    expect(o.status).toBeNull();
  });

  it("a non-executable interpreter is a spawn error (EACCES)", async () => {
    fs.writeFileSync(join(dir, "interp"), "", { mode: 0o644 });
    const fd = logFd();
    const o = await execute([script(`#!${join(dir, "interp")}\n`)], fd, 0);
    fs.closeSync(fd);
    expect(o.error?.code).toBe("EACCES");
  });

  it("uses a short grace period when told to: TERM ignored, KILL follows", async () => {
    const fd = logFd();
    const o = await execute([script("#!/bin/sh\ntrap '' TERM\nsleep 30\n")], fd, 300, 200);
    fs.closeSync(fd);
    expect(o).toMatchObject({ timedOut: true, signal: "SIGKILL" });
    expect(o.ms).toBeGreaterThanOrEqual(450);
    expect(o.ms).toBeLessThan(3000);
  });
});

describe("user-data: root / (in unshare --mount, /var under a private overlay)", () => {
  const src = (f: string) => fileURLToPath(new URL(`../src/${f}`, import.meta.url));
  it("runs the script directly with cwd /, stdin /dev/null and a clean env; a missing interpreter is ENOENT", () => {
    const dir = fs.mkdtempSync(join(tmpdir(), "imds-ns-"));
    const hostState = fs.existsSync("/var/lib/imds-init");
    const hostLog = fs.existsSync("/var/log/imds-init-user-data.log");
    try {
      fs.mkdirSync(join(dir, "mnt"));
      const child = join(dir, "child.ts");
      fs.writeFileSync(
        child,
        `
import * as fs from "node:fs";
import { run } from ${JSON.stringify(src("steps/user-data.ts"))};
import { defaults } from ${JSON.stringify(src("config.ts"))};
import { Log } from ${JSON.stringify(src("log.ts"))};
const ctx = (ud: string) => ({ root: "/", config: defaults(), log: new Log("error", () => {}),
  md: { endpoint: "fake", protocol: "v2", requests: 0, async value() { return null; }, async list() { return null; },
        async bytes(p: string) { return p === "user-data" ? Buffer.from(ud) : null; } },
  instanceId: "i-root", dryRun: false, force: false, now: new Date(), previous: undefined, stdout: () => {} });
const ok = await run(ctx("#!/bin/sh\\nmkdir /var/imds-out\\npwd > /var/imds-out/pwd\\nreadlink /proc/self/fd/0 > /var/imds-out/stdin\\nenv > /var/imds-out/env\\n"));
const missing = await run(ctx("#!/no/such/interpreter\\n"));
const r = (f: string) => fs.readFileSync("/var/imds-out/" + f, "utf8");
console.log(JSON.stringify({ ok, missing, pwd: r("pwd"), stdin: r("stdin"), env: r("env"),
  log: fs.readFileSync("/var/log/imds-init-user-data.log", "utf8"), state: fs.readdirSync("/var/lib/imds-init") }));
`,
      );
      const res = spawnSync(
        "unshare",
        [
          "--mount",
          "--",
          "sh",
          "-c",
          'mount -t tmpfs tmpfs "$NSDIR" && mkdir "$NSDIR/u" "$NSDIR/w" && ' +
            'mount -t overlay overlay -o lowerdir=/var,upperdir="$NSDIR/u",workdir="$NSDIR/w" /var && exec "$NODE" "$SCRIPT"',
        ],
        { env: { ...process.env, NODE: process.execPath, SCRIPT: child, NSDIR: join(dir, "mnt") }, encoding: "utf8", timeout: 20_000 },
      );
      expect(res.stderr).toBe("");
      expect(res.status).toBe(0);
      const o = JSON.parse(res.stdout);
      expect(o.ok).toMatchObject({ failed: false, data: { exit_status: 0 } });
      expect(o.ok.summary).toMatch(/^script exited 0 after .*; output in \/var\/log\/imds-init-user-data\.log$/);
      expect(o.pwd).toBe("/\n");
      expect(o.stdin).toBe("/dev/null\n");
      const env = Object.fromEntries(o.env.trim().split("\n").map((l: string) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
      expect(env).toEqual({ ...scriptEnv, PWD: "/" });
      expect(o.missing.failed).toBe(true);
      expect(o.missing.summary).toMatch(/^cannot run it: its interpreter \/no\/such\/interpreter does not exist \(ENOENT\); output in /);
      expect(o.missing.data).toMatchObject({ error: "ENOENT" });
      expect(o.log.match(/^=== imds-init user-data: instance i-root, /gm)).toHaveLength(2);
      expect(o.state).toEqual([]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    // this machine's /var was never written
    expect(fs.existsSync("/var/lib/imds-init")).toBe(hostState);
    expect(fs.existsSync("/var/log/imds-init-user-data.log")).toBe(hostLog);
    expect(fs.existsSync("/var/imds-out")).toBe(false);
  });
});


describe("user-data: recording the start", () => {
  it("records the start once, after the copy is written and just before the script runs", async () => {
    const seen: string[][] = [];
    const c = ctx("#!/bin/sh\n: >/out/ran\n");
    c.markStarted = () => {
      // The script is written and has not run yet.
      seen.push(fs.readdirSync(stateDir()).filter((n) => n.startsWith("user-data.")));
      expect(fs.existsSync(out("ran"))).toBe(false);
    };
    await run(c);
    expect(seen).toHaveLength(1);
    expect(seen[0]).toHaveLength(1);
    expect(fs.existsSync(out("ran"))).toBe(true);
  });

  it("runs nothing when the start cannot be recorded, and leaves no copy behind", async () => {
    const c = ctx("#!/bin/sh\n: >/out/ran\n");
    c.markStarted = () => {
      throw new Error("cannot record in /x/state.json that user-data started: ENOSPC");
    };
    await expect(run(c)).rejects.toThrow(/^not run: cannot record in \/x\/state\.json that user-data started: ENOSPC; tried again at the next boot$/);
    expect(fs.existsSync(out("ran"))).toBe(false);
    expect(fs.readdirSync(stateDir()).filter((n) => n.startsWith("user-data."))).toEqual([]);
  });

  it("does not record a start for user-data it ignores or cannot fetch", async () => {
    let calls = 0;
    for (const body of ["#cloud-config\n", null]) {
      const c = ctx(body);
      c.markStarted = () => void calls++;
      await run(c);
    }
    expect(calls).toBe(0);
  });
});
