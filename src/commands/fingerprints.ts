// `imds-init fingerprints [--root DIR]`: the host key block of the
// fingerprints step, on demand (for an admin, or a unit that prints it late).
// No host keys is not an error: exit 0 with a note on stderr.
import type { Options } from "../cli.ts";
import type { Config } from "../config.ts";
import type { Log } from "../log.ts";
import { EXIT } from "../exit.ts";
import { printHostKeys } from "../steps/fingerprints.ts";

export function printFingerprints(opts: Options, config: Config, log: Log, stdout: (t: string) => void): number {
  try {
    printHostKeys(opts.root, config.fingerprints.prefix, log, stdout);
    return EXIT.ok;
  } catch (e) {
    log.error(`cannot read the host keys: ${(e as Error).message}`, { step: "fingerprints" });
    return EXIT.failed;
  }
}
