import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { mkdtempSync, writeFileSync, symlinkSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRequire } from "node:module";
import { parseConfig, loadConfig, defaults, ConfigError, FETCH_BAD_PORTS } from "../src/config.ts";

const F = "/etc/imds-init.yaml";
const bad = (text: string, msg: RegExp) => {
  expect(() => parseConfig(text, F)).toThrow(ConfigError);
  expect(() => parseConfig(text, F)).toThrow(msg);
};

describe("parseConfig", () => {
  it("gives every default for an empty file or empty sections", () => {
    expect(parseConfig("", F)).toEqual(defaults());
    expect(parseConfig("# nothing\n", F)).toEqual(defaults());
    expect(parseConfig("hostname:\nlog:\n", F)).toEqual(defaults());
  });

  it("documents the defaults the issue asks for", () => {
    const d = defaults();
    expect(d.metadata).toMatchObject({ urls: ["http://169.254.169.254", "http://[fd00:ec2::254]"], imdsv2: "auto", timeout_ms: 1000, deadline_s: 60 });
    expect(d.hostname).toMatchObject({ enabled: true, source: "local-hostname" });
    expect(d.ssh_keys).toEqual({ enabled: true, users: ["root"] });
    expect(d.fingerprints).toEqual({ enabled: true, prefix: "ec2: " });
    expect(d.basesystem).toEqual({ enabled: true, package: "/var/lib/imds-init/basesystem.rpm" });
    expect(d.log).toEqual({ level: "info" });
  });

  it("applies every key it is given, over the defaults", () => {
    const c = parseConfig(
      `metadata:
  urls: [http://127.0.0.1:8080]
  imdsv2: required
  timeout_ms: 250
  deadline_s: 5
  token_ttl_s: 60
  max_bytes: 65536
hostname: { enabled: false, source: public-hostname, short: true }
ssh_keys: { users: [root, ec2-user] }
user_data: { enabled: false, timeout_s: 0 }
fingerprints: { prefix: "" }
basesystem: { package: /srv/basesystem.rpm }
log: { level: debug }
`,
      F,
    );
    expect(c.metadata).toEqual({ urls: ["http://127.0.0.1:8080"], imdsv2: "required", timeout_ms: 250, deadline_s: 5, token_ttl_s: 60, max_bytes: 65536 });
    expect(c.hostname).toEqual({ enabled: false, source: "public-hostname", short: true });
    expect(c.ssh_keys).toEqual({ enabled: true, users: ["root", "ec2-user"] });
    expect(c.user_data).toEqual({ enabled: false, timeout_s: 0 });
    expect(c.fingerprints.prefix).toBe("");
    expect(c.basesystem.package).toBe("/srv/basesystem.rpm");
    expect(c.log.level).toBe("debug");
  });

  it("names file, line and key for an unknown key", () => bad("hostname:\n  enabled: true\n  sourec: hostname\n", /^\/etc\/imds-init.yaml:3: unknown key "hostname.sourec"/));
  it("names file, line and section for an unknown section", () => bad("log: {}\nhostnam:\n  enabled: true\n", /^\/etc\/imds-init.yaml:2: unknown section "hostnam"/));
  it("names the line of a wrong type", () => bad("metadata:\n  urls: [http://169.254.169.254]\n  timeout_ms: fast\n", /:3: metadata.timeout_ms: expected an integer from 50 to 60000, got "fast"/));
  it("refuses a boolean spelled as a string", () => bad('hostname:\n  enabled: "yes"\n', /:2: hostname.enabled: expected true or false, got "yes"/));
  it("refuses a value out of range", () => bad("metadata:\n  deadline_s: -1\n", /:2: metadata.deadline_s: expected an integer from 0 to 3600/));
  it("refuses a value not in the set", () => {
    bad("metadata:\n  imdsv2: maybe\n", /metadata.imdsv2: expected one of auto, required, off/);
    bad("hostname:\n  source: fqdn\n", /hostname.source: expected one of local-hostname, hostname, public-hostname/);
    bad("log:\n  level: loud\n", /log.level: expected one of fatal/);
  });
  it("refuses bad metadata URLs", () => {
    bad("metadata:\n  urls: []\n", /metadata.urls: expected a list of at least 1/);
    bad("metadata:\n  urls: http://169.254.169.254\n", /metadata.urls: expected a list/);
    bad("metadata:\n  urls: [ftp://169.254.169.254]\n", /metadata.urls: expected a list of an http:\/\/ URL/);
    bad("metadata:\n  urls: [http://169.254.169.254/latest/]\n", /metadata.urls/);
    bad("metadata:\n  urls: [http://169.254.169.254:6000]\n", /metadata.urls: .*not 6000/);
  });
  it("refuses bad user names", () => bad("ssh_keys:\n  users: [root, 'bad user']\n", /ssh_keys.users: expected a list of a user name/));
  it("refuses a relative or escaping package path", () => {
    bad("basesystem:\n  package: basesystem.rpm\n", /basesystem.package: expected an absolute path/);
    bad("basesystem:\n  package: /var/../etc/shadow\n", /basesystem.package/);
  });
  it("refuses control characters in the prefix", () => bad('fingerprints:\n  prefix: "a\\u0007"\n', /fingerprints.prefix: expected a string/));
  it("refuses a mapping where a value is expected", () => bad("hostname:\n  source:\n    a: b\n", /:3: hostname.source: expected one of/));
  it("refuses a section that is not a mapping", () => bad("hostname: true\n", /:1: hostname: expected a mapping/));
  it("refuses a top level that is not a mapping", () => bad("- a\n- b\n", /:1: expected a mapping of sections/));
  it("refuses invalid YAML with its line", () => bad("log:\n  level: [info\n", /^\/etc\/imds-init.yaml:\d+: not valid YAML/));
  it("refuses duplicate keys", () => bad("log:\n  level: info\n  level: debug\n", /not valid YAML/));
});

