// The fingerprints step and command: the console block, compared with what
// cloud-init's helper prints with the real ssh-keygen, glob and cat.
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { run, fingerprintBlock } from "../src/steps/fingerprints.ts";
import { printFingerprints } from "../src/commands/fingerprints.ts";
import { parseArgs } from "../src/cli.ts";
import { defaults, type Config } from "../src/config.ts";
import { Log } from "../src/log.ts";
import type { StepContext } from "../src/steps/step.ts";

const BANNER = "#############################################################";

let top: string;
beforeAll(() => {
  top = mkdtempSync(join(tmpdir(), "imds-init-fp-"));
});
afterAll(() => rmSync(top, { recursive: true, force: true }));

let count = 0;
function newRoot(): string {
  const root = join(top, `root-${count++}`);
  mkdirSync(join(root, "etc/ssh"), { recursive: true });
  return root;
}

function keygen(root: string, name: string, type: string, bits: number | null, comment: string): void {
  execFileSync("ssh-keygen", ["-q", "-t", type, ...(bits ? ["-b", String(bits)] : []), "-N", "", "-C", comment, "-f", join(root, "etc/ssh", name)], { stdio: "ignore" });
}

/**
 * What cloud-init's write-ssh-key-fingerprints prints for ROOT, using the
 * real shell glob (C locale), ssh-keygen -l and cat; without its leading
 * empty line, and with `prefix` standing for what logger adds.
 */
function reference(root: string, prefix: string): string {
  const script = `
    set -e
    keys="$1"/etc/ssh/ssh_host_*key.pub
    {
      echo "${BANNER}"
      echo "-----BEGIN SSH HOST KEY FINGERPRINTS-----"
      for f in $keys; do [ -f "$f" ] || continue; ssh-keygen -l -f "$f"; done
      echo "-----END SSH HOST KEY FINGERPRINTS-----"
      echo "${BANNER}"
    } | while IFS= read -r l; do printf '%s%s\\n' "$2" "$l"; done
    echo "-----BEGIN SSH HOST KEY KEYS-----"
    for f in $keys; do [ -f "$f" ] || continue; cat "$f"; done
    echo "-----END SSH HOST KEY KEYS-----"
  `;
  return execFileSync("sh", ["-c", script, "sh", root, prefix], { env: { PATH: process.env.PATH, LC_ALL: "C" } }).toString();
}

function capture(): { log: Log; stderr: string[] } {
  const stderr: string[] = [];
  return { log: new Log("info", (l) => stderr.push(l)), stderr };
}

function ctxFor(root: string, config: Config, log: Log, out: string[], dryRun = false): StepContext {
  return { root, config, log, md: null, instanceId: null, dryRun, force: false, now: new Date(), previous: undefined, stdout: (t) => out.push(t) };
}

