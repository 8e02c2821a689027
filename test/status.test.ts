import { describe, expect, it, afterAll } from "vitest";
import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { status } from "../src/commands/status.ts";
import { parseArgs } from "../src/cli.ts";
import { defaults } from "../src/config.ts";
import { acquire } from "../src/lock.ts";

const roots: string[] = [];
afterAll(() => {
  for (const d of roots) rmSync(d, { recursive: true, force: true });
});

function root(state?: unknown | string): string {
  const dir = mkdtempSync(join(tmpdir(), "imds-status-"));
  roots.push(dir);
  if (state !== undefined) {
    mkdirSync(join(dir, "var/lib/imds-init"), { recursive: true, mode: 0o700 });
    writeFileSync(join(dir, "var/lib/imds-init/state.json"), typeof state === "string" ? state : JSON.stringify(state), { mode: 0o600 });
  }
  return dir;
}

function statusOf(dir: string, ...args: string[]): { code: number; out: string; err: string } {
  let out = "";
  let err = "";
  const code = status(parseArgs(["status", "--root", dir, ...args]), defaults(), (t) => (out += t), (t) => (err += t));
  return { code, out, err };
}

const NEW = "i-0aaaaaaaaaaaaaaaa";
const OLD = "i-0bbbbbbbbbbbbbbbb";
const state = {
  version: 1,
  instance_id: NEW,
  first_seen: "2026-11-20T08:00:00.000Z",
  steps: {
    hostname: { instance_id: NEW, result: "ok", at: "2026-11-20T08:00:01.000Z", duration_ms: 3, summary: "set hostname to web-1" },
    "ssh-keys": { instance_id: NEW, result: "failed", at: "2026-11-20T08:00:01.000Z", duration_ms: 2, summary: "user bob does not exist" },
    "user-data": { instance_id: OLD, result: "ok", at: "2026-10-01T10:00:00.000Z", duration_ms: 900, summary: "script exited 0", data: { exit_status: 0 } },
    basesystem: {
      instance_id: NEW,
      result: "ok",
      at: "2026-11-20T08:00:02.000Z",
      duration_ms: 400,
      summary: "re-stamped basesystem-11-13.el9.noarch",
      data: { template_built: "2026-01-15T12:00:00.000Z", instance_built: "2026-11-20T08:00:02.000Z", nevra: "basesystem-11-13.el9.noarch" },
    },
  },
};

