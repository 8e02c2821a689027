// The basesystem step against a real rpm database in a scratch root, with
// Debian's rpm and packages built by rpmbuild here. Debian's rpm keeps its
// database in ~/.rpmdb by default; each root says where its own is in a
// macros file under ROOT/etc/rpm, as an EL image's rpm configuration does.
import { describe, expect, it, beforeAll, afterAll, afterEach } from "vitest";
import { execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync, copyFileSync, chmodSync, symlinkSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { run } from "../src/steps/basesystem.ts";
import type { StepContext, StepResult } from "../src/steps/step.ts";
import type { StepRecord } from "../src/state.ts";
import { defaults, type Config } from "../src/config.ts";
import { Log } from "../src/log.ts";

const HOST_RPM = "/usr/bin/rpm";
const ID = "i-0123456789abcdef0";
// The template's install date: 2017-07-14T02:40:00Z, set through the
// SOURCE_DATE_EPOCH rpm 4.18 honours for install times.
const TEMPLATE = 1500000000;
const TEMPLATE_ISO = "2017-07-14T02:40:00.000Z";

const scratch: string[] = [];
function tmp(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  scratch.push(d);
  return d;
}

let topdir: string;
const pkg: Record<"b11" | "b12" | "other", string> = { b11: "", b12: "", other: "" };

function build(name: string, version: string, release: string): string {
  const spec = join(topdir, "SPECS", `${name}-${version}.spec`);
  writeFileSync(
    spec,
    `Name: ${name}\nVersion: ${version}\nRelease: ${release}\nSummary: test package\nLicense: Public Domain\nBuildArch: noarch\n` +
      `%description\ntest package for imds-init\n%files\n`,
  );
  // rpmbuild opens an rpm database to check build dependencies (creating
  // one if missing): keep it, and any ~/.rpmmacros, inside the scratch dir.
  execFileSync("rpmbuild", ["--define", `_topdir ${topdir}`, "--define", `_dbpath ${topdir}/rpmdb`, "--quiet", "-bb", spec], {
    env: { PATH: "/usr/bin:/bin", HOME: topdir, LANG: "C" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  return join(topdir, "RPMS", "noarch", `${name}-${version}-${release}.noarch.rpm`);
}

beforeAll(() => {
  topdir = tmp("imds-rpmbuild-");
  mkdirSync(join(topdir, "SPECS"));
  pkg.b11 = build("basesystem", "11", "13");
  pkg.b12 = build("basesystem", "12", "1");
  pkg.other = build("filesystem", "3.18", "1");
});

afterAll(() => {
  for (const d of scratch) rmSync(d, { recursive: true, force: true });
});

interface Root {
  dir: string;
  macros: string;
}

/** A scratch root that is an rpm system: rpm in its PATH, a macros file naming its database. */
function rpmRoot(opts: { dbpath?: string; macrosFile?: string; initdb?: boolean; install?: string | null } = {}): Root {
  const dir = tmp("imds-root-");
  const macros = join(dir, opts.macrosFile ?? "/etc/rpm/macros");
  mkdirSync(join(dir, "etc/rpm"), { recursive: true });
  mkdirSync(join(dir, "usr/bin"), { recursive: true });
  copyFileSync(HOST_RPM, join(dir, "usr/bin/rpm"));
  chmodSync(join(dir, "usr/bin/rpm"), 0o755);
  writeFileSync(macros, `%_dbpath ${opts.dbpath ?? "/var/lib/rpm"}\n`);
  if (opts.initdb ?? true) rpmIn({ dir, macros }, ["--initdb"]);
  const install = opts.install === undefined ? pkg.b11 : opts.install;
  if (install) rpmIn({ dir, macros }, ["-i", "--justdb", "--nomanifest", install], { SOURCE_DATE_EPOCH: String(TEMPLATE) });
  return { dir, macros };
}

function rpmIn(root: Root, args: string[], env: Record<string, string> = {}): string {
  return execFileSync(HOST_RPM, ["--load", root.macros, "--root", root.dir, ...args], {
    env: { PATH: "/usr/bin:/bin", HOME: "/root", LANG: "C", ...env },
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
}

/** What the root's rpm database says about basesystem: one line per installed package. */
function installed(root: Root): { time: number; nevra: string }[] {
  let out: string;
  try {
    out = rpmIn(root, ["-q", "--qf", "%{installtime}\\t%{nevra}\\n", "basesystem"]);
  } catch (e) {
    if (/is not installed/.test(String((e as { stdout?: string }).stdout))) return [];
    throw e;
  }
  return out
    .trim()
    .split("\n")
    .map((l) => {
      const [t, n] = l.split("\t");
      return { time: Number(t), nevra: n! };
    });
}

function put(root: Root, path: string, from: string): string {
  const file = join(root.dir, path);
  mkdirSync(join(file, ".."), { recursive: true });
  copyFileSync(from, file);
  return file;
}

interface Run {
  result: StepResult;
  log: string[];
  started: number;
  ended: number;
}

async function step(root: string, opts: { config?: Partial<Config["basesystem"]>; dryRun?: boolean; force?: boolean; previous?: StepRecord; instanceId?: string } = {}): Promise<Run> {
  const config = defaults();
  Object.assign(config.basesystem, opts.config ?? {});
  const log: string[] = [];
  const ctx: StepContext = {
    root,
    config,
    log: new Log("debug", (l) => log.push(l)),
    md: null,
    instanceId: opts.instanceId ?? ID,
    dryRun: opts.dryRun ?? false,
    force: opts.force ?? false,
    now: new Date(),
    previous: opts.previous,
    stdout: () => {},
  };
  const started = Math.floor(Date.now() / 1000);
  const result = await run(ctx);
  const ended = Math.ceil(Date.now() / 1000);
  return { result, log, started, ended };
}

function expectStampedNow(root: Root, r: Run, nevra: string): void {
  const now = installed(root);
  expect(now).toHaveLength(1);
  expect(now[0]!.nevra).toBe(nevra);
  expect(now[0]!.time).toBeGreaterThanOrEqual(r.started - 1);
  expect(now[0]!.time).toBeLessThanOrEqual(r.ended + 1);
  expect(r.result.data?.instance_built).toBe(new Date(now[0]!.time * 1000).toISOString());
}

describe("basesystem: re-stamp", () => {
  const saved = process.env.SOURCE_DATE_EPOCH;
  afterEach(() => {
    if (saved === undefined) delete process.env.SOURCE_DATE_EPOCH;
    else process.env.SOURCE_DATE_EPOCH = saved;
  });

  it("re-stamps from basesystem.package and records the template's date first", async () => {
    const root = rpmRoot();
    expect(installed(root)).toEqual([{ time: TEMPLATE, nevra: "basesystem-11-13.noarch" }]);
    put(root, "/var/lib/imds-init/basesystem.rpm", pkg.b11);
    // rpm would stamp this date instead of now if the step passed its environment on.
    process.env.SOURCE_DATE_EPOCH = "1400000000";
    const r = await step(root.dir);
    expect(r.result.failed).toBeFalsy();
    expect(r.result.summary).toMatch(/^re-stamped basesystem-11-13\.noarch: template built 2017-07-14T02:40:00\.000Z, instance built 20/);
    expect(r.result.data).toMatchObject({ template_built: TEMPLATE_ISO, package: "/var/lib/imds-init/basesystem.rpm", nevra: "basesystem-11-13.noarch" });
    expectStampedNow(root, r, "basesystem-11-13.noarch");
  });

  it("uses a package file named by basesystem.package", async () => {
    const root = rpmRoot();
    put(root, "/opt/pkgs/base.rpm", pkg.b11);
    const r = await step(root.dir, { config: { package: "/opt/pkgs/base.rpm" } });
    expect(r.result.data?.package).toBe("/opt/pkgs/base.rpm");
    expectStampedNow(root, r, "basesystem-11-13.noarch");
  });

  it("finds one in the dnf cache; another version replaces the installed one instead of adding a second", async () => {
    const root = rpmRoot();
    put(root, "/var/cache/dnf/updates-1a2b3c4d5e6f7a8b/packages/basesystem-12-1.noarch.rpm", pkg.b12);
    const r = await step(root.dir);
    expect(r.result.data).toMatchObject({
      template_built: TEMPLATE_ISO,
      package: "/var/cache/dnf/updates-1a2b3c4d5e6f7a8b/packages/basesystem-12-1.noarch.rpm",
    });
    expectStampedNow(root, r, "basesystem-12-1.noarch");
  });

  it("prefers the installed version when the caches hold several", async () => {
    const root = rpmRoot();
    put(root, "/var/cache/dnf/updates-1a2b/packages/basesystem-12-1.noarch.rpm", pkg.b12);
    put(root, "/var/cache/yum/x86_64/7/base/packages/basesystem-11-13.noarch.rpm", pkg.b11);
    const r = await step(root.dir);
    expect(r.result.data?.package).toBe("/var/cache/yum/x86_64/7/base/packages/basesystem-11-13.noarch.rpm");
    expectStampedNow(root, r, "basesystem-11-13.noarch");
  });

  it("lets the root's own macros choose where its database is", async () => {
    const root = rpmRoot({ dbpath: "/usr/lib/sysimage/rpm", macrosFile: "/etc/rpm/macros.dbpath" });
    expect(existsSync(join(root.dir, "usr/lib/sysimage/rpm/rpmdb.sqlite"))).toBe(true);
    put(root, "/var/lib/imds-init/basesystem.rpm", pkg.b11);
    const r = await step(root.dir);
    expectStampedNow(root, r, "basesystem-11-13.noarch");
  });

  it("keeps the template's date on a forced second run for the same instance", async () => {
    const root = rpmRoot();
    put(root, "/var/lib/imds-init/basesystem.rpm", pkg.b11);
    const first = await step(root.dir);
    expect(first.result.data?.template_built).toBe(TEMPLATE_ISO);
    const previous: StepRecord = { instance_id: ID, result: "ok", at: new Date().toISOString(), data: first.result.data };
    const second = await step(root.dir, { force: true, previous });
    expect(second.result.data?.template_built).toBe(TEMPLATE_ISO);
    expectStampedNow(root, second, "basesystem-11-13.noarch");
  });

  it("takes the date rpm shows as the template's for a new instance (an image made from an instance)", async () => {
    const root = rpmRoot();
    put(root, "/var/lib/imds-init/basesystem.rpm", pkg.b11);
    const first = await step(root.dir);
    const stampedByFirst = first.result.data?.instance_built;
    const previous: StepRecord = { instance_id: ID, result: "ok", at: new Date().toISOString(), data: first.result.data };
    const second = await step(root.dir, { previous, instanceId: "i-0fedcba9876543210" });
    expect(second.result.data?.template_built).toBe(stampedByFirst);
  });
});

describe("basesystem: refusals", () => {
  it("fails when no package is found, saying where it looked and how to provide one", async () => {
    const root = rpmRoot();
    mkdirSync(join(root.dir, "var/cache/dnf/fedora-0123/packages"), { recursive: true });
    put(root, "/var/cache/dnf/fedora-0123/packages/bash-5.2.26-3.fc40.x86_64.rpm", pkg.other);
    const err = await step(root.dir).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    const msg = (err as Error).message;
    expect(msg).toContain("/var/lib/imds-init/basesystem.rpm (basesystem.package) does not exist");
    expect(msg).toContain("/var/cache/dnf and /var/cache/yum hold no basesystem-*.rpm");
    expect(msg).toMatch(/put one at \/var\/lib\/imds-init\/basesystem\.rpm .*dnf download basesystem.* basesystem\.package/);
    expect(installed(root)).toEqual([{ time: TEMPLATE, nevra: "basesystem-11-13.noarch" }]);
  });

  it("refuses basesystem.package when it is a symlink", async () => {
    const root = rpmRoot();
    mkdirSync(join(root.dir, "var/lib/imds-init"), { recursive: true });
    symlinkSync(pkg.b11, join(root.dir, "var/lib/imds-init/basesystem.rpm"));
    await expect(step(root.dir)).rejects.toThrow("basesystem.package /var/lib/imds-init/basesystem.rpm refused: a symlink");
    expect(installed(root)).toEqual([{ time: TEMPLATE, nevra: "basesystem-11-13.noarch" }]);
  });

  it("refuses a package of another name", async () => {
    const root = rpmRoot();
    put(root, "/var/lib/imds-init/basesystem.rpm", pkg.other);
    await expect(step(root.dir)).rejects.toThrow(/refused: a package of "filesystem", not basesystem/);
    expect(installed(root)).toEqual([{ time: TEMPLATE, nevra: "basesystem-11-13.noarch" }]);
  });

  it("refuses a text file, which rpm would read as a manifest naming other packages", async () => {
    const root = rpmRoot();
    mkdirSync(join(root.dir, "var/lib/imds-init"), { recursive: true });
    writeFileSync(join(root.dir, "var/lib/imds-init/basesystem.rpm"), pkg.b11 + "\n");
    await expect(step(root.dir)).rejects.toThrow(/refused: not an rpm package/);
    expect(installed(root)).toEqual([{ time: TEMPLATE, nevra: "basesystem-11-13.noarch" }]);
  });

  it("does not use symlinks or other packages in the caches, and says so", async () => {
    const root = rpmRoot();
    mkdirSync(join(root.dir, "var/cache/dnf/a/packages"), { recursive: true });
    symlinkSync(pkg.b11, join(root.dir, "var/cache/dnf/a/packages/basesystem-11-13.noarch.rpm"));
    put(root, "/var/cache/yum/b/packages/basesystem-99-1.noarch.rpm", pkg.other);
    const err = (await step(root.dir).catch((e: Error) => e)) as Error;
    expect(err.message).toContain("/var/cache/dnf/a/packages/basesystem-11-13.noarch.rpm (a symlink)");
    expect(err.message).toContain('/var/cache/yum/b/packages/basesystem-99-1.noarch.rpm (a package of "filesystem", not basesystem)');
    expect(installed(root)).toEqual([{ time: TEMPLATE, nevra: "basesystem-11-13.noarch" }]);
  });
});

describe("basesystem: no rpm basesystem", () => {
  it("records the first boot when the root has no rpm at all", async () => {
    const dir = tmp("imds-root-");
    const r = await step(dir);
    expect(r.result.summary).toMatch(/^no rpm basesystem here \(no rpm in ROOT's PATH\); recorded first boot \d{4}-/);
    expect(r.result.data).toEqual({ template_built: null, instance_built: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) });
  });

  it("records the first boot when rpm has no database there, and creates none", async () => {
    const root = rpmRoot({ initdb: false, install: null });
    const r = await step(root.dir);
    expect(r.result.summary).toMatch(/^no rpm basesystem here \(no rpm database in \/var\/lib\/rpm\); recorded first boot/);
    expect(r.result.failed).toBeFalsy();
    expect(existsSync(join(root.dir, "var/lib/rpm"))).toBe(false);
  });

  it("records the first boot when basesystem is not installed, and keeps it on a second run", async () => {
    const root = rpmRoot({ install: null });
    const first = await step(root.dir);
    expect(first.result.summary).toMatch(/basesystem is not installed in the rpm database in \/var\/lib\/rpm/);
    const firstBoot = first.result.data?.instance_built;
    expect(typeof firstBoot).toBe("string");
    const previous: StepRecord = { instance_id: ID, result: "ok", at: String(firstBoot), data: first.result.data };
    await new Promise((r) => setTimeout(r, 5));
    const second = await step(root.dir, { force: true, previous });
    expect(second.result.data).toEqual({ template_built: null, instance_built: firstBoot });
  });
});

describe("basesystem: dry run", () => {
  it("says what it would do and changes nothing", async () => {
    const root = rpmRoot();
    put(root, "/var/cache/dnf/x/packages/basesystem-11-13.noarch.rpm", pkg.b11);
    const r = await step(root.dir, { dryRun: true });
    expect(r.result.summary).toBe(
      "would re-stamp basesystem-11-13.noarch from /var/cache/dnf/x/packages/basesystem-11-13.noarch.rpm (installed 2017-07-14T02:40:00.000Z; template built 2017-07-14T02:40:00.000Z)",
    );
    expect(installed(root)).toEqual([{ time: TEMPLATE, nevra: "basesystem-11-13.noarch" }]);
  });

  it("still fails when there is nothing to re-stamp with", async () => {
    const root = rpmRoot();
    await expect(step(root.dir, { dryRun: true })).rejects.toThrow(/no basesystem package to re-stamp with/);
  });

  it("says it would record the first boot where there is no rpm basesystem", async () => {
    const root = rpmRoot({ initdb: false, install: null });
    const r = await step(root.dir, { dryRun: true });
    expect(r.result.summary).toMatch(/^no rpm basesystem here \(no rpm database in \/var\/lib\/rpm\); would record first boot/);
    expect(existsSync(join(root.dir, "var/lib/rpm"))).toBe(false);
  });
});
