// A real boot: a minimal Debian (systemd, openssh-server, its own kernel)
// from Debian's packages, imds-init installed into it with
// scripts/install.sh, booted twice under qemu-system-x86_64 with QEMU's user
// network forwarding 169.254.169.254:80 to the project's metadata emulator
// on this machine. Read back: the serial console and, after each power-off,
// the disk itself (debugfs, no mount).
//
// Run with `npm run test:boot` (test/vitest.boot.config.ts). The Debian tree
// is built once and cached (scripts/debian-image.sh); each run copies it.
import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { chmodSync, closeSync, copyFileSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { startEmulator, loadData, type Emulator, type MetaTree } from "../scripts/imds-emulator.ts";
import { BINARY, requireBinary } from "./binary.ts";

const repo = fileURLToPath(new URL("..", import.meta.url));
const BOOT_TIMEOUT_MS = 10 * 60_000; // per boot; about 1.5 min under TCG here

const HOSTNAME = "imds-boot-test.eu-west-1.compute.internal";
const SHORT = HOSTNAME.split(".")[0]!;
const INSTANCE_ID = "i-0b007e5700000b007";

// The user-data script: counts its runs on the disk and says so on the console.
const USER_DATA = `#!/bin/sh
set -e
mkdir -p /var/lib/boot-test
n=$(( $(cat /var/lib/boot-test/user-data-runs 2>/dev/null || echo 0) + 1 ))
echo "$n" >/var/lib/boot-test/user-data-runs
echo "BOOT-TEST user-data run $n as $(id -un) on $(uname -n)" >/dev/console
`;

/**
 * The user-data script's lines on the console. It writes to /dev/console
 * itself, so its line can land after a getty's "login: " prompt on the
 * same line: look for it anywhere in a line.
 */
function userDataRuns(lines: string[]): string[] {
  const mark = "BOOT-TEST user-data run";
  return lines.filter((l) => l.includes(mark)).map((l) => l.slice(l.indexOf(mark)));
}

// Test harness inside the guest, not part of imds-init: once everything
// else has started, report what systemd saw (and when), then power off.
const CHECK_UNIT = `[Unit]
Description=boot test: report, then power off
After=multi-user.target imds-init.service imds-init-user-data.service ssh.service getty.target serial-getty@ttyS0.service

[Service]
Type=oneshot
ExecStart=/bin/sh /usr/local/sbin/boot-test-check
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
`;
const CHECK_SCRIPT = `#!/bin/sh
p() { systemctl show -P "$2" "$1"; }
echo "BOOT-TEST hostname $(uname -n)"
for u in imds-init.service imds-init-user-data.service ssh.service; do
  echo "BOOT-TEST unit $u $(systemctl is-active $u) $(p $u Result)"
done
echo "BOOT-TEST times imds-init-done=$(p imds-init.service ActiveEnterTimestampMonotonic) ssh-start=$(p ssh.service InactiveExitTimestampMonotonic) user-sessions-start=$(p systemd-user-sessions.service InactiveExitTimestampMonotonic) multi-user=$(p multi-user.target ActiveEnterTimestampMonotonic) user-data-start=$(p imds-init-user-data.service InactiveExitTimestampMonotonic)"
sleep 2
systemctl poweroff --no-block
`;

function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", maxBuffer: 64 << 20, ...opts });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: exit ${r.status}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** KVM only when it works: /dev/kvm opens and the CPU has virtualisation. */
function accel(): "kvm" | "tcg" {
  const forced = process.env.IMDS_INIT_BOOT_ACCEL;
  if (forced === "kvm" || forced === "tcg") return forced;
  try {
    closeSync(openSync("/dev/kvm", "r+"));
  } catch {
    return "tcg";
  }
  // Seen here: /dev/kvm present, no vmx flag, and a KVM guest that hangs.
  return /^flags\s*:.*\b(vmx|svm)\b/m.test(readFileSync("/proc/cpuinfo", "utf8")) ? "kvm" : "tcg";
}

/** The console as written: no CR, no colour. */
function rawLines(text: string): string[] {
  return text.replace(/\r/g, "").replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "").split("\n");
}

/**
 * The console as messages: also without the "[ time] name[pid]: " prefix
 * that journald puts on service output it copies to the console. Such a
 * prefix starts a new line: other writers (a getty's prompt) end none.
 */