describe("imds-init status", () => {
  it("prints compact aligned lines: instance, both dates, every step, older-instance records marked", () => {
    const dir = root(state);
    const { code, out, err } = statusOf(dir);
    expect(code).toBe(0);
    expect(err).toBe("");
    expect(out).toBe(
      [
        `state           ${dir}/var/lib/imds-init/state.json`,
        `instance        ${NEW} (first seen 2026-11-20T08:00:00.000Z)`,
        "template built  2026-01-15T12:00:00.000Z",
        "instance built  2026-11-20T08:00:02.000Z",
        "hostname        ok      2026-11-20T08:00:01.000Z  set hostname to web-1",
        "ssh-keys        failed  2026-11-20T08:00:01.000Z  user bob does not exist",
        `user-data       ok      2026-10-01T10:00:00.000Z  script exited 0  [older instance ${OLD}]`,
        "fingerprints    not run yet",
        "basesystem      ok      2026-11-20T08:00:02.000Z  re-stamped basesystem-11-13.el9.noarch",
        "",
      ].join("\n"),
    );
  });

  it("prints the state and the derived fields as JSON", () => {
    const dir = root(state);
    const { code, out } = statusOf(dir, "--json");
    expect(code).toBe(0);
    const j = JSON.parse(out);
    expect(j).toMatchObject({
      version: 1,
      has_run: true,
      state_file: `${dir}/var/lib/imds-init/state.json`,
      instance_id: NEW,
      first_seen: "2026-11-20T08:00:00.000Z",
      template_built: "2026-01-15T12:00:00.000Z",
      instance_built: "2026-11-20T08:00:02.000Z",
    });
    expect(j.steps.hostname).toEqual({ ...state.steps.hostname, older_instance: false });
    expect(j.steps["user-data"]).toEqual({ ...state.steps["user-data"], older_instance: true });
    expect(j.steps.basesystem.data).toEqual(state.steps.basesystem.data);
    expect(j.steps.fingerprints).toBeUndefined();
  });

  it("says when the template date is unknown (no rpm basesystem) and when nothing is recorded yet", () => {
    const noRpm = {
      ...state,
      steps: { basesystem: { instance_id: NEW, result: "ok", at: "2026-11-20T08:00:02.000Z", summary: "no rpm basesystem here", data: { template_built: null, instance_built: "2026-11-20T08:00:00.000Z" } } },
    };
    const a = statusOf(root(noRpm)).out;
    expect(a).toContain("template built  unknown (no rpm basesystem here)\n");
    expect(a).toContain("instance built  2026-11-20T08:00:00.000Z\n");
    const b = statusOf(root({ version: 1, instance_id: NEW, first_seen: "2026-11-20T08:00:00.000Z", steps: {} })).out;
    expect(b).toContain("template built  not recorded yet\ninstance built  not recorded yet\n");
    expect(JSON.parse(statusOf(root(noRpm), "--json").out)).toMatchObject({ template_built: null, instance_built: "2026-11-20T08:00:00.000Z" });
  });

  it("marks dates recorded for an older instance", () => {
    const s = { ...state, steps: { basesystem: { ...state.steps.basesystem, instance_id: OLD } } };
    const { out } = statusOf(root(s));
    expect(out).toContain(`template built  2026-01-15T12:00:00.000Z (older instance ${OLD})\n`);
    expect(out).toContain(`basesystem      ok      2026-11-20T08:00:02.000Z  re-stamped basesystem-11-13.el9.noarch  [older instance ${OLD}]\n`);
  });

  it("never prints control characters from the state", () => {
    const s = { ...state, steps: { hostname: { ...state.steps.hostname, summary: "bad \x1b[2Jname\n" } } };
    const { out } = statusOf(root(s));
    expect(out).toContain("bad \\x1b[2Jname\\x0a\n");
    expect(out).not.toContain("\x1b");
  });

  it("says imds-init has not run here when there is no state", () => {
    const dir = root();
    const human = statusOf(dir);
    expect(human).toEqual({ code: 0, out: `imds-init has not run here (no state in ${dir}/var/lib/imds-init/state.json)\n`, err: "" });
    const json = statusOf(dir, "--json");
    expect(json.code).toBe(0);
    expect(JSON.parse(json.out)).toEqual({ state_file: `${dir}/var/lib/imds-init/state.json`, has_run: false, running: null });
  });

  it("says when a run is at work (a live holder of the run lock), and ignores a stale lock", async () => {
    const dir = root(state);
    const lockDir = join(dir, "var/lib/imds-init");
    const got = await acquire(lockDir, 0, () => {});
    if (got.kind !== "held") throw new Error(JSON.stringify(got));
    const since = JSON.parse(statusOf(dir, "--json").out).running.since as string;
    expect(since).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(JSON.parse(statusOf(dir, "--json").out).running).toEqual({ pid: process.pid, since });
    expect(statusOf(dir).out.split("\n").slice(0, 2)).toEqual([`state           ${dir}/var/lib/imds-init/state.json`, `running         imds-init pid ${process.pid}, since ${since}`]);
    const fresh = root();
    mkdirSync(join(fresh, "var/lib/imds-init"), { recursive: true });
    const got2 = await acquire(join(fresh, "var/lib/imds-init"), 0, () => {});
    expect(statusOf(fresh).out).toBe(`imds-init has not run here (no state in ${fresh}/var/lib/imds-init/state.json); imds-init pid ${process.pid} is running since ${(JSON.parse(statusOf(fresh, "--json").out).running as { since: string }).since}\n`);
    if (got2.kind === "held") got2.release();
    got.release();
    // A lock whose process is gone says nothing.
    writeFileSync(join(lockDir, "lock"), `imds-init lock: pid ${process.pid} start 1 boot x since 2026-01-01T00:00:00.000Z\n`);
    expect(statusOf(dir).out).not.toContain("running");
    expect(JSON.parse(statusOf(dir, "--json").out).running).toBeNull();
  });

  it("fails with a clear message when the state cannot be read", () => {
    const bad = root("{not json");
    expect(statusOf(bad)).toEqual({ code: 1, out: "", err: `imds-init: cannot read the state: ${bad}/var/lib/imds-init/state.json: not valid JSON\n` });
    const wrong = root({ version: 7, steps: {} });
    const r = statusOf(wrong, "--json");
    expect(r.code).toBe(1);
    expect(r.err).toContain("not an imds-init state file");
  });
});
