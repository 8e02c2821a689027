// Helpers for end-to-end tests: the built binary, run for real.
import { spawnSync, type SpawnSyncReturns } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const BINARY = fileURLToPath(new URL("../dist/imds-init", import.meta.url));

export function requireBinary(): void {
  if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run scripts/build.sh (npm test builds it first)`);
}

export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run the binary with a clean environment; never through a shell. */
export function runBinary(args: string[], opts: { env?: Record<string, string>; input?: string; timeoutMs?: number; binary?: string } = {}): Ran {
  const r: SpawnSyncReturns<string> = spawnSync(opts.binary ?? BINARY, args, {
    encoding: "utf8",
    env: opts.env ?? { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" },
    input: opts.input ?? "",
    timeout: opts.timeoutMs ?? 20_000,
  });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}
