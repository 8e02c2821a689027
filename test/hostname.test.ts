// The hostname step against a temp root and an in-memory metadata service.
// The live kernel host name is only ever changed inside `unshare --uts`
// (a private UTS namespace), with /etc under a private overlay when the
// whole step runs with root "/": the test machine's name and files stay.
import { describe, it, expect, beforeEach, afterEach } from "vitest";
import * as fs from "node:fs";
import { spawnSync } from "node:child_process";
import { hostname as osHostname, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { defaults, type Config } from "../src/config.ts";
import { Log } from "../src/log.ts";
import type { Metadata } from "../src/imds/metadata.ts";
import { StepError, type StepContext } from "../src/steps/step.ts";
import { run, hostnameProblem, withSysconfigHostname, withEtcHostname } from "../src/steps/hostname.ts";

class FakeMetadata implements Metadata {
  readonly endpoint = "http://fake.invalid";
  readonly protocol = "v2" as const;
  requests = 0;
  readonly answers: Map<string, string | Error>;
  constructor(answers: Record<string, string | Error>) {
    this.answers = new Map(Object.entries(answers));
  }
  private get(path: string): string | null {
    this.requests++;
    const a = this.answers.get(path);
    if (a instanceof Error) throw a;
    return a ?? null;
  }
  // Deliberately no validation here: the step must hold even if the client let something through.
  async value(path: string): Promise<string | null> {
    const a = this.get(path);
    return a === null ? null : a.replace(/\n$/, "");
  }
  async list(path: string): Promise<string[] | null> {
    const a = this.get(path);
    return a === null ? null : a.split("\n").filter(Boolean);
  }
  async bytes(path: string): Promise<Buffer | null> {
    const a = this.get(path);
    return a === null ? null : Buffer.from(a);
  }
}

const FQDN = "ip-172-31-16-127.eu-west-1.compute.internal";
let root: string;
let lines: string[];

function ctx(md: Metadata, opts: { hostname?: Partial<Config["hostname"]>; dryRun?: boolean; root?: string } = {}): StepContext {
  const config = defaults();
  Object.assign(config.hostname, opts.hostname ?? {});
  return {
    root: opts.root ?? root,
    config,
    log: new Log("debug", (l) => lines.push(l)),
    md,
    instanceId: "i-0123456789abcdef0",
    dryRun: opts.dryRun ?? false,
    force: false,
    now: new Date(),
    previous: undefined,
    stdout: () => {},
  };
}

const md = (v: string | Error = FQDN) => new FakeMetadata({ "meta-data/local-hostname": v });
const etc = (f: string) => join(root, "etc", f);
const read = (p: string) => fs.readFileSync(p, "latin1");

/** Identity of a file: a rewrite changes the inode, a touch the mtime. */
function ident(p: string): string {
  const st = fs.lstatSync(p, { bigint: true });
  return `${st.ino}:${st.mtimeNs}:${st.ctimeNs}:${st.mode}:${st.uid}:${st.gid}`;
}

beforeEach(() => {
  root = fs.mkdtempSync(join(tmpdir(), "imds-hostname-"));
  fs.mkdirSync(join(root, "etc", "sysconfig"), { recursive: true });
  lines = [];
});
afterEach(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

describe("hostname: setting", () => {
  it("writes /etc/hostname (0644, newline-terminated) and leaves the kernel alone under a root", async () => {
    const before = osHostname();
    const r = await run(ctx(md()));
    expect(r.summary).toBe(`set to ${FQDN} (/etc/hostname)`);
    expect(r.failed).toBeFalsy();
    expect(read(etc("hostname"))).toBe(FQDN + "\n");
    const st = fs.statSync(etc("hostname"));
    expect(st.mode & 0o7777).toBe(0o644);
    expect(st.uid).toBe(process.getuid!());
    expect(r.data).toMatchObject({ hostname: FQDN, source: "local-hostname", changed: ["/etc/hostname"] });
    expect(osHostname()).toBe(before);
    // no temp file left next to it
    expect(fs.readdirSync(join(root, "etc")).sort()).toEqual(["hostname", "sysconfig"]);
  });

  it("reads the path chosen by hostname.source", async () => {
    const m = new FakeMetadata({
      "meta-data/local-hostname": "local.example.com",
      "meta-data/hostname": "plain.example.com",
      "meta-data/public-hostname": "ec2-1-2-3-4.compute.amazonaws.com",
    });
    for (const [source, want] of [
      ["hostname", "plain.example.com"],
      ["public-hostname", "ec2-1-2-3-4.compute.amazonaws.com"],
      ["local-hostname", "local.example.com"],
    ] as const) {
      const r = await run(ctx(m, { hostname: { source } }));
      expect(r.summary).toBe(`set to ${want} (/etc/hostname)`);
      expect(read(etc("hostname"))).toBe(want + "\n");
    }
  });

  it("short: true keeps only the first label", async () => {
    const r = await run(ctx(md(), { hostname: { short: true } }));
    expect(r.summary).toBe("set to ip-172-31-16-127 (/etc/hostname)");
    expect(read(etc("hostname"))).toBe("ip-172-31-16-127\n");
    expect(r.data).toMatchObject({ hostname: "ip-172-31-16-127", from: FQDN });
  });

  it("accepts one trailing dot and drops it", async () => {
    const r = await run(ctx(md(FQDN + ".")));
    expect(read(etc("hostname"))).toBe(FQDN + "\n");
    expect(r.summary).toBe(`set to ${FQDN} (/etc/hostname)`);
  });

  it("uses the first label of an FQDN longer than the kernel's 64, with a warning", async () => {
    const long = "host-1." + "a".repeat(60) + ".example.com"; // 79 characters, valid
    expect(hostnameProblem(long)).toBeNull();
    const r = await run(ctx(md(long)));
    expect(read(etc("hostname"))).toBe("host-1\n");
    expect(r.data).toMatchObject({ hostname: "host-1", from: long });
    expect(lines.some((l) => l.includes("over the kernel's limit of 64") && l.includes("host-1"))).toBe(true);
    // exactly 64 still fits
    const fits = "h." + "b".repeat(58) + ".com";
    expect(fits.length).toBe(64);
    await run(ctx(md(fits)));
    expect(read(etc("hostname"))).toBe(fits + "\n");
  });

  it("keeps the owner and mode of an existing /etc/hostname and its comment lines", async () => {
    fs.writeFileSync(etc("hostname"), "# set by the image builder\nlocalhost\n");
    fs.chownSync(etc("hostname"), 1234, 4321);
    fs.chmodSync(etc("hostname"), 0o640);
    await run(ctx(md()));
    expect(read(etc("hostname"))).toBe(`# set by the image builder\n${FQDN}\n`);
    const st = fs.statSync(etc("hostname"));
    expect([st.uid, st.gid, st.mode & 0o7777]).toEqual([1234, 4321, 0o640]);
  });

  it("fails clearly on a 404 for the source and changes nothing", async () => {
    fs.writeFileSync(etc("hostname"), "old\n");
    const id = ident(etc("hostname"));
    const m = new FakeMetadata({ "meta-data/local-hostname": FQDN });
    await expect(run(ctx(m, { hostname: { source: "public-hostname" } }))).rejects.toThrow(
      /meta-data\/public-hostname not found \(404\).*nothing changed/,
    );
    expect(ident(etc("hostname"))).toBe(id);
  });

  it("lets a metadata error fail the step", async () => {
    await expect(run(ctx(md(new Error("meta-data/local-hostname: HTTP 500"))))).rejects.toThrow("HTTP 500");
    expect(fs.existsSync(etc("hostname"))).toBe(false);
  });
});

describe("hostname: hostile values are refused, escaped, and change nothing", () => {
  const cases: [string, string, RegExp][] = [
    ["shell metacharacters", "a;rm -rf /", /characters other than/],
    ["command substitution", "$(reboot)", /characters other than/],
    ["backticks and pipes", "h`id`|x", /characters other than/],
    ["spaces", "my host", /characters other than/],
    ["300 characters", "a".repeat(300), /300 characters long, over 253/],
    ["254 characters in labels", Array(51).fill("abcd").join(".").slice(0, 254), /254 characters long, over 253/],
    ["non-ASCII", "héllo.example.com", /characters other than/],
    ["a right-to-left override", "abc\u202edef", /characters other than/],
    ["empty", "", /it is empty/],
    ["only a dot", ".", /empty label/],
    ["an empty label", "a..b", /empty label/],
    ["a leading dot", ".example.com", /empty label/],
    ["two trailing dots", "example.com..", /empty label/],
    ["a leading hyphen", "-host.example.com", /starts or ends with '-'/],
    ["a trailing hyphen", "host-.example.com", /starts or ends with '-'/],
    ["a label over 63", "a".repeat(64) + ".example.com", /label of 64 characters, over 63/],
    ["a control character", "ho\x07st", /characters other than/],
    ["an escape sequence", "\x1b[2Jhost", /characters other than/],
    ["an embedded newline", "host\nevil", /characters other than/],
    ["a NUL", "host\0", /characters other than/],
    ["an underscore", "my_host", /characters other than/],
    ["a slash", "../../etc/passwd", /characters other than/],
  ];
  for (const [what, value, why] of cases) {
    it(`refuses ${what}`, async () => {
      fs.writeFileSync(etc("hostname"), "old\n");
      fs.writeFileSync(etc("sysconfig/network"), "NETWORKING=yes\nHOSTNAME=old\n");
      const before = [ident(etc("hostname")), ident(etc("sysconfig/network"))];
      const err = await run(ctx(md(value))).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(StepError);
      const msg = (err as Error).message;
      expect(msg).toMatch(why);
      expect(msg).toMatch(/nothing changed$/);
      // shown escaped: printable ASCII only, bounded whatever the value's length
      expect(msg).toMatch(/^[\x20-\x7e]*$/);
      expect(msg.length).toBeLessThan(250);
      if (value.length <= 64) expect(msg).toContain(JSON.stringify(value).replace(/[^\x20-\x7e]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0")));
      else expect(msg).toContain(`(${value.length} characters)`);
      expect([ident(etc("hostname")), ident(etc("sysconfig/network"))]).toEqual(before);
    });
  }

  it("validates the whole value even when short: true would keep a valid first label", async () => {
    await expect(run(ctx(md("good.bad_label;reboot"), { hostname: { short: true } }))).rejects.toThrow(/not a valid host name/);
    expect(fs.existsSync(etc("hostname"))).toBe(false);
  });
});

describe("hostname: /etc/sysconfig/network", () => {
  it("is not created when absent", async () => {
    fs.rmSync(join(root, "etc", "sysconfig"), { recursive: true });
    const r = await run(ctx(md()));
    expect(r.data).toMatchObject({ changed: ["/etc/hostname"] });
    expect(fs.existsSync(join(root, "etc", "sysconfig"))).toBe(false);
  });

  it("updates HOSTNAME= and keeps every other line byte for byte, owner and mode", async () => {
    const other = Buffer.from("# comment \xff caf\xe9\nNETWORKING=yes\n  GATEWAY=10.0.0.1  \n", "latin1");
    const file = etc("sysconfig/network");
    fs.writeFileSync(file, Buffer.concat([other, Buffer.from('HOSTNAME="localhost.localdomain" # from the template\nNOZEROCONF=yes\n')]));
    fs.chownSync(file, 7, 8);
    fs.chmodSync(file, 0o600);
    const r = await run(ctx(md()));
    expect(r.summary).toBe(`set to ${FQDN} (/etc/hostname, /etc/sysconfig/network)`);
    expect(fs.readFileSync(file)).toEqual(
      Buffer.concat([other, Buffer.from(`HOSTNAME="${FQDN}" # from the template\nNOZEROCONF=yes\n`)]),
    );
    const st = fs.statSync(file);
    expect([st.uid, st.gid, st.mode & 0o7777]).toEqual([7, 8, 0o600]);
  });

  it("adds the line when absent, after a last line without a newline", async () => {
    fs.writeFileSync(etc("sysconfig/network"), "NETWORKING=yes");
    await run(ctx(md()));
    expect(read(etc("sysconfig/network"))).toBe(`NETWORKING=yes\nHOSTNAME=${FQDN}\n`);
  });

  it("edits lines safely", () => {
    expect(withSysconfigHostname("", "h")).toBe("HOSTNAME=h\n");
    expect(withSysconfigHostname("HOSTNAME=old\n", "h")).toBe("HOSTNAME=h\n");
    expect(withSysconfigHostname("export HOSTNAME='old'\r\nX=1\r\n", "h")).toBe("export HOSTNAME='h'\r\nX=1\r\n");
    // anything but a comment after the value goes with it: never half a command left behind
    expect(withSysconfigHostname("HOSTNAME=$(cat /etc/x) # c\n", "h")).toBe("HOSTNAME=h\n");
    expect(withSysconfigHostname('HOSTNAME="unterminated\n', "h")).toBe("HOSTNAME=h\n");
    expect(withSysconfigHostname("# HOSTNAME=commented\n", "h")).toBe("# HOSTNAME=commented\nHOSTNAME=h\n");
    expect(withSysconfigHostname("HOSTNAME=a\nHOSTNAME=b\n", "h")).toBe("HOSTNAME=h\nHOSTNAME=h\n");
    const same = 'HOSTNAME="h"   # keep\n';
    expect(withSysconfigHostname(same, "h")).toBe(same);
    expect(withEtcHostname("", "h")).toBe("h\n");
    expect(withEtcHostname("old", "h")).toBe("h\n");
    expect(withEtcHostname("\n# c\n\nold\nextra\n", "h")).toBe("\n# c\n\nh\nextra\n");
  });
});

describe("hostname: symlinks are refused", () => {
  for (const kind of ["to a file outside", "dangling"] as const) {
    it(`refuses /etc/hostname as a symlink ${kind}, leaving the target and everything else untouched`, async () => {
      const outside = join(root, "outside");
      if (kind === "to a file outside") fs.writeFileSync(outside, "precious\n");
      fs.symlinkSync(outside, etc("hostname"));
      fs.writeFileSync(etc("sysconfig/network"), "HOSTNAME=old\n");
      const net = ident(etc("sysconfig/network"));
      await expect(run(ctx(md()))).rejects.toThrow(/hostname is a symlink; refusing/);
      expect(fs.lstatSync(etc("hostname")).isSymbolicLink()).toBe(true);
      expect(fs.readlinkSync(etc("hostname"))).toBe(outside);
      if (kind === "to a file outside") expect(read(outside)).toBe("precious\n");
      else expect(fs.existsSync(outside)).toBe(false);
      expect(ident(etc("sysconfig/network"))).toBe(net);
    });
  }

  it("refuses /etc/sysconfig/network as a symlink and changes nothing", async () => {
    const outside = join(root, "outside");
    fs.writeFileSync(outside, "HOSTNAME=old\n");
    fs.symlinkSync(outside, etc("sysconfig/network"));
    await expect(run(ctx(md()))).rejects.toThrow(/network is a symlink; refusing/);
    expect(read(outside)).toBe("HOSTNAME=old\n");
    expect(fs.existsSync(etc("hostname"))).toBe(false);
  });
});

describe("hostname: idempotence and dry run", () => {
  it("a second run changes nothing: same inode, mtime and ctime", async () => {
    fs.writeFileSync(etc("sysconfig/network"), "NETWORKING=yes\n");
    await run(ctx(md()));
    const before = [ident(etc("hostname")), ident(etc("sysconfig/network"))];
    const r2 = await run(ctx(md()));
    expect(r2.summary).toBe(`already ${FQDN}`);
    expect(r2.data).toMatchObject({ changed: [] });
    expect([ident(etc("hostname")), ident(etc("sysconfig/network"))]).toEqual(before);
  });

  it("dry run reports and changes nothing", async () => {
    fs.writeFileSync(etc("hostname"), "old\n");
    fs.writeFileSync(etc("sysconfig/network"), "HOSTNAME=old\n");
    const before = [ident(etc("hostname")), ident(etc("sysconfig/network"))];
    const r = await run(ctx(md(), { dryRun: true }));
    expect(r.summary).toBe(`would set ${FQDN} (/etc/hostname, /etc/sysconfig/network)`);
    expect([ident(etc("hostname")), ident(etc("sysconfig/network"))]).toEqual(before);
    expect(read(etc("hostname"))).toBe("old\n");
    expect(fs.readdirSync(join(root, "etc")).sort()).toEqual(["hostname", "sysconfig"]);
  });

  it("dry run creates nothing either", async () => {
    const r = await run(ctx(md(), { dryRun: true }));
    expect(r.summary).toBe(`would set ${FQDN} (/etc/hostname)`);
    expect(fs.existsSync(etc("hostname"))).toBe(false);
  });
});

// ---- the live kernel host name, only ever inside a private UTS namespace ----

const src = (f: string) => fileURLToPath(new URL(`../src/${f}`, import.meta.url));

/** Run a TypeScript snippet in `unshare` (args) and return its JSON output. */
function inNamespace(unshareArgs: string[], code: string, env: Record<string, string> = {}, wrap?: string): unknown {
  const dir = fs.mkdtempSync(join(tmpdir(), "imds-ns-"));
  try {
    const script = join(dir, "child.ts");
    fs.writeFileSync(script, code);
    const argv = wrap ? ["sh", "-c", wrap] : [process.execPath, script];
    fs.mkdirSync(join(dir, "mnt"));
    const r = spawnSync("unshare", [...unshareArgs, "--", ...argv], {
      env: { ...process.env, NODE: process.execPath, SCRIPT: script, NSDIR: join(dir, "mnt"), ...env },
      encoding: "utf8",
      timeout: 20_000,
    });
    if (r.status !== 0) throw new Error(`unshare child failed (${r.status} ${r.signal}): ${r.stderr}`);
    return JSON.parse(r.stdout);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe("hostname: live kernel name (in unshare --uts)", () => {
  it("setLiveHostname sets the namespace's name via /proc, once, and refuses bad names", () => {
    const host = osHostname();
    const out = inNamespace(
      ["--uts"],
      `
import { hostname } from "node:os";
import { setLiveHostname } from ${JSON.stringify(src("steps/hostname.ts"))};
const res: Record<string, unknown> = { before: hostname() };
res.first = setLiveHostname("imds-init-live-test");
res.after = hostname();
res.second = setLiveHostname("imds-init-live-test");
for (const bad of ["bad name", "a".repeat(65), "x".repeat(30) + "." + "y".repeat(40), "host.", ""]) {
  try { setLiveHostname(bad); res[bad] = "accepted"; } catch (e) { res[bad] = (e as Error).message; }
}
res.end = hostname();
console.log(JSON.stringify(res));
`,
    ) as Record<string, unknown>;
    expect(out.before).toBe(host);
    expect(out.first).toBe(true);
    expect(out.after).toBe("imds-init-live-test");
    expect(out.second).toBe(false);
    for (const bad of ["bad name", "a".repeat(65), "x".repeat(30) + "." + "y".repeat(40), "host.", ""])
      expect(out[bad]).toMatch(/^refusing to set the kernel host name/);
    expect(out.end).toBe("imds-init-live-test");
    expect(osHostname()).toBe(host);
  });

  it("the whole step with root / sets the kernel name too (UTS namespace, /etc under a private overlay)", () => {
    const host = osHostname();
    const etcBefore = fs.existsSync("/etc/hostname") ? ident("/etc/hostname") : null;
    const out = inNamespace(
      ["--uts", "--mount"],
      `
import * as fs from "node:fs";
import { hostname } from "node:os";
import { run } from ${JSON.stringify(src("steps/hostname.ts"))};
import { defaults } from ${JSON.stringify(src("config.ts"))};
import { Log } from ${JSON.stringify(src("log.ts"))};
const value = process.env.HOSTVALUE!;
const md = {
  endpoint: "fake", protocol: "v2", requests: 0,
  async value(p: string) { return p === "meta-data/local-hostname" ? value : null; },
  async list() { return null; }, async bytes() { return null; },
};
const ctx = (dryRun: boolean) => ({ root: "/", config: defaults(), log: new Log("error", () => {}), md, instanceId: "i-1",
  dryRun, force: false, now: new Date(), previous: undefined, stdout: () => {} });
const dry = await run(ctx(true));
const afterDry = hostname();
const first = await run(ctx(false));
const second = await run(ctx(false));
console.log(JSON.stringify({ dry: dry.summary, afterDry, first: first.summary, second: second.summary,
  kernel: hostname(), etc: fs.readFileSync("/etc/hostname", "utf8") }));
`,
      { HOSTVALUE: "imds-init-step-test.example.internal" },
      // a tmpfs for the overlay's upper layer, so the real /etc is only ever read
      'mount -t tmpfs tmpfs "$NSDIR" && mkdir "$NSDIR/u" "$NSDIR/w" && ' +
        'mount -t overlay overlay -o lowerdir=/etc,upperdir="$NSDIR/u",workdir="$NSDIR/w" /etc && exec "$NODE" "$SCRIPT"',
    ) as Record<string, string>;
    const name = "imds-init-step-test.example.internal";
    expect(out.dry).toMatch(new RegExp(`^would set ${name.replace(/\./g, "\\.")} \\(.*kernel\\)$`));
    expect(out.afterDry).toBe(host);
    expect(out.first).toMatch(new RegExp(`^set to ${name.replace(/\./g, "\\.")} \\(/etc/hostname.*kernel\\)$`));
    expect(out.second).toBe(`already ${name}`);
    expect(out.kernel).toBe(name);
    expect(out.etc).toBe(name + "\n");
    // the test machine is untouched
    expect(osHostname()).toBe(host);
    expect(fs.existsSync("/etc/hostname") ? ident("/etc/hostname") : null).toBe(etcBefore);
  });
});
