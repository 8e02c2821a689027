// The command line: imds-init [COMMAND] [OPTIONS]. Parsing only; nothing
// here touches the system.
import { resolve } from "node:path";
import { LOG_LEVELS, checkMetadataUrl, type LogLevel } from "./config.ts";

export const STEP_NAMES = ["hostname", "ssh-keys", "user-data", "fingerprints", "basesystem"] as const;
export type StepName = (typeof STEP_NAMES)[number];

export const COMMANDS = ["run", "fingerprints", "status", "metadata"] as const;
export type Command = (typeof COMMANDS)[number] | "help" | "version";

export interface Options {
  command: Command;
  root: string;
  config?: string;
  metadataUrls: string[];
  only: StepName[];
  skip: StepName[];
  force: boolean;
  dryRun: boolean;
  logLevel?: LogLevel;
  json: boolean;
  path?: string;
}

/** A usage error: exit code 2, one line, pointing at --help. */
export class UsageError extends Error {}

// Which options each command takes; anything else is a usage error, so an
// admin never wonders whether --dry-run was silently ignored.
const allowed: Record<(typeof COMMANDS)[number], string[]> = {
  run: ["--root", "--config", "--metadata-url", "--only", "--skip", "--force", "--dry-run", "--log-level"],
  fingerprints: ["--root", "--config", "--log-level"],
  status: ["--root", "--config", "--json", "--log-level"],
  metadata: ["--root", "--config", "--metadata-url", "--log-level"],
};
const withValue = new Set(["--root", "--config", "--metadata-url", "--only", "--skip", "--log-level"]);

function steps(value: string, option: string): StepName[] {
  const out: StepName[] = [];
  for (const name of value.split(",")) {
    if (!(STEP_NAMES as readonly string[]).includes(name))
      throw new UsageError(`unknown step "${name}" in ${option} (steps: ${STEP_NAMES.join(", ")})`);
    out.push(name as StepName);
  }
  return out;
}

export function parseArgs(argv: string[]): Options {
  const o: Options = { command: "run", root: "/", metadataUrls: [], only: [], skip: [], force: false, dryRun: false, json: false };
  const seen: string[] = [];
  const positional: string[] = [];
  let commandGiven = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (arg === "-h" || arg === "--help") return { ...o, command: "help" };
    if (arg === "-V" || arg === "--version") return { ...o, command: "version" };
    if (arg.startsWith("-")) {
      const eq = arg.indexOf("=");
      const name = eq > 0 ? arg.slice(0, eq) : arg;
      let value: string | undefined;
      if (withValue.has(name)) {
        value = eq > 0 ? arg.slice(eq + 1) : argv[++i];
        if (value === undefined || value === "") throw new UsageError(`option ${name} needs a value`);
      } else if (eq > 0 && ["--force", "--dry-run", "--json"].includes(name)) {
        throw new UsageError(`option ${name} takes no value`);
      }
      seen.push(name);
      switch (name) {
        case "--root":
          o.root = resolve(value!);
          break;
        case "--config":
          o.config = resolve(value!);
          break;
        case "--metadata-url": {
          const bad = checkMetadataUrl(value);
          if (bad) throw new UsageError(`--metadata-url ${value}: expected ${bad}`);
          o.metadataUrls.push(value!.replace(/\/$/, ""));
          break;
        }
        case "--only":
          o.only.push(...steps(value!, name));
          break;
        case "--skip":
          o.skip.push(...steps(value!, name));
          break;
        case "--force":
          o.force = true;
          break;
        case "--dry-run":
          o.dryRun = true;
          break;
        case "--json":
          o.json = true;
          break;
        case "--log-level":
          if (!(LOG_LEVELS as readonly string[]).includes(value!))
            throw new UsageError(`unknown log level "${value}" (levels: ${LOG_LEVELS.join(", ")})`);
          o.logLevel = value as LogLevel;
          break;
        default:
          throw new UsageError(`unknown option ${name}`);
      }
      continue;
    }
    if (!commandGiven && positional.length === 0) {
      if (!(COMMANDS as readonly string[]).includes(arg))
        throw new UsageError(`unknown command "${arg}" (commands: ${COMMANDS.join(", ")})`);
      o.command = arg as Command;
      commandGiven = true;
      continue;
    }
    positional.push(arg);
  }
  const cmd = o.command as (typeof COMMANDS)[number];
  for (const name of seen) {
    if (!allowed[cmd].includes(name)) throw new UsageError(`option ${name} does not apply to "${cmd}"`);
  }
  if (cmd === "metadata") {
    if (positional.length > 1) throw new UsageError(`metadata takes one PATH, got ${positional.length}`);
    if (positional[0] !== undefined) o.path = positional[0];
  } else if (positional.length > 0) {
    throw new UsageError(`unexpected argument "${positional[0]}"`);
  }
  if (o.only.length > 0 && o.skip.length > 0) throw new UsageError("--only and --skip cannot be used together");
  return o;
}
