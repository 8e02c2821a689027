// The ssh-keys step against a scratch root and an in-memory metadata
// service: merge, idempotence, owners and modes, and every refusal.
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { run } from "../src/steps/ssh-keys.ts";
import { defaults } from "../src/config.ts";
import { Log } from "../src/log.ts";
import { MetadataError, type Metadata } from "../src/imds/metadata.ts";
import { parseListing } from "../src/imds/values.ts";
import { writeFileAtomicIn } from "../src/files.ts";
import type { StepContext, StepResult } from "../src/steps/step.ts";

/** The metadata service as a map of paths to answers; a missing path is a 404. */
class FakeMetadata implements Metadata {
  readonly endpoint = "http://fake";
  readonly protocol = "v2" as const;
  requests = 0;
  private readonly answers: Map<string, Buffer | Error>;
  constructor(answers: Record<string, string | Buffer | Error>) {
    this.answers = new Map(Object.entries(answers).map(([k, v]) => [k, typeof v === "string" ? Buffer.from(v) : v]));
  }
  private get(path: string): Buffer | null {
    this.requests++;
    const a = this.answers.get(path);
    if (a instanceof Error) throw a;
    return a ?? null;
  }
  async value(path: string): Promise<string | null> {
    const b = this.get(path);
    return b === null ? null : b.toString().replace(/\n$/, "");
  }
  async list(path: string): Promise<string[] | null> {
    const b = this.get(path);
    return b === null ? null : parseListing(path, b);
  }
  async bytes(path: string): Promise<Buffer | null> {
    return this.get(path);
  }
}

let top: string;
const keys: string[] = []; // generated key lines, "type base64 comment"
beforeAll(() => {
  top = fs.mkdtempSync(join(tmpdir(), "imds-init-sshkeys-"));
  for (const [t, c] of [["ed25519", "alice@laptop"], ["ecdsa", "bob@desk"], ["rsa", "ci"], ["ed25519", "spare"]] as const) {
    const f = join(top, `key-${keys.length}`);
    execFileSync("ssh-keygen", ["-q", "-t", t, "-N", "", "-C", c, "-f", f], { stdio: "ignore" });
    keys.push(fs.readFileSync(f + ".pub", "utf8").trimEnd());
  }
});
afterAll(() => fs.rmSync(top, { recursive: true, force: true }));

let n = 0;
/** A scratch root with root (uid 0) and alice (uid 1000) in /etc/passwd and their homes. */
function newRoot(): string {
  const root = join(top, `root-${n++}`);
  fs.mkdirSync(join(root, "etc"), { recursive: true });
  fs.writeFileSync(
    join(root, "etc/passwd"),
    ["root:x:0:0:root:/root:/bin/bash", "# a comment", "+nis-entry", "broken:line", "alice:x:1000:1001:Alice:/home/alice:/bin/sh", "nohome:x:1002:1002::/home/nohome:/bin/sh", "bad:x:12a:0::/home/bad:/bin/sh", ""].join("\n"),
  );
  fs.mkdirSync(join(root, "root"), { mode: 0o700 });
  fs.mkdirSync(join(root, "home/alice"), { recursive: true, mode: 0o755 });
  fs.chownSync(join(root, "home/alice"), 1000, 1001);
  return root;
}

/** A metadata service offering `lines` as public keys 0..N-1. */
function mdWith(lines: (string | Buffer)[]): FakeMetadata {
  const answers: Record<string, string | Buffer> = { "meta-data/public-keys/": lines.map((_, i) => `${i}=key-${i}`).join("\n") };
  lines.forEach((l, i) => (answers[`meta-data/public-keys/${i}/openssh-key`] = typeof l === "string" ? l + "\n" : l));
  return new FakeMetadata(answers);
}

async function step(root: string, md: Metadata, users: string[] = ["root"], dryRun = false): Promise<{ r: StepResult; stderr: string[] }> {
  const stderr: string[] = [];
  const config = defaults();
  config.ssh_keys.users = users;
  const ctx: StepContext = { root, config, log: new Log("debug", (l) => stderr.push(l)), md, instanceId: "i-0123", dryRun, force: false, now: new Date(), previous: undefined, stdout: () => {} };
  return { r: await run(ctx), stderr };
}