function consoleLines(text: string): string[] {
  return rawLines(text.replace(/\[\s*\d+\.\d+\] [\w@.-]+\[\d+\]: /g, "\n"));
}

/** The lines strictly between two marker lines (the last such block). */
function block(lines: string[], begin: string, end: string): string[] | null {
  const b = lines.lastIndexOf(begin);
  if (b < 0) return null;
  const e = lines.indexOf(end, b);
  return e < 0 ? null : lines.slice(b + 1, e);
}

/** A file in the ext4 image, read with debugfs (no mount needed). */
function imageFile(image: string, path: string): string {
  return sh("debugfs", ["-R", `cat ${path}`, image]);
}
function imageStat(image: string, path: string): { mode: string; uid: number } {
  const out = sh("debugfs", ["-R", `stat ${path}`, image]);
  const mode = /Mode:\s+(\d+)/.exec(out)?.[1];
  const uid = /User:\s+(\d+)/.exec(out)?.[1];
  if (!mode || uid === undefined) throw new Error(`${path}: not in the image`);
  return { mode, uid: Number(uid) };
}
function imageDir(image: string, path: string): string[] {
  return sh("debugfs", ["-R", `ls -p ${path}`, image])
    .split("\n")
    .map((l) => l.split("/")[5])
    .filter((n): n is string => !!n && n !== "." && n !== "..");
}

