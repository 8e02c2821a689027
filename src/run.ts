// `imds-init run`: the boot steps in order, each once per instance or once
// per boot, each failure logged and counted without stopping the others.
import type { Config } from "./config.ts";
import type { Log } from "./log.ts";
import type { Options, StepName } from "./cli.ts";
import { connect } from "./imds/client.ts";
import { MetadataUnreachable, type Metadata } from "./imds/metadata.ts";
import { loadState, saveState, emptyState, stateDir, stateFile, StateUnreadable, type State, type StepRecord } from "./state.ts";
import type { StepContext, StepResult } from "./steps/step.ts";
import { run as hostname } from "./steps/hostname.ts";
import { run as sshKeys } from "./steps/ssh-keys.ts";
import { run as userData, removeStaleScripts } from "./steps/user-data.ts";
import { run as fingerprints } from "./steps/fingerprints.ts";
import { run as basesystem } from "./steps/basesystem.ts";
import { validInstanceId } from "./imds/values.ts";
import { EXIT } from "./exit.ts";
import { ensureDir } from "./files.ts";
import { acquire, type Acquired } from "./lock.ts";
import { paths } from "./os.ts";
import { join } from "node:path";

/**
 * How long a run waits for another run on the same root to finish (an rc
 * restart while the last start's user-data still runs) before giving up.
 */
export const LOCK_WAIT_MS = 60_000;

interface StepSpec {
  name: StepName;
  /** Once per instance (true) or every boot (false). */
  perInstance: boolean;
  needsMetadata: boolean;
  run: (ctx: StepContext) => Promise<StepResult>;
}

const steps: StepSpec[] = [
  { name: "hostname", perInstance: true, needsMetadata: true, run: hostname },
  { name: "ssh-keys", perInstance: true, needsMetadata: true, run: sshKeys },
  { name: "user-data", perInstance: true, needsMetadata: true, run: userData },
  { name: "fingerprints", perInstance: false, needsMetadata: false, run: fingerprints },
  { name: "basesystem", perInstance: true, needsMetadata: true, run: basesystem },
];

const configKey: Record<StepName, "hostname" | "ssh_keys" | "user_data" | "fingerprints" | "basesystem"> = {
  hostname: "hostname",
  "ssh-keys": "ssh_keys",
  "user-data": "user_data",
  fingerprints: "fingerprints",
  basesystem: "basesystem",
};

function selected(opts: Options, config: Config): StepSpec[] {
  return steps.filter((s) => {
    if (opts.only.length > 0) return opts.only.includes(s.name); // --only overrides enabled: false
    if (opts.skip.includes(s.name)) return false;
    return config[configKey[s.name]].enabled;
  });
}

/** Why a once-per-instance step is not due, or null when it is. */
function notDue(spec: StepSpec, rec: StepRecord | undefined, instanceId: string, force: boolean): string | null {
  if (!spec.perInstance || force || !rec || rec.instance_id !== instanceId) return null;
  if (rec.result === "ok") return `already done for ${instanceId} at ${rec.at}`;
  // user-data is marked started just before its script runs: whatever
  // happened next, it never runs twice. A failure before that is retried.
  if (spec.name === "user-data" && (rec.result === "started" || rec.executed))
    return `already ran for ${instanceId} at ${rec.at} (${rec.result}); --force runs it again`;
  return null;
}

export async function runSteps(opts: Options, config: Config, log: Log, stdout: (t: string) => void): Promise<number> {
  // A dry run changes nothing, so it neither needs nor blocks the lock.
  if (opts.dryRun) return runUnlocked(opts, config, log, stdout);
  const dir = stateDir(opts.root);
  let got: Acquired;
  try {
    ensureDir(dir, { mode: 0o700 });
    got = await acquire(dir, LOCK_WAIT_MS, (h) => log.info(`waiting for the imds-init run with pid ${h.pid} (since ${h.since}) to finish`));
  } catch (e) {
    got = { kind: "error", error: (e as Error).message };
  }
  if (got.kind === "busy") {
    const h = got.holder;
    log.error(`not run: the imds-init run with pid ${h.pid} (since ${h.since}) still holds ${join(dir, paths.lockName)} after ${LOCK_WAIT_MS / 1000} s`);
    return EXIT.failed;
  }
  // Without it (a read-only or full disk) the run goes on: it will report
  // what it cannot write, and printing the fingerprints still matters.
  if (got.kind === "error") log.warn(`running without the run lock: ${got.error}`);
  try {
    return await runUnlocked(opts, config, log, stdout);
  } finally {
    if (got.kind === "held") got.release();
  }
}

