// scripts/install.sh: what it puts where in system trees of each kind, that
// --uninstall leaves the tree exactly as it was, that it keeps what an admin
// changed, and that it never writes through a symbolic link nor replaces
// what it did not install. Also the default config it installs.
import { describe, expect, it, beforeEach, afterEach } from "vitest";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseDocument } from "yaml";
import { defaults, parseConfig } from "../src/config.ts";
import { BINARY, requireBinary, runBinary } from "./binary.ts";

const repo = fileURLToPath(new URL("..", import.meta.url));
const INSTALL = join(repo, "scripts/install.sh");

// Installing copies and checksums the binary: the 150 MB one where it is
// run, /bin/true (a real, small executable) where only the copying matters.
function install(args: string[], binary = "/bin/true"): { code: number | null; stdout: string; stderr: string } {
  if (!args.includes("--uninstall")) args = [...args, "--binary", binary];
  const r = spawnSync(INSTALL, args, { encoding: "utf8", env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" } });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Every entry under dir: type, mode, owner, size, link target, path (not times). */
function listing(dir: string): string {
  const r = spawnSync("find", [".", "-printf", "%y %m %U:%G %s %l %p\\n"], { cwd: dir, encoding: "utf8" });
  if (r.status !== 0) throw new Error(r.stderr);
  return r.stdout.split("\n").sort().join("\n");
}

const sha256 = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");

function mk(root: string, dirs: string[], links: Record<string, string> = {}): void {
  for (const d of dirs) mkdirSync(join(root, d), { recursive: true });
  for (const [path, target] of Object.entries(links)) symlinkSync(target, join(root, path));
}

// The layouts install.sh must recognise, as their real systems have them.
const layouts = {
  // Debian 12 / EL9: merged /usr, /sbin/init -> systemd.
  systemd: (r: string) =>
    mk(r, ["usr/lib/systemd/system", "usr/sbin", "usr/bin", "etc/systemd/system", "etc/ssh", "var/lib", "var/log", "root"], {
      sbin: "usr/sbin",
      lib: "usr/lib",
      "usr/sbin/init": "/lib/systemd/systemd",
    }),
  // Debian 10 style: /lib/systemd/system only, no /sbin/init link yet (an
  // image being built), systemd installed.
  systemdLib: (r: string) => {
    mk(r, ["lib/systemd/system", "usr/sbin", "etc/systemd/system", "var/lib"]);
    writeFileSync(join(r, "lib/systemd/systemd"), "");
    chmodSync(join(r, "lib/systemd/systemd"), 0o755);
  },
  // EL6 / Amazon Linux 1: upstart or sysvinit, /etc/rc.d with links from /etc.
  el6: (r: string) => {
    mk(r, ["etc/rc.d/init.d", "etc/rc.d/rc0.d", "etc/rc.d/rc1.d", "etc/rc.d/rc2.d", "etc/rc.d/rc3.d", "etc/rc.d/rc4.d", "etc/rc.d/rc5.d", "etc/rc.d/rc6.d", "sbin", "usr/sbin", "usr/share/man/man8", "var/lib", "etc/sysconfig"], {
      "etc/init.d": "rc.d/init.d",
      "etc/rc3.d": "rc.d/rc3.d",
    });
    writeFileSync(join(r, "sbin/init"), "upstart");
  },
  // Debian with sysvinit-core.
  debianSysv: (r: string) => {
    mk(r, ["etc/init.d", "etc/rc0.d", "etc/rc1.d", "etc/rc2.d", "etc/rc3.d", "etc/rc4.d", "etc/rc5.d", "etc/rc6.d", "etc/rcS.d", "sbin", "usr/sbin", "var/lib"]);
    writeFileSync(join(r, "sbin/init"), "sysvinit");
    writeFileSync(join(r, "etc/init.d/.depend.start"), "TARGETS = ssh\n");
  },
};

describe("scripts/install.sh", () => {
  let root: string;
  beforeEach(() => {
    requireBinary();
    root = mkdtempSync(join(tmpdir(), "imds-install-"));
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  const at = (p: string) => join(root, p);

  it("installs the binary, units, man page and config into a systemd tree, enables the units, and uninstalls to the same tree", () => {
    layouts.systemd(root);
    mk(root, ["usr/lib/x86_64-linux-gnu"]);
    writeFileSync(at("usr/lib/x86_64-linux-gnu/libatomic.so.1"), "");
    const before = listing(root);
    const r = install(["--root", root], BINARY);
    expect(r).toMatchObject({ code: 0, stderr: "" });
    expect(r.stdout).toContain("installed imds-init (systemd)");

    const mode = (p: string) => lstatSync(at(p)).mode & 0o7777;
    expect(sha256(at("usr/sbin/imds-init"))).toBe(sha256(BINARY));
    expect(mode("usr/sbin/imds-init")).toBe(0o755);
    for (const u of ["imds-init.service", "imds-init-user-data.service"]) {
      expect(readFileSync(at(`usr/lib/systemd/system/${u}`), "utf8")).toBe(readFileSync(join(repo, "systemd", u), "utf8"));
      expect(mode(`usr/lib/systemd/system/${u}`)).toBe(0o644);
      expect(readlinkSync(at(`etc/systemd/system/multi-user.target.wants/${u}`))).toBe(`/usr/lib/systemd/system/${u}`);
    }
    expect(readFileSync(at("usr/share/man/man8/imds-init.8"), "utf8")).toBe(readFileSync(join(repo, "src/imds-init.8"), "utf8"));
    expect(readFileSync(at("etc/imds-init.yaml"), "utf8")).toBe(readFileSync(join(repo, "src/imds-init.yaml"), "utf8"));
    expect(mode("var/lib/imds-init")).toBe(0o700);
    expect(mode("var/lib/imds-init/install.manifest")).toBe(0o600);
    expect(existsSync(at("etc/init.d/imds-init"))).toBe(false);
    // The installed binary runs and reads the installed config as all defaults.
    expect(runBinary(["status", "--root", root], { binary: at("usr/sbin/imds-init") }).code).toBe(0);

    const u = install(["--root", root, "--uninstall"]);
    expect(u).toMatchObject({ code: 0, stderr: "" });
    expect(listing(root)).toBe(before);
  });

  it("uses /lib/systemd/system where that is the unit directory, and detects systemd without /sbin/init", () => {
    layouts.systemdLib(root);
    const before = listing(root);
    const r = install(["--root", root]);
    expect(r.code).toBe(0);
    // The tree has no libatomic.so.1, without which the binary cannot start.
    expect(r.stderr).toBe(`install: warning: ${root} has no libatomic.so.1, which imds-init needs to run: install it (Debian: libatomic1; EL, Amazon Linux: libatomic)\n`);
    expect(existsSync(at("lib/systemd/system/imds-init.service"))).toBe(true);
    expect(readlinkSync(at("etc/systemd/system/multi-user.target.wants/imds-init.service"))).toBe("/lib/systemd/system/imds-init.service");
    expect(install(["--root", root, "--uninstall"]).code).toBe(0);
    expect(listing(root)).toBe(before);
  });

  it("installs the rc script on an EL6-style tree with S11 links in /etc/rc.d, never through /etc/init.d's link", () => {
    layouts.el6(root);
    mk(root, ["usr/lib64"]);
    writeFileSync(at("usr/lib64/libatomic.so.1"), "");
    const before = listing(root);
    const r = install(["--root", root]);
    expect(r).toMatchObject({ code: 0, stderr: "" });
    expect(r.stdout).toContain("installed imds-init (sysv)");
    expect(readFileSync(at("etc/rc.d/init.d/imds-init"), "utf8")).toBe(readFileSync(join(repo, "rc/imds-init"), "utf8"));
    expect(lstatSync(at("etc/rc.d/init.d/imds-init")).mode & 0o7777).toBe(0o755);
    for (const n of [2, 3, 4, 5]) expect(readlinkSync(at(`etc/rc.d/rc${n}.d/S11imds-init`))).toBe("../init.d/imds-init");
    for (const n of [0, 1, 6]) expect(spawnSync("ls", [at(`etc/rc.d/rc${n}.d`)], { encoding: "utf8" }).stdout).toBe("");
    expect(existsSync(at("usr/lib/systemd"))).toBe(false);
    expect(install(["--root", root, "--uninstall"]).code).toBe(0);
    expect(listing(root)).toBe(before);
  });

  it("installs the rc script on a Debian sysvinit tree and says how to add it to insserv's order", () => {
    layouts.debianSysv(root);
    const before = listing(root);
    const r = install(["--root", root]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("update-rc.d imds-init defaults");
    for (const n of [2, 3, 4, 5]) expect(readlinkSync(at(`etc/rc${n}.d/S01imds-init`))).toBe("../init.d/imds-init");
    expect(install(["--root", root, "--uninstall"]).code).toBe(0);
    expect(listing(root)).toBe(before);
  });

  it("follows --init over what it detects", () => {
    layouts.systemd(root);
    mk(root, ["etc/init.d", "etc/rc2.d", "etc/rc3.d", "etc/rc4.d", "etc/rc5.d"]);
    const before = listing(root);
    expect(install(["--root", root, "--init", "sysv"]).code).toBe(0);
    expect(existsSync(at("etc/init.d/imds-init"))).toBe(true);
    expect(existsSync(at("usr/lib/systemd/system/imds-init.service"))).toBe(false);
    expect(install(["--root", root, "--uninstall"]).code).toBe(0);
    expect(listing(root)).toBe(before);
    expect(install(["--root", root, "--init", "upstart"])).toMatchObject({ code: 1, stderr: expect.stringContaining("--init must be auto, systemd or sysv") });
  });

  it("installs the basesystem package file when given one, and removes it again", () => {
    layouts.systemd(root);
    const before = listing(root);
    const rpm = join(root, "..", `${root.split("/").pop()}-basesystem.rpm`);
    writeFileSync(rpm, "not really an rpm, but bytes to copy");
    try {
      expect(install(["--root", root, "--basesystem-rpm", rpm]).code).toBe(0);
      expect(readFileSync(at("var/lib/imds-init/basesystem.rpm"), "utf8")).toBe("not really an rpm, but bytes to copy");
      expect(lstatSync(at("var/lib/imds-init/basesystem.rpm")).mode & 0o7777).toBe(0o644);
      expect(install(["--root", root, "--uninstall"]).code).toBe(0);
      expect(listing(root)).toBe(before);
    } finally {
      rmSync(rpm, { force: true });
    }
  });

  it("never touches an admin's existing config, at install or uninstall", () => {
    layouts.systemd(root);
    mkdirSync(at("etc"), { recursive: true });
    writeFileSync(at("etc/imds-init.yaml"), "log:\n  level: debug\n");
    const before = listing(root);
    const r = install(["--root", root]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`kept the existing ${at("etc/imds-init.yaml")}`);
    expect(readFileSync(at("etc/imds-init.yaml"), "utf8")).toBe("log:\n  level: debug\n");
    expect(install(["--root", root, "--uninstall"]).code).toBe(0);
    expect(listing(root)).toBe(before);
  });

  it("keeps, and names, the config an admin edited after install; removes everything else", () => {
    layouts.systemd(root);
    expect(install(["--root", root]).code).toBe(0);
    writeFileSync(at("etc/imds-init.yaml"), "hostname:\n  short: true\n");
    const u = install(["--root", root, "--uninstall"]);
    expect(u.code).toBe(0);
    expect(u.stderr).toContain(`kept ${at("etc/imds-init.yaml")}: changed since it was installed`);
    expect(readFileSync(at("etc/imds-init.yaml"), "utf8")).toBe("hostname:\n  short: true\n");
    expect(existsSync(at("usr/sbin/imds-init"))).toBe(false);
    expect(existsSync(at("usr/lib/systemd/system/imds-init.service"))).toBe(false);
    expect(existsSync(at("var/lib/imds-init"))).toBe(false);
  });

  it("keeps the state directory once imds-init has run, and what is in it", () => {
    layouts.systemd(root);
    expect(install(["--root", root]).code).toBe(0);
    writeFileSync(at("var/lib/imds-init/state.json"), "{}\n");
    const u = install(["--root", root, "--uninstall"]);
    expect(u.code).toBe(0);
    expect(u.stderr).toContain(`kept ${at("var/lib/imds-init")}: not empty`);
    expect(readFileSync(at("var/lib/imds-init/state.json"), "utf8")).toBe("{}\n");
    expect(existsSync(at("var/lib/imds-init/install.manifest"))).toBe(false);
  });

  it("installs again over its own install, and still uninstalls to the original tree", () => {
    layouts.systemd(root);
    const before = listing(root);
    expect(install(["--root", root]).code).toBe(0);
    const once = listing(root);
    expect(install(["--root", root]).code).toBe(0);
    expect(listing(root)).toBe(once);
    expect(install(["--root", root, "--uninstall"]).code).toBe(0);
    expect(listing(root)).toBe(before);
  });

  it("refuses, changing nothing, to replace a file it did not install", () => {
    layouts.systemd(root);
    writeFileSync(at("usr/sbin/imds-init"), "someone else's");
    const before = listing(root);
    const r = install(["--root", root]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${at("usr/sbin/imds-init")} exists and was not installed by this script`);
    expect(listing(root)).toBe(before);
  });

  it("refuses to install again over a binary changed since it installed it", () => {
    layouts.systemd(root);
    expect(install(["--root", root]).code).toBe(0);
    writeFileSync(at("usr/sbin/imds-init"), "patched by hand");
    const before = listing(root);
    const r = install(["--root", root]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("was changed since it was installed");
    expect(listing(root)).toBe(before);
  });

  it("refuses, changing nothing, to write through a symbolic link in the tree", () => {
    const outside = mkdtempSync(join(tmpdir(), "imds-outside-"));
    try {
      layouts.systemd(root);
      rmSync(at("etc/systemd/system"), { recursive: true });
      symlinkSync(outside, at("etc/systemd/system"));
      const before = listing(root);
      const r = install(["--root", root]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`refusing: ${at("etc/systemd/system")} is a symbolic link`);
      expect(listing(root)).toBe(before);
      expect(readdirSync(outside)).toEqual([]);
    } finally {
      rmSync(outside, { recursive: true, force: true });
    }
  });

  it("uninstall says so when nothing was installed, and changes nothing", () => {
    layouts.systemd(root);
    const before = listing(root);
    const r = install(["--root", root, "--uninstall"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("nothing was installed here by this script");
    expect(listing(root)).toBe(before);
  });

  it("refuses a binary that is not there", () => {
    layouts.systemd(root);
    const r = install(["--root", root], join(root, "no-such-binary"));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("no-such-binary: not found (build it with scripts/build.sh)");
  });

  it("rejects an unknown argument with its usage", () => {
    const r = install(["--frobnicate"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("unknown argument: --frobnicate");
    expect(r.stderr).toContain("usage: scripts/install.sh");
  });
});

describe("the default config it installs (src/imds-init.yaml)", () => {
  const text = readFileSync(join(repo, "src/imds-init.yaml"), "utf8");

  it("is, as shipped, all comments: every key at its default", () => {
    expect(parseConfig(text, "imds-init.yaml")).toEqual(defaults());
  });

  it("shows every key with its default value, so uncommenting it changes nothing", () => {
    // Uncomment the "#section:" and "#  key:" lines, leave the prose.
    const uncommented = text
      .split("\n")
      .map((l) => (/^#( {2})?[a-z_][a-z0-9_]*:/.test(l) ? l.slice(1) : l))
      .join("\n");
    expect(parseConfig(uncommented, "imds-init.yaml")).toEqual(defaults());
    const shown = parseDocument(uncommented).toJS() as Record<string, Record<string, unknown>>;
    const keys = (o: Record<string, Record<string, unknown>>) => Object.entries(o).flatMap(([s, v]) => Object.keys(v).map((k) => `${s}.${k}`)).sort();
    expect(keys(shown)).toEqual(keys(defaults() as unknown as Record<string, Record<string, unknown>>));
  });
});