describe("loadConfig", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "imds-config-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("treats a missing default file as all defaults", () => {
    expect(loadConfig(join(dir, "absent.yaml"), false)).toEqual(defaults());
  });
  it("refuses a missing file named on the command line", () => {
    expect(() => loadConfig(join(dir, "absent.yaml"), true)).toThrow(/absent.yaml: no such file/);
  });
  it("reads a real file", () => {
    writeFileSync(join(dir, "c.yaml"), "log:\n  level: warn\n");
    expect(loadConfig(join(dir, "c.yaml"), true).log.level).toBe("warn");
  });
  it("does not follow a symlink", () => {
    writeFileSync(join(dir, "target.yaml"), "log:\n  level: warn\n");
    symlinkSync(join(dir, "target.yaml"), join(dir, "link.yaml"));
    expect(() => loadConfig(join(dir, "link.yaml"), false)).toThrow(/symlink/);
  });
  it("refuses a directory", () => {
    mkdirSync(join(dir, "d.yaml"));
    expect(() => loadConfig(join(dir, "d.yaml"), false)).toThrow(ConfigError);
  });
});

describe("metadata URL ports", () => {
  it("refuses exactly the ports fetch() refuses, so a bad port fails at once and not at the deadline", async () => {
    // undici's own list, the one fetch() checks: ours must not drift from it.
    const undiciList = createRequire(import.meta.url)("undici/lib/web/fetch/constants.js").badPorts as string[];
    expect([...FETCH_BAD_PORTS].map(String)).toEqual(undiciList);
    await expect(fetch("http://127.0.0.1:6000/")).rejects.toThrow(/fetch failed/);
    const err = await fetch("http://127.0.0.1:10080/").catch((e: Error) => e.cause as Error);
    expect(String(err)).toMatch(/bad port/);
  });
});