async function runUnlocked(opts: Options, config: Config, log: Log, stdout: (t: string) => void): Promise<number> {
  const root = opts.root;
  const now = new Date();
  const todo = selected(opts, config);
  if (todo.length === 0) {
    log.info("no steps selected");
    return EXIT.ok;
  }

  let state: State;
  let stateOk = true;
  try {
    state = loadState(root);
  } catch (e) {
    if (!(e instanceof StateUnreadable)) throw e;
    log.error(`cannot read state: ${e.message}; user-data will not run without --force`);
    state = emptyState();
    stateOk = false;
  }

  // A copy of user-data (often secrets) left by a run killed mid-script.
  if (!opts.dryRun) removeStaleScripts(stateDir(root));

  let failed = false;
  let unreachable = false;
  let md: Metadata | null = null;
  let instanceId: string | null = null;

  if (todo.some((s) => s.needsMetadata)) {
    try {
      const m = await connect(config.metadata, log);
      md = m;
      const id = await m.value("meta-data/instance-id");
      if (id === null) throw new Error("meta-data/instance-id: not found (404)");
      if (!validInstanceId(id)) throw new Error(`meta-data/instance-id: not a valid instance id: ${JSON.stringify(id)}`);
      instanceId = id;
      log.setInstanceId(id);
      log.info(`instance ${id} via ${m.endpoint} (${m.protocol === "v2" ? "IMDSv2 token" : "IMDSv1"})`);
    } catch (e) {
      if (e instanceof MetadataUnreachable) unreachable = true;
      else failed = true;
      log.error(e instanceof Error ? e.message : String(e));
      md = null;
    }
  }

  const persist = (): void => {
    if (opts.dryRun) return;
    try {
      saveState(root, state);
    } catch (e) {
      failed = true;
      log.error(`cannot save state to ${stateFile(root)}: ${(e as Error).message}`);
    }
  };

  if (instanceId && state.instance_id !== instanceId) {
    if (state.instance_id) log.info(`new instance ${instanceId} (was ${state.instance_id}): once-per-instance steps are due`);
    state.instance_id = instanceId;
    state.first_seen = now.toISOString();
    persist();
  }

  for (const spec of todo) {
    const fields = { step: spec.name };
    if (spec.needsMetadata && (!md || !instanceId)) {
      log.error(unreachable ? "not run: metadata service unreachable" : "not run: no instance-id", fields);
      failed = true;
      continue;
    }
    const rec = state.steps[spec.name];
    const why = instanceId ? notDue(spec, rec, instanceId, opts.force) : null;
    if (why) {
      log.info(why, fields);
      continue;
    }
    if (spec.name === "user-data" && !opts.dryRun && !stateOk && !opts.force) {
      log.error("not run: the state is unreadable, so it cannot be known whether user-data already ran; --force runs it", fields);
      failed = true;
      continue;
    }
    let executed = false;
    const markStarted = (): void => {
      state.steps[spec.name] = { instance_id: instanceId!, result: "started", at: now.toISOString(), executed: true };
      try {
        saveState(root, state);
      } catch (e) {
        // Not recorded, not run: a later save of the state (next step) must
        // not record a start that never happened, or it would never run.
        if (rec) state.steps[spec.name] = rec;
        else delete state.steps[spec.name];
        throw new Error(`cannot record in ${stateFile(root)} that user-data started: ${(e as Error).message}`);
      }
      executed = true;
    };
    const started = performance.now();
    const ctx: StepContext = {
      root,
      config,
      log,
      md,
      instanceId,
      dryRun: opts.dryRun,
      force: opts.force,
      now,
      previous: rec,
      stdout,
      markStarted: spec.name === "user-data" && !opts.dryRun ? markStarted : undefined,
    };
    let record: StepRecord;
    try {
      const r = await spec.run(ctx);
      const ms = Math.round(performance.now() - started);
      record = { instance_id: instanceId ?? rec?.instance_id ?? "", result: r.failed ? "failed" : "ok", at: now.toISOString(), duration_ms: ms, summary: r.summary };
      if (r.data) record.data = r.data;
      if (r.failed) failed = true;
      (r.failed ? log.error : log.info).call(log, r.summary, { ...fields, result: record.result, duration_ms: ms });
    } catch (e) {
      const ms = Math.round(performance.now() - started);
      const msg = e instanceof Error ? e.message : String(e);
      record = { instance_id: instanceId ?? rec?.instance_id ?? "", result: "failed", at: now.toISOString(), duration_ms: ms, summary: msg };
      failed = true;
      log.error(`failed: ${msg}`, { ...fields, result: "failed", duration_ms: ms });
    }
    if (executed) record.executed = true;
    if (spec.perInstance || instanceId) {
      state.steps[spec.name] = record;
      persist();
    }
  }

  if (md) log.debug(`${md.requests} metadata requests`, { requests: md.requests });
  if (unreachable) return EXIT.unreachable;
  return failed ? EXIT.failed : EXIT.ok;
}
