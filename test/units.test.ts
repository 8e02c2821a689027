// The boot integration files, checked by the tools that read them:
// systemd-analyze verify for the units (as scripts/install.sh installs them,
// against this machine's systemd units, with the man page they point to),
// shellcheck for every shell script, mandoc for the manual. Plus what the
// units must say to do their job: ordering, output, failure never blocking.
import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { spawnSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { HELP } from "../src/help.ts";
import { defaults } from "../src/config.ts";
import { STEP_NAMES } from "../src/cli.ts";

const repo = fileURLToPath(new URL("..", import.meta.url));
const UNITS = ["imds-init.service", "imds-init-user-data.service"];

function run(cmd: string, args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(cmd, args, { encoding: "utf8", env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", ...env } });
  if (r.error) throw r.error;
  return { code: r.status, out: r.stdout + r.stderr };
}

/** A unit file as key -> values (keys may repeat; space-separated lists are split). */
function unit(name: string): Map<string, string[]> {
  const m = new Map<string, string[]>();
  let section = "";
  for (const line of readFileSync(join(repo, "systemd", name), "utf8").split("\n")) {
    if (/^\s*(#|$)/.test(line)) continue;
    const s = /^\[(\w+)\]$/.exec(line);
    if (s) {
      section = s[1]!;
      continue;
    }
    const eq = line.indexOf("=");
    const key = `${section}.${line.slice(0, eq)}`;
    const value = line.slice(eq + 1);
    const list = /^(Unit\.(After|Before|Wants|Requires|Requisite|BindsTo|PartOf)|Install\.\w+)$/.test(key) ? value.split(/\s+/) : [value];
    m.set(key, [...(m.get(key) ?? []), ...list]);
  }
  return m;
}

describe("systemd units", () => {
  let root: string;
  beforeAll(() => {
    // A root holding this machine's systemd units (the targets ours name)
    // and imds-init as scripts/install.sh puts it there.
    root = mkdtempSync(join(tmpdir(), "imds-units-"));
    mkdirSync(join(root, "usr/lib/systemd"), { recursive: true });
    cpSync("/lib/systemd/system", join(root, "usr/lib/systemd/system"), { recursive: true, verbatimSymlinks: true });
    const r = run(join(repo, "scripts/install.sh"), ["--root", root, "--init", "systemd", "--binary", "/bin/true"]);
    expect(r.code, r.out).toBe(0);
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  const verify = (r: string, units: string[]) => run("systemd-analyze", ["verify", `--root=${r}`, ...units], { MANPATH: join(r, "usr/share/man") });

  it("pass systemd-analyze verify, installed, with nothing to say", () => {
    expect(verify(root, UNITS)).toEqual({ code: 0, out: "" });
  });

  it("verify would fail on a broken unit: it reads what we install", () => {
    const bad = mkdtempSync(join(tmpdir(), "imds-units-bad-"));
    try {
      cpSync(root, bad, { recursive: true, verbatimSymlinks: true });
      const file = join(bad, "usr/lib/systemd/system/imds-init.service");
      writeFileSync(file, readFileSync(file, "utf8").replace("Before=ssh.service", "Before=sysinit.target ssh.service"));
      expect(verify(bad, ["imds-init.service"]).out).toMatch(/ordering cycle/);
      rmSync(join(bad, "usr/sbin/imds-init"));
      expect(verify(bad, ["imds-init-user-data.service"]).out).toMatch(/imds-init is not executable/);
      rmSync(join(bad, "usr/share/man/man8/imds-init.8"));
      expect(verify(bad, ["imds-init-user-data.service"]).out).toMatch(/man imds-init\(8\)/);
    } finally {
      rmSync(bad, { recursive: true, force: true });
    }
  });

  it("imds-init.service: every step but user-data, once per boot, network up, before sshd and logins, output to the console", () => {
    const u = unit("imds-init.service");
    expect(u.get("Service.Type")).toEqual(["oneshot"]);
    expect(u.get("Service.RemainAfterExit")).toEqual(["yes"]);
    expect(u.get("Service.ExecStart")).toEqual(["/usr/sbin/imds-init run --skip user-data"]);
    expect(u.get("Service.ExecStartPre")).toEqual(["-/usr/bin/ssh-keygen -A"]);
    // The block as plain lines on the console; the log to journal and console.
    expect(u.get("Service.StandardOutput")).toEqual(["tty"]);
    expect(u.get("Service.TTYPath")).toEqual(["/dev/console"]);
    expect(u.get("Service.StandardError")).toEqual(["journal+console"]);
    expect(u.get("Unit.Wants")).toContain("network-online.target");
    expect(u.get("Unit.After")).toEqual(expect.arrayContaining(["network-online.target", "sshd-keygen.target"]));
    expect(u.get("Unit.Before")).toEqual(expect.arrayContaining(["ssh.service", "sshd.service", "systemd-user-sessions.service"]));
    expect(u.get("Install.WantedBy")).toEqual(["multi-user.target"]);
    // Bounded, so a hung run cannot hold sshd and logins back for ever.
    expect(u.get("Service.TimeoutStartSec")).toEqual(["5min"]);
    // It writes /etc, /root and homes and sets the live hostname through
    // /proc/sys/kernel/hostname: no sandboxing that forbids any of that.
    for (const k of ["ProtectSystem", "ProtectHome", "ProtectHostname", "ProtectKernelTunables", "ReadOnlyPaths", "CapabilityBoundingSet"])
      expect(u.has(`Service.${k}`), k).toBe(false);
  });

  it("imds-init-user-data.service: user-data only, after multi-user, so it never delays sshd or login", () => {
    const u = unit("imds-init-user-data.service");
    expect(u.get("Service.Type")).toEqual(["oneshot"]);
    expect(u.get("Service.ExecStart")).toEqual(["/usr/sbin/imds-init run --only user-data"]);
    expect(u.get("Unit.After")).toEqual(expect.arrayContaining(["multi-user.target", "imds-init.service", "network-online.target"]));
    expect(u.has("Unit.Before")).toBe(false);
    expect(u.get("Install.WantedBy")).toEqual(["multi-user.target"]);
    expect(u.get("Service.StandardOutput")).toEqual(["journal+console"]);
  });

  it("a failure never blocks the boot: nothing requires them, and they require nothing", () => {
    for (const name of UNITS) {
      const u = unit(name);
      for (const k of ["Requires", "Requisite", "BindsTo", "PartOf"]) expect(u.has(`Unit.${k}`), `${name} ${k}`).toBe(false);
      expect(u.has("Install.RequiredBy"), name).toBe(false);
    }
  });
});

describe("shell scripts", () => {
  for (const file of ["rc/imds-init", "scripts/install.sh", "scripts/debian-image.sh", "scripts/build-arm64.sh"]) {
    it(`${file} is shellcheck-clean`, () => {
      expect(run("shellcheck", [join(repo, file)])).toEqual({ code: 0, out: "" });
    });
  }

  it("rc/imds-init is POSIX sh, with chkconfig and LSB headers", () => {
    const text = readFileSync(join(repo, "rc/imds-init"), "utf8");
    expect(text.startsWith("#!/bin/sh\n")).toBe(true);
    expect(text).toMatch(/^# chkconfig: 2345 11 \d\d$/m);
    expect(text).toMatch(/^### BEGIN INIT INFO\n(# .*\n)+### END INIT INFO$/m);
    for (const h of ["Provides:          imds-init", "Required-Start:    $local_fs $remote_fs $network", "X-Start-Before:    ssh sshd", "Default-Start:     2 3 4 5"])
      expect(text).toContain(`# ${h}\n`);
    expect(run("shellcheck", ["--shell=sh", join(repo, "rc/imds-init")])).toEqual({ code: 0, out: "" });
  });
});

describe("imds-init(8)", () => {
  const page = join(repo, "src/imds-init.8");
  const text = readFileSync(page, "utf8");

  it("passes mandoc -T lint with no warning or error", () => {
    expect(run("mandoc", ["-T", "lint", "-W", "warning", page])).toEqual({ code: 0, out: "" });
  });

  it("documents every command, option, step, config key and exit code the program has", () => {
    const rendered = run("mandoc", ["-T", "ascii", page]).out.replace(/.\x08/g, "");
    for (const word of ["run", "fingerprints", "status", "metadata", ...STEP_NAMES]) expect(rendered).toContain(word);
    for (const opt of new Set(HELP.match(/--[a-z-]+/g))) expect(rendered, opt).toContain(opt);
    for (const [section, keys] of Object.entries(defaults())) {
      for (const [key, value] of Object.entries(keys as Record<string, unknown>)) {
        const shown = Array.isArray(value) ? "[" : typeof value === "string" && value.includes(" ") ? JSON.stringify(value) : String(value);
        expect(rendered, `${section}.${key}`).toContain(`${section}.${key}: ${shown}`);
      }
    }
    for (const code of ["0", "1", "2", "3"]) expect(rendered).toMatch(new RegExp(`^ {5}${code} {6}`, "m"));
    for (const file of ["/etc/imds-init.yaml", "/var/lib/imds-init/", "/var/log/imds-init.log", "/var/log/imds-init-user-data.log"]) expect(rendered).toContain(file);
    expect(text).toContain(".Dt IMDS-INIT 8");
  });
});
