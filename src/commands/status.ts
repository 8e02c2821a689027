// `imds-init status [--root DIR] [--json]`: what was done for this
// instance, and when, read from the state alone (no network, no changes),
// so it works at a rescue console and on an image mounted elsewhere.
import { STEP_NAMES, type Options, type StepName } from "../cli.ts";
import type { Config } from "../config.ts";
import { loadState, stateDir, stateFile, StateUnreadable, type State, type StepRecord } from "../state.ts";
import { runningHolder, type Holder } from "../lock.ts";
import { EXIT } from "../exit.ts";

const WIDTH = 16; // "template built" and two spaces

/** The state file is ours, but a terminal must never get raw control characters from it. */
function printable(v: unknown, max = 200): string {
  const s = String(v).replace(/[\x00-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
  return s.length > max ? s.slice(0, max - 3) + "..." : s;
}

function text(v: unknown): string | null {
  return typeof v === "string" ? v : null;
}

interface Dates {
  /** basesystem's record of the template's build date: ISO, null (no rpm basesystem) or undefined (not recorded). */
  template: string | null | undefined;
  instance: string | null | undefined;
}

function dates(state: State): Dates {
  const data = state.steps.basesystem?.data;
  if (!data) return { template: undefined, instance: undefined };
  return {
    template: "template_built" in data ? text(data.template_built) : undefined,
    instance: "instance_built" in data ? text(data.instance_built) : undefined,
  };
}

function older(state: State, rec: StepRecord): boolean {
  return state.instance_id !== undefined && rec.instance_id !== state.instance_id;
}

/** What status says of a run at work: no more than who and since when. */
function runningJson(h: Holder | null): { pid: number; since: string } | null {
  return h && { pid: h.pid, since: h.since };
}

function human(state: State, file: string, running: Holder | null): string {
  const lines: string[] = [];
  const row = (label: string, value: string) => lines.push(label.padEnd(WIDTH) + value);
  row("state", printable(file));
  // What follows may be about to change: a run is at work (at boot, or user-data still running).
  if (running) row("running", `imds-init pid ${running.pid}, since ${printable(running.since)}`);
  row("instance", state.instance_id ? `${printable(state.instance_id)} (first seen ${printable(state.first_seen ?? "unknown")})` : "unknown (the metadata service was never reached)");
  const d = dates(state);
  const base = state.steps.basesystem;
  const from = base && older(state, base) ? ` (older instance ${printable(base.instance_id)})` : "";
  row("template built", d.template ? printable(d.template) + from : d.template === null ? "unknown (no rpm basesystem here)" : "not recorded yet");
  row("instance built", d.instance ? printable(d.instance) + from : "not recorded yet");
  for (const name of STEP_NAMES) {
    const rec = state.steps[name];
    if (!rec) {
      row(name, "not run yet");
      continue;
    }
    let line = `${printable(rec.result).padEnd(8)}${printable(rec.at).padEnd(26)}${printable(rec.summary ?? "")}`;
    if (older(state, rec)) line += `  [older instance ${printable(rec.instance_id)}]`;
    row(name, line.trimEnd());
  }
  return lines.join("\n") + "\n";
}

function json(state: State, file: string, running: Holder | null): string {
  const d = dates(state);
  const steps: Partial<Record<StepName, StepRecord & { older_instance: boolean }>> = {};
  for (const [name, rec] of Object.entries(state.steps) as [StepName, StepRecord][]) {
    steps[name] = { ...rec, older_instance: older(state, rec) };
  }
  return (
    JSON.stringify(
      {
        ...state,
        state_file: file,
        has_run: true,
        running: runningJson(running),
        template_built: d.template ?? null,
        instance_built: d.instance ?? null,
        steps,
      },
      null,
      2,
    ) + "\n"
  );
}

export function status(
  opts: Options,
  _config: Config,
  stdout: (t: string) => void,
  stderr: (t: string) => void = (t) => void process.stderr.write(t),
): number {
  const file = stateFile(opts.root);
  let state: State;
  try {
    state = loadState(opts.root);
  } catch (e) {
    if (!(e instanceof StateUnreadable)) throw e;
    stderr(`imds-init: cannot read the state: ${e.message}\n`);
    return EXIT.failed;
  }
  const running = runningHolder(stateDir(opts.root));
  if (state.instance_id === undefined && Object.keys(state.steps).length === 0) {
    const now = running ? `; imds-init pid ${running.pid} is running since ${printable(running.since)}` : "";
    stdout(
      opts.json
        ? JSON.stringify({ state_file: file, has_run: false, running: runningJson(running) }) + "\n"
        : `imds-init has not run here (no state in ${printable(file)})${now}\n`,
    );
    return EXIT.ok;
  }
  stdout(opts.json ? json(state, file, running) : human(state, file, running));
  return EXIT.ok;
}
