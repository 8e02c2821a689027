// The run lock: one imds-init run at a time on a root.
import { describe, it, expect, beforeEach, afterEach } from "vitest";
import * as fs from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { acquire, type Holder } from "../src/lock.ts";

let dir: string;
const lock = (): string => join(dir, "lock");
const bootId = fs.readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
const myStart = fs.readFileSync("/proc/self/stat", "utf8").split(") ")[1]!.split(" ")[19]!;

beforeEach(() => {
  dir = fs.mkdtempSync(join(tmpdir(), "imds-lock-"));
});
afterEach(() => {
  fs.chmodSync(dir, 0o700);
  fs.rmSync(dir, { recursive: true, force: true });
});

function held(a: Awaited<ReturnType<typeof acquire>>): () => void {
  if (a.kind !== "held") throw new Error(`expected the lock, got ${JSON.stringify(a)}`);
  return a.release;
}

describe("run lock", () => {
  it("is a 0600 file naming this process, removed on release; no temp file stays", async () => {
    const release = held(await acquire(dir, 0, () => {}));
    expect(fs.statSync(lock()).mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(lock(), "utf8")).toMatch(new RegExp(`^imds-init lock: pid ${process.pid} start ${myStart} boot ${bootId} since \\d{4}-\\S+Z\\n$`));
    expect(fs.readdirSync(dir)).toEqual(["lock"]);
    release();
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it("a live holder: waits, says once whom for, then gives up naming it", async () => {
    const release = held(await acquire(dir, 0, () => {}));
    const told: Holder[] = [];
    const t0 = performance.now();
    const r = await acquire(dir, 400, (h) => told.push(h));
    expect(performance.now() - t0).toBeGreaterThanOrEqual(380);
    expect(r).toMatchObject({ kind: "busy", holder: { pid: process.pid, start: myStart, boot: bootId } });
    expect(told).toHaveLength(1);
    expect(fs.readdirSync(dir)).toEqual(["lock"]); // its own temp file is gone
    release();
  });

  it("gets it as soon as the holder releases it", async () => {
    const release = held(await acquire(dir, 0, () => {}));
    setTimeout(release, 300);
    let told = 0;
    const again = held(await acquire(dir, 10_000, () => told++));
    expect(told).toBe(1);
    again();
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it.each([
    ["a dead process", () => `imds-init lock: pid ${spawnSync("true").pid} start 1 boot ${bootId} since x\n`],
    ["a reused pid (another start time)", () => `imds-init lock: pid ${process.pid} start 1 boot ${bootId} since x\n`],
    ["another boot", () => `imds-init lock: pid ${process.pid} start ${myStart} boot 00000000-0000-0000-0000-000000000000 since x\n`],
    ["garbage", () => "half a li"],
    ["an empty file", () => ""],
  ])("takes over a lock held by %s", async (_, content) => {
    fs.writeFileSync(lock(), content());
    let told = 0;
    const release = held(await acquire(dir, 0, () => told++));
    expect(told).toBe(0);
    expect(fs.readFileSync(lock(), "utf8")).toContain(`pid ${process.pid} start ${myStart} `);
    release();
  });

  it("removes temp files of dead processes, keeps those of live ones", async () => {
    const dead = spawnSync("true").pid!;
    fs.writeFileSync(join(dir, `.lock.${dead}.0123abcd`), "x");
    fs.writeFileSync(join(dir, `.lock.${process.pid}.89abcdef`), "x");
    fs.writeFileSync(join(dir, ".lock.notapid.0123abcd"), "x");
    const release = held(await acquire(dir, 0, () => {}));
    expect(fs.readdirSync(dir).sort()).toEqual([`.lock.${process.pid}.89abcdef`, ".lock.notapid.0123abcd", "lock"]);
    release();
  });

  it("release leaves a lock that another run took over", async () => {
    const release = held(await acquire(dir, 0, () => {}));
    fs.unlinkSync(lock());
    fs.writeFileSync(lock(), "someone else's\n");
    release();
    expect(fs.readFileSync(lock(), "utf8")).toBe("someone else's\n");
  });

  it("refuses a symlink as the lock and leaves its target alone", async () => {
    const target = join(dir, "precious");
    fs.writeFileSync(target, "keep\n");
    fs.symlinkSync(target, lock());
    const r = await acquire(dir, 0, () => {});
    expect(r).toEqual({ kind: "error", error: `${lock()} is not a regular file; refusing to use it` });
    expect(fs.readFileSync(target, "utf8")).toBe("keep\n");
    expect(fs.readlinkSync(lock())).toBe(target);
    expect(fs.readdirSync(dir).sort()).toEqual(["lock", "precious"]);
  });

  it("a directory it cannot write in: an error, not an exception", async () => {
    const r = await acquire(join(dir, "missing"), 0, () => {});
    expect(r.kind).toBe("error");
    expect((r as { error: string }).error).toMatch(/^cannot create .*missing\/\.lock\.\d+\.[0-9a-f]{8}: ENOENT/);
  });
});