const ak = (root: string, home = "root") => join(root, home, ".ssh/authorized_keys");
const read = (p: string) => fs.readFileSync(p);
/** Everything under `dir` with type, mode, owner, size and mtime: to prove nothing changed. */
function snapshot(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const name of fs.readdirSync(d).sort()) {
      const p = join(d, name);
      const st = fs.lstatSync(p, { bigint: true });
      out.push(`${p} ${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.size} ${st.mtimeNs} ${st.ino}${st.isSymbolicLink() ? " -> " + fs.readlinkSync(p) : ""}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out;
}

describe("ssh-keys step", () => {
  it("installs every key for every user, with the right owners and modes", async () => {
    const root = newRoot();
    const { r } = await step(root, mdWith([keys[0]!, keys[1]!]), ["root", "alice"]);
    expect(r.summary).toBe("installed 2 keys for root; installed 2 keys for alice");
    expect(r.failed).toBeFalsy();
    for (const [home, uid, gid] of [["root", 0, 0], ["home/alice", 1000, 1001]] as const) {
      expect(read(ak(root, home)).toString()).toBe(`${keys[0]}\n${keys[1]}\n`);
      const d = fs.lstatSync(join(root, home, ".ssh"));
      const f = fs.lstatSync(ak(root, home));
      expect([d.isDirectory(), d.mode & 0o7777, d.uid, d.gid]).toEqual([true, 0o700, uid, gid]);
      expect([f.isFile(), f.mode & 0o7777, f.uid, f.gid]).toEqual([true, 0o600, uid, gid]);
    }
    // no temp file left behind
    expect(fs.readdirSync(join(root, "home/alice/.ssh"))).toEqual(["authorized_keys"]);
  });

  it("keeps every existing line byte for byte and adds only missing keys", async () => {
    const root = newRoot();
    fs.mkdirSync(join(root, "root/.ssh"), { mode: 0o700 });
    const [a, b, c] = keys as [string, string, string];
    const bParts = b.split(" ");
    const existing = Buffer.concat([
      Buffer.from(`# managed by hand\n\ncommand="echo hello world",no-pty ${a}\r\n`),
      Buffer.from([0xc3, 0x28, 0x0a]), // not UTF-8: kept as it is
      Buffer.from(`   ${bParts[0]}\t${bParts[1]} other comment`), // present, odd spacing, no final newline
    ]);
    fs.writeFileSync(ak(root), existing, { mode: 0o600 });
    const { r } = await step(root, mdWith([a, b, c]));
    expect(r.summary).toBe("installed 1 key for root (2 already present)");
    expect(read(ak(root)).equals(Buffer.concat([existing, Buffer.from(`\n${c}\n`)]))).toBe(true);
  });

  it("changes nothing at all on a second run: same bytes, inode and mtime", async () => {
    const root = newRoot();
    const md = mdWith([keys[0]!, keys[2]!]);
    await step(root, md, ["root", "alice"]);
    const before = snapshot(root);
    const { r } = await step(root, md, ["root", "alice"]);
    expect(r.summary).toBe("2 keys already present for root; 2 keys already present for alice");
    expect(r.failed).toBeFalsy();
    expect(snapshot(root)).toEqual(before);
  });

  it("adds a key the metadata lists twice only once", async () => {
    const root = newRoot();
    const { r } = await step(root, mdWith([keys[0]!, keys[0]!.replace(/ \S+$/, " same key other comment")]));
    expect(r.summary).toBe("installed 1 key for root");
    expect(read(ak(root)).toString()).toBe(`${keys[0]}\n`);
  });

  it("fixes a wrong owner and mode on an existing ~/.ssh and authorized_keys, and says so", async () => {
    const root = newRoot();
    const ssh = join(root, "home/alice/.ssh");
    fs.mkdirSync(ssh);
    fs.chmodSync(ssh, 0o775);
    fs.writeFileSync(join(ssh, "authorized_keys"), `${keys[0]}\n`);
    fs.chmodSync(join(ssh, "authorized_keys"), 0o664);
    fs.chownSync(join(ssh, "authorized_keys"), 1000, 0);
    const fileBefore = fs.statSync(join(ssh, "authorized_keys"), { bigint: true });
    const { r, stderr } = await step(root, mdWith([keys[0]!]), ["alice"]);
    expect(r.summary).toBe("1 key already present for alice");
    expect(stderr).toContain(`imds-init: ssh-keys: fixed ${ssh}: owner 0:0 -> 1000:1001, mode 775 -> 700`);
    expect(stderr).toContain(`imds-init: ssh-keys: fixed ${ssh}/authorized_keys: owner 1000:0 -> 1000:1001, mode 664 -> 600`);
    const d = fs.statSync(ssh);
    const f = fs.statSync(join(ssh, "authorized_keys"), { bigint: true });
    expect([d.mode & 0o7777, d.uid, d.gid]).toEqual([0o700, 1000, 1001]);
    expect([f.mode & 0o7777n, f.uid, f.gid]).toEqual([0o600n, 1000n, 1001n]);
    // fixed in place: not rewritten
    expect([f.ino, f.mtimeNs]).toEqual([fileBefore.ino, fileBefore.mtimeNs]);
  });

  describe("refuses symlinks and odd files, for that user only", () => {
    const cases: [string, (root: string, outside: string) => void][] = [
      ["~/.ssh a symlink to a directory outside the root", (root, outside) => fs.symlinkSync(outside, join(root, "root/.ssh"))],
      ["~/.ssh a dangling symlink", (root, outside) => fs.symlinkSync(join(outside, "missing"), join(root, "root/.ssh"))],
      ["~/.ssh a relative symlink inside the home", (root) => { fs.mkdirSync(join(root, "root/real-ssh"), { mode: 0o700 }); fs.symlinkSync("real-ssh", join(root, "root/.ssh")); }],
      ["authorized_keys a symlink to a file outside the root", (root, outside) => { fs.mkdirSync(join(root, "root/.ssh"), { mode: 0o700 }); fs.symlinkSync(join(outside, "victim"), ak(root)); }],
      ["authorized_keys a dangling symlink", (root, outside) => { fs.mkdirSync(join(root, "root/.ssh"), { mode: 0o700 }); fs.symlinkSync(join(outside, "missing"), ak(root)); }],
      ["~/.ssh a regular file", (root) => fs.writeFileSync(join(root, "root/.ssh"), "x")],
      ["authorized_keys a directory", (root) => fs.mkdirSync(ak(root), { recursive: true })],
      ["authorized_keys with a second hard link", (root, outside) => { fs.mkdirSync(join(root, "root/.ssh"), { mode: 0o700 }); fs.writeFileSync(ak(root), "# mine\n", { mode: 0o600 }); fs.linkSync(ak(root), join(root, "other-link")); void outside; }],
    ];
    const reasons = [/\.ssh is a symlink; refusing/, /\.ssh is a symlink; refusing/, /\.ssh is a symlink; refusing/, /authorized_keys is a symlink; refusing/, /authorized_keys is a symlink; refusing/, /\.ssh is a regular file; refusing/, /authorized_keys is a directory; refusing/, /authorized_keys has 2 hard links; refusing/];
    cases.forEach(([name, setup], i) => {
      it(name, async () => {
        const root = newRoot();
        const outside = join(top, `outside-${n++}`);
        fs.mkdirSync(outside);
        fs.writeFileSync(join(outside, "victim"), "precious\n");
        setup(root, outside);
        const before = snapshot(root);
        const outsideBefore = snapshot(outside);
        const { r, stderr } = await step(root, mdWith([keys[0]!]), ["root", "alice"]);
        expect(r.failed).toBe(true);
        expect(r.summary).toMatch(new RegExp(`^root: ${root.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}/root/.*; installed 1 key for alice$`));
        expect(r.summary).toMatch(reasons[i]!);
        expect(stderr.some((l) => l.startsWith("imds-init: ssh-keys: root: ") && reasons[i]!.test(l))).toBe(true);
        // nothing changed for root, nor outside; alice was still served
        expect(snapshot(root).filter((l) => !l.includes("/home/alice"))).toEqual(before.filter((l) => !l.includes("/home/alice")));
        expect(snapshot(outside)).toEqual(outsideBefore);
        expect(read(ak(root, "home/alice")).toString()).toBe(`${keys[0]}\n`);
      });
    });
  });

  it("writes into the directory it checked even if ~/.ssh is swapped for a symlink meanwhile", () => {
    const d = join(top, `swap-${n++}`);
    fs.mkdirSync(join(d, "home/.ssh"), { recursive: true });
    fs.mkdirSync(join(d, "elsewhere"));
    const fd = fs.openSync(join(d, "home/.ssh"), fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    try {
      fs.renameSync(join(d, "home/.ssh"), join(d, "home/.ssh-moved"));
      fs.symlinkSync(join(d, "elsewhere"), join(d, "home/.ssh"));
      writeFileAtomicIn(fd, "authorized_keys", "k\n", { mode: 0o600 });
    } finally {
      fs.closeSync(fd);
    }
    expect(fs.readFileSync(join(d, "home/.ssh-moved/authorized_keys"), "utf8")).toBe("k\n");
    expect(fs.readdirSync(join(d, "elsewhere"))).toEqual([]);
  });

  it("reports a user missing from /etc/passwd, a malformed entry and a missing home, and serves the others", async () => {
    const root = newRoot();
    const before = snapshot(root);
    const { r, stderr } = await step(root, mdWith([keys[0]!]), ["ghost", "nohome", "bad", "alice"]);
    expect(r.failed).toBe(true);
    expect(r.summary).toBe(
      [
        `user ghost does not exist in ${root}/etc/passwd`,
        `home directory ${root}/home/nohome of user nohome does not exist; not creating it`,
        `user bad: malformed uid or gid at ${root}/etc/passwd line 7`,
        "installed 1 key for alice",
      ].join("; "),
    );
    expect(stderr).toContain(`imds-init: ssh-keys: user ghost does not exist in ${root}/etc/passwd`);
    expect(fs.existsSync(join(root, "home/nohome"))).toBe(false);
    expect(snapshot(root).filter((l) => !l.includes("/home/alice"))).toEqual(before.filter((l) => !l.includes("/home/alice")));
  });

  it("reports a home that is a file or a symlink loop", async () => {
    const root = newRoot();
    fs.rmSync(join(root, "home/alice"), { recursive: true });
    fs.writeFileSync(join(root, "home/alice"), "");
    fs.renameSync(join(root, "root"), join(root, "root.real"));
    fs.symlinkSync("root", join(root, "root"));
    const { r } = await step(root, mdWith([keys[0]!]), ["root", "alice"]);
    expect(r.failed).toBe(true);
    expect(r.summary).toBe(`home directory ${root}/root of user root: ${root}/root: too many symlinks; home ${root}/home/alice of user alice is a regular file, not a directory`);
  });

  it("fails every user, clearly, when /etc/passwd is missing or a symlink", async () => {
    const root = newRoot();
    fs.renameSync(join(root, "etc/passwd"), join(root, "etc/passwd.real"));
    let { r } = await step(root, mdWith([keys[0]!]), ["root"]);
    expect(r.failed).toBe(true);
    expect(r.summary).toBe(`user root: ${root}/etc/passwd does not exist`);
    fs.symlinkSync("passwd.real", join(root, "etc/passwd"));
    ({ r } = await step(root, mdWith([keys[0]!]), ["root"]));
    expect(r.summary).toMatch(/^user root: .*passwd is a symlink; refusing to read through it$/);
    expect(fs.existsSync(join(root, "root/.ssh"))).toBe(false);
  });

  it("rejects a bad key naming its index, installs the others, and fails", async () => {
    const root = newRoot();
    const [a, b] = keys as [string, string];
    const badBase64 = a.replace(/^(\S+ \S{10})/, "$1!");
    const { r, stderr } = await step(root, mdWith([a, badBase64, b]));
    expect(r.failed).toBe(true);
    expect(r.summary).toBe("installed 2 keys for root; key 1 rejected (the key data is not valid base64)");
    expect(stderr).toContain('imds-init: ssh-keys: key 1 ("key-1") rejected: the key data is not valid base64');
    expect(read(ak(root)).toString()).toBe(`${a}\n${b}\n`);
  });

  it("rejects hostile key values: embedded newline, options, mismatched type, binary junk, a 404 and a fetch error", async () => {
    const root = newRoot();
    const [a, b, , d] = keys as [string, string, string, string];
    const [bt, bb] = b.split(" ") as [string, string];
    const md = new FakeMetadata({
      "meta-data/public-keys/": "0=good\n1=newline\n2=options\n3=mismatch\n4=junk\n5=gone\n6=broken\n7=good-too",
      "meta-data/public-keys/0/openssh-key": a + "\n",
      "meta-data/public-keys/1/openssh-key": `${d}\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKO6 injected\n`,
      "meta-data/public-keys/2/openssh-key": `command="/bin/sh" ${d}\n`,
      "meta-data/public-keys/3/openssh-key": `ssh-ed25519 ${bb} claims ed25519\n`,
      "meta-data/public-keys/4/openssh-key": Buffer.from([0x00, 0xff, 0x1b, 0x5b, 0x32, 0x4a]),
      "meta-data/public-keys/6/openssh-key": new MetadataError("meta-data/public-keys/6/openssh-key", "HTTP 500"),
      "meta-data/public-keys/7/openssh-key": `${bt} ${bb} second`,
    });
    const { r } = await step(root, md);
    expect(r.failed).toBe(true);
    expect(r.summary).toBe(
      [
        "installed 2 keys for root",
        `key 1 rejected (the line has a line break at offset ${d.length} (one line expected))`,
        'key 2 rejected (options or other text before the key type are not allowed (the line starts with "command=\\"/bin/sh\\""))',
        'key 3 rejected (the line says ssh-ed25519 but the key data is of type "ecdsa-sha2-nistp256")',
        "key 4 rejected (not valid UTF-8)",
        "key 5 rejected (meta-data/public-keys/5/openssh-key not found (404))",
        "key 6 rejected (meta-data/public-keys/6/openssh-key: HTTP 500)",
      ].join("; "),
    );
    expect(read(ak(root)).toString()).toBe(`${a}\n${bt} ${bb} second\n`);
  });

  it("fails without touching users when every key is rejected", async () => {
    const root = newRoot();
    const { r } = await step(root, mdWith(["ssh-foo AAAA"]));
    expect(r.failed).toBe(true);
    expect(r.summary).toBe('no key to install; key 0 rejected (unknown key type "ssh-foo" (known: ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256, ecdsa-sha2-nistp384, ecdsa-sha2-nistp521, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com, ssh-dss))');
    expect(fs.existsSync(join(root, "root/.ssh"))).toBe(false);
  });

  it("takes no public-keys (404) or an empty listing for no keys, not a failure", async () => {
    for (const md of [new FakeMetadata({}), new FakeMetadata({ "meta-data/public-keys/": "" })]) {
      const root = newRoot();
      const before = snapshot(root);
      const { r } = await step(root, md);
      expect(r.summary).toBe("no public keys in the metadata");
      expect(r.failed).toBeFalsy();
      expect(snapshot(root)).toEqual(before);
    }
  });

  it("says so when no users are configured", async () => {
    const root = newRoot();
    const { r } = await step(root, mdWith([keys[0]!]), []);
    expect(r.summary).toBe("no users to install keys for (ssh_keys.users is empty)");
    expect(r.failed).toBeFalsy();
  });

  it("fails the step on a malformed listing", async () => {
    const root = newRoot();
    await expect(step(root, new FakeMetadata({ "meta-data/public-keys/": "zero=name" }))).rejects.toThrow(/malformed public-keys listing/);
  });

  it("dry run: reports what it would do and changes nothing", async () => {
    const root = newRoot();
    fs.mkdirSync(join(root, "home/alice/.ssh"), { mode: 0o755 });
    fs.writeFileSync(ak(root, "home/alice"), `${keys[0]}\n`, { mode: 0o644 });
    const before = snapshot(root);
    const { r, stderr } = await step(root, mdWith([keys[0]!, keys[1]!]), ["root", "alice"], true);
    expect(r.summary).toBe("would install 2 keys for root; would install 1 key for alice (1 already present)");
    expect(r.failed).toBeFalsy();
    expect(stderr).toContain(`imds-init: ssh-keys: would fix ${root}/home/alice/.ssh: owner 0:0 -> 1000:1001, mode 755 -> 700`);
    expect(stderr).toContain(`imds-init: ssh-keys: would create ${root}/root/.ssh`);
    expect(snapshot(root)).toEqual(before);
  });

  it("resolves a symlinked /home inside the root, never on the host", async () => {
    const root = newRoot();
    fs.mkdirSync(join(root, "var/home"), { recursive: true });
    fs.renameSync(join(root, "home/alice"), join(root, "var/home/alice"));
    fs.rmdirSync(join(root, "home"));
    fs.symlinkSync("/var/home", join(root, "home")); // absolute, as on Fedora Atomic
    const hostHadIt = fs.existsSync("/var/home/alice");
    const { r } = await step(root, mdWith([keys[3]!]), ["alice"]);
    expect(r.summary).toBe("installed 1 key for alice");
    expect(read(join(root, "var/home/alice/.ssh/authorized_keys")).toString()).toBe(`${keys[3]}\n`);
    expect(fs.existsSync("/var/home/alice")).toBe(hostHadIt);
  });
});
