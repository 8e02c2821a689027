// What imds-init remembers between boots, in ROOT/var/lib/imds-init/state.json
// (directory 0700, file 0600, written atomically): the instance-id it last
// saw and, per step, the instance-id it last ran for, when, and the result.
import { join } from "node:path";
import { paths, under } from "./os.ts";
import { ensureDir, readFileSafe, writeFileAtomic } from "./files.ts";
import type { StepName } from "./cli.ts";

export interface StepRecord {
  instance_id: string;
  /** "started" is written just before user-data's script runs, so a crash cannot make it run twice. */
  result: "ok" | "failed" | "started";
  at: string;
  /** user-data: its script was started (exec'd). Set, it never runs again for this instance. */
  executed?: boolean;
  duration_ms?: number;
  summary?: string;
  data?: Record<string, unknown>;
}

export interface State {
  version: 1;
  instance_id?: string;
  /** When this instance-id was first seen: the instance's first boot. */
  first_seen?: string;
  steps: Partial<Record<StepName, StepRecord>>;
}

export function stateDir(root: string): string {
  return under(root, paths.stateDir);
}

export function stateFile(root: string): string {
  return join(stateDir(root), "state.json");
}

/** The state could not be read; steps that must never repeat refuse to run. */
export class StateUnreadable extends Error {}

export function emptyState(): State {
  return { version: 1, steps: {} };
}

export function loadState(root: string): State {
  const file = stateFile(root);
  let buf: Buffer | null;
  try {
    buf = readFileSafe(file, 1 << 20);
  } catch (e) {
    throw new StateUnreadable(`${file}: ${(e as Error).message}`);
  }
  if (buf === null) return emptyState();
  let parsed: unknown;
  try {
    parsed = JSON.parse(buf.toString("utf8"));
  } catch {
    throw new StateUnreadable(`${file}: not valid JSON`);
  }
  const s = parsed as State;
  if (typeof s !== "object" || s === null || s.version !== 1 || typeof s.steps !== "object" || s.steps === null)
    throw new StateUnreadable(`${file}: not an imds-init state file (version 1)`);
  return s;
}

export function saveState(root: string, state: State): void {
  ensureDir(stateDir(root), { mode: 0o700 });
  writeFileAtomic(stateFile(root), JSON.stringify(state, null, 2) + "\n", { mode: 0o600 });
}
