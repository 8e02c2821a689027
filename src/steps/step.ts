// What every boot step gets and gives. Each step is a module under
// src/steps/ whose one entry point is `run(ctx): Promise<StepResult>`.
import type { Config } from "../config.ts";
import type { Log } from "../log.ts";
import type { Metadata } from "../imds/metadata.ts";
import type { StepRecord } from "../state.ts";

export interface StepContext {
  /** The target root ("/" on a booting machine). */
  root: string;
  config: Config;
  log: Log;
  /** The metadata service; null when it was unreachable (only steps that do not need it run then). */
  md: Metadata | null;
  /** This instance's id; null when the metadata service was unreachable. */
  instanceId: string | null;
  /** Change nothing; report what would change. */
  dryRun: boolean;
  force: boolean;
  /** The time of this run. */
  now: Date;
  /** This step's record from the last run, if any. */
  previous: StepRecord | undefined;
  /** Where console output (the fingerprint block) goes. */
  stdout: (text: string) => void;
  /**
   * user-data: record, just before its script runs, that it started, so a
   * crash from there on cannot make it run twice. Throws when that cannot
   * be recorded; the script must not run then.
   */
  markStarted?: () => void;
}

export interface StepResult {
  /** One short line for the console, e.g. "installed 2 keys for root". */
  summary: string;
  /** Step-specific facts kept in the state (exit status, dates...). */
  data?: Record<string, unknown>;
  /** A step that finished but must count as failed (user-data exiting non-zero). */
  failed?: boolean;
}

/** A step failure with a message meant for the console as it is. */
export class StepError extends Error {}

/**
 * An untrusted value made safe to show in a message: JSON-quoted, every
 * character outside printable ASCII escaped (so no terminal control or
 * bidi tricks reach the console), and cut after `max` characters.
 */
export function shown(value: string, max = 64): string {
  const cut = value.length > max;
  const q = JSON.stringify(cut ? value.slice(0, max) : value).replace(
    /[^\x20-\x7e]/g,
    (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"),
  );
  return cut ? `${q}... (${value.length} characters)` : q;
}