describe("fingerprints", () => {
  let root: string;
  beforeAll(() => {
    root = newRoot();
    // ssh-keygen -A makes the default host keys, as at first boot.
    execFileSync("ssh-keygen", ["-A", "-f", root], { stdio: "ignore" });
    // More types and sizes, with names whose byte order is not their creation order.
    keygen(root, "ssh_host_dsa_key", "dsa", 1024, "root@dsa-host");
    keygen(root, "ssh_host_ecdsa521_key", "ecdsa", 521, "root@ip-172-31-16-127.eu-west-1.compute.internal");
    keygen(root, "ssh_host_ecdsa384_key", "ecdsa", 384, "");
    keygen(root, "ssh_host_Zrsa3072_key", "rsa", 3072, "upper case sorts first");
    // Files the glob must not take.
    writeFileSync(join(root, "etc/ssh/sshd_config"), "Port 22\n");
    writeFileSync(join(root, "etc/ssh/ssh_host_rsa_key.pub.bak"), readFileSync(join(root, "etc/ssh/ssh_host_rsa_key.pub")));
    writeFileSync(join(root, "etc/ssh/ssh_host_rsa_key-cert.pub"), "ssh-rsa-cert-v01@openssh.com AAAA\n");
  });

  it("prints exactly what cloud-init's helper prints, in name order", () => {
    const { log, stderr } = capture();
    const out: string[] = [];
    expect(printFingerprints(parseArgs(["fingerprints", "--root", root]), defaults(), log, (t) => out.push(t))).toBe(0);
    const text = out.join("");
    expect(text).toBe(reference(root, "ec2: "));
    expect(stderr).toEqual([]);
    // and the shape the issue specifies, checked without the reference
    const lines = text.split("\n");
    expect(lines[0]).toBe("ec2: " + BANNER);
    expect(BANNER.length).toBe(61);
    expect(lines[1]).toBe("ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----");
    expect(lines.slice(2, 9).map((l) => l.replace(/^ec2: (\d+) SHA256:\S+ .*\((\w+(-SK)?)\)$/, "$1 $2"))).toEqual([
      "3072 RSA", // ssh_host_Zrsa3072_key
      "1024 DSA", // ssh_host_dsa_key
      "384 ECDSA", // ssh_host_ecdsa384_key
      "521 ECDSA", // ssh_host_ecdsa521_key
      "256 ECDSA", // ssh_host_ecdsa_key
      "256 ED25519", // ssh_host_ed25519_key
      "3072 RSA", // ssh_host_rsa_key (ssh-keygen -A default)
    ]);
    expect(lines[4]).toMatch(/ no comment \(ECDSA\)$/);
    expect(lines[5]).toMatch(/ root@ip-172-31-16-127\.eu-west-1\.compute\.internal \(ECDSA\)$/);
    expect(lines[9]).toBe("ec2: -----END SSH HOST KEY FINGERPRINTS-----");
    expect(lines[10]).toBe("ec2: " + BANNER);
    expect(lines[11]).toBe("-----BEGIN SSH HOST KEY KEYS-----");
    expect(lines[12]).toBe(readFileSync(join(root, "etc/ssh/ssh_host_Zrsa3072_key.pub"), "utf8").trimEnd());
    expect(lines[19]).toBe("-----END SSH HOST KEY KEYS-----");
    expect(lines[20]).toBe("");
    expect(lines).toHaveLength(21);
  });

  it("uses the configured prefix, also none", () => {
    for (const prefix of ["", "cloud: "]) {
      const config = defaults();
      config.fingerprints.prefix = prefix;
      const out: string[] = [];
      printFingerprints(parseArgs(["fingerprints", "--root", root]), config, capture().log, (t) => out.push(t));
      expect(out.join("")).toBe(reference(root, prefix));
    }
  });

  it("prints the same block as a step, dry run included, and reports how many keys", async () => {
    for (const dryRun of [false, true]) {
      const out: string[] = [];
      const r = await run(ctxFor(root, defaults(), capture().log, out, dryRun));
      expect(out.join("")).toBe(reference(root, "ec2: "));
      expect(r.summary).toBe("printed 7 host key fingerprints");
      expect(r.failed).toBeFalsy();
    }
  });

  it("skips a file that is not a valid key and a symlink, naming them, and prints the others", async () => {
    const r2 = newRoot();
    keygen(r2, "ssh_host_ed25519_key", "ed25519", null, "good");
    keygen(r2, "ssh_host_rsa_key", "rsa", 2048, "good too");
    const expected = reference(r2, "ec2: ");
    writeFileSync(join(r2, "etc/ssh/ssh_host_bad_key.pub"), "ssh-ed25519 AAAAnot-a-key\n");
    writeFileSync(join(r2, "etc/ssh/ssh_host_esc_key.pub"), "ssh-ed25519 AAAA \x1b[2J\n");
    symlinkSync("ssh_host_rsa_key.pub", join(r2, "etc/ssh/ssh_host_link_key.pub"));
    mkdirSync(join(r2, "etc/ssh/ssh_host_dir_key.pub"));
    const { log, stderr } = capture();
    const out: string[] = [];
    const r = await run(ctxFor(r2, defaults(), log, out));
    expect(out.join("")).toBe(expected);
    expect(r.summary).toBe("printed 2 host key fingerprints");
    expect(r.failed).toBeFalsy();
    const dir = join(r2, "etc/ssh");
    expect(stderr).toEqual([
      `imds-init: fingerprints: skipped "${dir}/ssh_host_bad_key.pub": not a valid public key: the key data is not valid base64`,
      `imds-init: fingerprints: skipped "${dir}/ssh_host_dir_key.pub": it is not a regular file`,
      `imds-init: fingerprints: skipped "${dir}/ssh_host_esc_key.pub": not a valid public key: the line has a control character (U+001B) at offset 17`,
      `imds-init: fingerprints: skipped "${dir}/ssh_host_link_key.pub": it is a symlink`,
    ]);
  });

  it("with no host keys prints nothing, says so on stderr, and does not fail", async () => {
    const empty = newRoot();
    writeFileSync(join(empty, "etc/ssh/sshd_config"), "");
    const gone = join(top, `no-etc-ssh-${count++}`);
    mkdirSync(gone);
    for (const r of [empty, gone]) {
      const { log, stderr } = capture();
      const out: string[] = [];
      expect(printFingerprints(parseArgs(["fingerprints", "--root", r]), defaults(), log, (t) => out.push(t))).toBe(0);
      expect(out).toEqual([]);
      expect(stderr).toEqual([`imds-init: fingerprints: no SSH host keys in ${join(r, "etc/ssh")}`]);
      const res = await run(ctxFor(r, defaults(), capture().log, out));
      expect(out).toEqual([]);
      expect(res.failed).toBeFalsy();
      expect(res.summary).toBe(`nothing printed (no host keys in ${join(r, "etc/ssh")})`);
    }
  });

  it("follows a symlinked /etc/ssh inside the root only, and fails (exit 1) when it cannot be read", () => {
    const r = newRoot();
    keygen(r, "ssh_host_ed25519_key", "ed25519", null, "moved");
    renameSync(join(r, "etc/ssh"), join(r, "etc/ssh-real"));
    symlinkSync("/etc/ssh-real", join(r, "etc/ssh")); // absolute: means ROOT/etc/ssh-real
    const out: string[] = [];
    expect(printFingerprints(parseArgs(["fingerprints", "--root", r]), defaults(), capture().log, (t) => out.push(t))).toBe(0);
    expect(out.join("")).toMatch(/^ec2: 256 SHA256:\S+ moved \(ED25519\)$/m);
    rmSync(join(r, "etc/ssh"));
    writeFileSync(join(r, "etc/ssh"), "not a directory"); // same as missing
    expect(printFingerprints(parseArgs(["fingerprints", "--root", r]), defaults(), capture().log, () => {})).toBe(0);
    rmSync(join(r, "etc/ssh"));
    symlinkSync("ssh", join(r, "etc/ssh")); // a loop
    const { log, stderr } = capture();
    expect(printFingerprints(parseArgs(["fingerprints", "--root", r]), defaults(), log, () => {})).toBe(1);
    expect(stderr[0]).toMatch(/^imds-init: fingerprints: cannot read the host keys: .*too many symlinks/);
  });

  it("formats the block for given keys without touching the disk", () => {
    expect(fingerprintBlock([], "p ")).toBe(
      ["p " + BANNER, "p -----BEGIN SSH HOST KEY FINGERPRINTS-----", "p -----END SSH HOST KEY FINGERPRINTS-----", "p " + BANNER, "-----BEGIN SSH HOST KEY KEYS-----", "-----END SSH HOST KEY KEYS-----", ""].join("\n"),
    );
  });
});