describe("a real boot of a Debian image with imds-init", () => {
  let emu: Emulator;
  let work: string;
  let image: string;
  let kernel: string;
  let initrd: string;
  let forward: string;
  let clientKey: string;
  const logs = join(repo, "build/boot");
  const mode = accel();

  beforeAll(async () => {
    requireBinary();
    const tree = execFileSync(join(repo, "scripts/debian-image.sh"), [], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }).trim();
    work = mkdtempSync(join(tmpdir(), "imds-boot-"));
    mkdirSync(logs, { recursive: true });

    // The instance's metadata: a key made now, a hostname unlike the image's.
    sh("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "boot-test@host", "-f", join(work, "client")]);
    clientKey = readFileSync(join(work, "client.pub"), "utf8").trim();
    const demo = loadData(new URL("../scripts/demo-instance.json", import.meta.url));
    const meta: MetaTree = { ...demo["meta-data"], "instance-id": INSTANCE_ID, "local-hostname": HOSTNAME, "public-keys": [{ name: "boot-test", "openssh-key": clientKey }] };
    emu = await startEmulator({ data: { "meta-data": meta, "user-data": USER_DATA } });

    // The image: a copy of the cached tree (hard links: nothing below
    // changes a file in place), imds-init installed as an image builder would.
    const root = join(work, "root");
    const cp = spawnSync("cp", ["-al", tree, root]);
    if (cp.status !== 0) sh("cp", ["-a", tree, root]); // another filesystem
    const inst = sh(join(repo, "scripts/install.sh"), ["--root", root, "--binary", BINARY]);
    expect(inst).toContain("installed imds-init (systemd)");
    // The units as installed pass verify against Debian's own units (ssh.service...).
    const v = spawnSync("systemd-analyze", ["verify", `--root=${root}`, "imds-init.service", "imds-init-user-data.service"], {
      encoding: "utf8",
      env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", MANPATH: join(root, "usr/share/man") },
    });
    expect({ code: v.status, out: v.stdout + v.stderr }).toEqual({ code: 0, out: "" });

    mkdirSync(join(root, "usr/local/sbin"), { recursive: true });
    writeFileSync(join(root, "usr/local/sbin/boot-test-check"), CHECK_SCRIPT, { mode: 0o755 });
    writeFileSync(join(root, "etc/systemd/system/boot-test-check.service"), CHECK_UNIT);
    mkdirSync(join(root, "etc/systemd/system/multi-user.target.wants"), { recursive: true });
    sh("ln", ["-s", "/etc/systemd/system/boot-test-check.service", join(root, "etc/systemd/system/multi-user.target.wants/")]);

    const boot = readdirSync(join(root, "boot"));
    kernel = join(work, "vmlinuz");
    initrd = join(work, "initrd.img");
    copyFileSync(join(root, "boot", boot.find((f) => f.startsWith("vmlinuz-"))!), kernel);
    copyFileSync(join(root, "boot", boot.find((f) => f.startsWith("initrd.img-"))!), initrd);
    image = join(work, "disk.img");
    sh("mkfs.ext4", ["-q", "-F", "-L", "root", "-d", root, image, "2G"]);
    rmSync(root, { recursive: true, force: true });

    // QEMU runs this for each guest connection to 169.254.169.254:80; its
    // path must have no spaces (QEMU splits the option on them).
    forward = join(work, "forward");
    writeFileSync(forward, `#!/bin/sh\nexec nc -N 127.0.0.1 ${emu.port}\n`);
    chmodSync(forward, 0o755);
    expect(forward).not.toMatch(/[\s,]/);
  }, 30 * 60_000);

  afterAll(async () => {
    await emu?.close();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  /** Boot the image until the guest powers off; the console text. */
  function bootOnce(n: number): Promise<string> {
    const consoleFile = join(logs, `console-${n}.log`);
    rmSync(consoleFile, { force: true });
    const args = [
      "-accel", mode, ...(mode === "kvm" ? ["-cpu", "host"] : []),
      "-m", "1024", "-smp", "2",
      "-display", "none", "-monitor", "none", "-serial", `file:${consoleFile}`, "-no-reboot",
      "-kernel", kernel, "-initrd", initrd,
      "-append", "root=/dev/vda rw console=ttyS0 panic=-1",
      "-drive", `file=${image},format=raw,if=virtio`,
      "-netdev", `user,id=n0,restrict=on,ipv6=off,net=169.254.0.0/16,host=169.254.0.1,guestfwd=tcp:169.254.169.254:80-cmd:${forward}`,
      "-device", "virtio-net-pci,netdev=n0",
    ];
    return new Promise((resolve, reject) => {
      const q = spawn("qemu-system-x86_64", args, { stdio: ["ignore", "ignore", "pipe"] });
      let err = "";
      q.stderr.on("data", (d: Buffer) => (err += d.toString()));
      const timer = setTimeout(() => q.kill("SIGKILL"), BOOT_TIMEOUT_MS);
      q.on("error", reject);
      q.on("exit", (code, signal) => {
        clearTimeout(timer);
        let text = "";
        try {
          text = readFileSync(consoleFile, "utf8");
        } catch {}
        if (code === 0) resolve(text);
        else reject(new Error(`boot ${n}: qemu ${signal ? `killed (${signal}) after ${BOOT_TIMEOUT_MS / 1000} s` : `exited ${code}`}: ${err.trim()}\n--- console (last 6000 chars, all in ${consoleFile}):\n${text.slice(-6000)}`));
      });
    });
  }

  /** What the boot left on the disk: host keys and what they fingerprint to. */
  function hostKeys(): { pubs: string[]; fingerprints: string[] } {
    const names = imageDir(image, "/etc/ssh").filter((f) => /^ssh_host_.*key\.pub$/.test(f)).sort();
    const pubs: string[] = [];
    const fingerprints: string[] = [];
    for (const name of names) {
      const pub = imageFile(image, `/etc/ssh/${name}`);
      const file = join(work, name);
      writeFileSync(file, pub);
      pubs.push(pub.trim());
      fingerprints.push(sh("ssh-keygen", ["-lf", file]).trim());
    }
    return { pubs, fingerprints };
  }

  // On the raw console, as plain lines: what get-console-output parsers read.
  function checkFingerprints(lines: string[], keys: { pubs: string[]; fingerprints: string[] }): void {
    const banner = "ec2: " + "#".repeat(61);
    const fp = block(lines, "ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----", "ec2: -----END SSH HOST KEY FINGERPRINTS-----");
    expect(fp, "fingerprint block on the console").not.toBeNull();
    expect(fp).toEqual(keys.fingerprints.map((f) => `ec2: ${f}`));
    const at = lines.lastIndexOf("ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----");
    expect(lines[at - 1]).toBe(banner);
    expect(lines[at + keys.fingerprints.length + 2]).toBe(banner);
    expect(block(lines, "-----BEGIN SSH HOST KEY KEYS-----", "-----END SSH HOST KEY KEYS-----")).toEqual(keys.pubs);
  }

  function report(lines: string[], what: string): string {
    const line = lines.find((l) => l.startsWith(`BOOT-TEST ${what}`));
    expect(line, `"BOOT-TEST ${what}" on the console`).toBeDefined();
    return line!.slice(`BOOT-TEST ${what} `.length);
  }

  let firstKeys: { pubs: string[]; fingerprints: string[] };

  it("first boot: host keys made and fingerprinted on the console, hostname and key from metadata, user-data run, sshd up", async () => {
    const started = Date.now();
    const text = await bootOnce(1);
    const lines = consoleLines(text);
    console.log(`boot 1 (${mode}): ${Math.round((Date.now() - started) / 1000)} s`);

    // The template had no host keys: the unit's ssh-keygen -A made them,
    // and the block shows exactly those on the disk.
    firstKeys = hostKeys();
    expect(firstKeys.fingerprints.length).toBeGreaterThanOrEqual(3);
    checkFingerprints(rawLines(text), firstKeys);

    // Hostname: the live one, the login prompt, /etc/hostname on the disk.
    expect(report(lines, "hostname")).toBe(HOSTNAME);
    expect(lines.some((l) => l.includes(`${SHORT} login:`))).toBe(true);
    expect(imageFile(image, "/etc/hostname").trim()).toBe(HOSTNAME);

    // The metadata key, in root's authorized_keys with the right modes.
    expect(imageFile(image, "/root/.ssh/authorized_keys").split("\n")).toContain(clientKey);
    expect(imageStat(image, "/root/.ssh/authorized_keys")).toEqual({ mode: "0600", uid: 0 });
    expect(imageStat(image, "/root/.ssh")).toEqual({ mode: "0700", uid: 0 });

    // User-data ran, once, as root, after the hostname was set.
    expect(userDataRuns(lines)).toEqual([`BOOT-TEST user-data run 1 as root on ${HOSTNAME}`]);
    expect(imageFile(image, "/var/lib/boot-test/user-data-runs").trim()).toBe("1");

    // Both units succeeded; sshd started (it needs host keys on Debian).
    expect(report(lines, "unit imds-init.service")).toBe("active success");
    expect(report(lines, "unit imds-init-user-data.service")).toBe("active success");
    expect(report(lines, "unit ssh.service")).toBe("active success");

    // The order the units promise, as systemd recorded it.
    const t = Object.fromEntries(report(lines, "times").split(" ").map((kv) => kv.split("=").map((x, i) => (i ? Number(x) : x))));
    expect(t["imds-init-done"]).toBeGreaterThan(0);
    expect(t["imds-init-done"]).toBeLessThanOrEqual(t["ssh-start"]);
    expect(t["imds-init-done"]).toBeLessThanOrEqual(t["user-sessions-start"]);
    expect(t["multi-user"]).toBeLessThanOrEqual(t["user-data-start"]);

    // What imds-init recorded, on the disk.
    const state = JSON.parse(imageFile(image, "/var/lib/imds-init/state.json")) as { instance_id: string; steps: Record<string, { result: string }> };
    expect(state.instance_id).toBe(INSTANCE_ID);
    for (const step of ["hostname", "ssh-keys", "user-data", "fingerprints", "basesystem"]) expect(state.steps[step]?.result, step).toBe("ok");
  }, BOOT_TIMEOUT_MS + 60_000);

  it("second boot, same instance: same host keys fingerprinted again, user-data not run again", async () => {
    expect(firstKeys, "the first boot ran").toBeDefined();
    const started = Date.now();
    const text = await bootOnce(2);
    const lines = consoleLines(text);
    console.log(`boot 2 (${mode}): ${Math.round((Date.now() - started) / 1000)} s`);

    const keys = hostKeys();
    expect(keys).toEqual(firstKeys);
    checkFingerprints(rawLines(text), keys);
    expect(report(lines, "hostname")).toBe(HOSTNAME);
    expect(userDataRuns(lines)).toEqual([]);
    expect(imageFile(image, "/var/lib/boot-test/user-data-runs").trim()).toBe("1");
    expect(lines.some((l) => /^imds-init: user-data: already (done|ran) for i-0b007e5700000b007 /.test(l))).toBe(true);
    expect(report(lines, "unit imds-init.service")).toBe("active success");
    expect(report(lines, "unit imds-init-user-data.service")).toBe("active success");
    expect(report(lines, "unit ssh.service")).toBe("active success");
    expect(imageFile(image, "/root/.ssh/authorized_keys").split("\n").filter((l) => l === clientKey)).toHaveLength(1);
  }, BOOT_TIMEOUT_MS + 60_000);
});
