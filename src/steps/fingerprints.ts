// The fingerprints step (every boot, no metadata needed): the SSH host keys'
// fingerprints and the keys themselves on stdout, in the block cloud-init
// writes to the console, so tools that scrape get-console-output for it
// keep working:
//
//   PREFIX#############################################################
//   PREFIX-----BEGIN SSH HOST KEY FINGERPRINTS-----
//   PREFIXBITS SHA256:... COMMENT (TYPE)          one per key, as ssh-keygen -l
//   PREFIX-----END SSH HOST KEY FINGERPRINTS-----
//   PREFIX#############################################################
//   -----BEGIN SSH HOST KEY KEYS-----
//   TYPE BASE64 COMMENT                           each key file's line, as cat shows it
//   -----END SSH HOST KEY KEYS-----
//
// Decisions:
// - Files are ROOT/etc/ssh/ssh_host_*key.pub in byte order of their names
//   (the shell glob's order in the C locale). A symlinked /etc/ssh is
//   followed as if ROOT were "/" (src/ssh/home.ts).
// - The fingerprint lines are computed here (src/ssh/keys.ts), not by running
//   ssh-keygen: no process to spawn at every boot, and no dependency on it.
// - A symlink, a non-regular file or a file that is not exactly one valid
//   public key line is skipped with a warning naming it; the rest are
//   printed. Host keys are made by ssh-keygen -A as plain files, so a
//   symlink there is unusual, and reading through it could print whatever
//   it points to on the console.
// - cloud-init's helper starts with an empty line; the block here starts at
//   the banner, as the issue specifies, and parsers key on the markers.
// - No host keys: a warning on stderr, nothing on stdout, not a failure.
import * as fs from "node:fs";
import { join } from "node:path";
import { paths, under } from "../os.ts";
import { FileRefused, readFileSafe } from "../files.ts";
import type { Log } from "../log.ts";
import { KeyError, fingerprintLine, parsePublicKeyBytes, type PublicKey } from "../ssh/keys.ts";
import { resolveInRoot, PathNotFound } from "../ssh/home.ts";
import { shown, type StepContext, type StepResult } from "./step.ts";

const step = "fingerprints";
const HOST_KEY_FILE = /^ssh_host_.*key\.pub$/s;
// A public key file is one line; an RSA-16384 one is about 3 KiB.
const MAX_KEY_FILE_BYTES = 64 << 10;
const BANNER = "#".repeat(61);

export interface HostKeys {
  /** The directory searched (under the root). */
  dir: string;
  keys: { file: string; key: PublicKey }[];
}

/** The host public keys under `root`, valid ones only; each skipped file is a warning on `log`. */
export function readHostKeys(root: string, log: Log): HostKeys {
  const dir = under(root, paths.sshHostKeyDir);
  let names: string[];
  let real: string;
  try {
    real = resolveInRoot(root, paths.sshHostKeyDir);
    names = fs.readdirSync(real);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (e instanceof PathNotFound || code === "ENOENT" || code === "ENOTDIR") return { dir, keys: [] };
    throw e;
  }
  const keys: HostKeys["keys"] = [];
  for (const name of names.filter((n) => HOST_KEY_FILE.test(n)).sort()) {
    const file = join(dir, name);
    const path = join(real, name);
    try {
      const st = fs.lstatSync(path);
      if (st.isSymbolicLink()) throw new FileRefused("it is a symlink");
      if (!st.isFile()) throw new FileRefused("it is not a regular file");
      const buf = readFileSafe(path, MAX_KEY_FILE_BYTES);
      if (buf === null) continue; // removed meanwhile
      keys.push({ file, key: parsePublicKeyBytes(buf) });
    } catch (e) {
      const why = e instanceof KeyError ? `not a valid public key: ${e.message}` : (e as Error).message;
      log.warn(`skipped ${shown(file, 200)}: ${why}`, { step });
    }
  }
  return { dir, keys };
}

/** The console block for `keys`: prefixed fingerprints, then the key lines unprefixed. */
export function fingerprintBlock(keys: readonly PublicKey[], prefix: string): string {
  const lines = [
    BANNER,
    "-----BEGIN SSH HOST KEY FINGERPRINTS-----",
    ...keys.map(fingerprintLine),
    "-----END SSH HOST KEY FINGERPRINTS-----",
    BANNER,
  ].map((l) => prefix + l);
  lines.push("-----BEGIN SSH HOST KEY KEYS-----", ...keys.map((k) => k.text), "-----END SSH HOST KEY KEYS-----");
  return lines.join("\n") + "\n";
}

/** Print the block for the host keys under `root`; returns how many keys were printed (0: a warning instead). */
export function printHostKeys(root: string, prefix: string, log: Log, stdout: (t: string) => void): { dir: string; printed: number } {
  const { dir, keys } = readHostKeys(root, log);
  if (keys.length === 0) {
    log.warn(`no SSH host keys in ${dir}`, { step });
    return { dir, printed: 0 };
  }
  stdout(fingerprintBlock(keys.map((k) => k.key), prefix));
  return { dir, printed: keys.length };
}

export async function run(ctx: StepContext): Promise<StepResult> {
  // Printing changes nothing, so a dry run prints too.
  const { dir, printed } = printHostKeys(ctx.root, ctx.config.fingerprints.prefix, ctx.log, ctx.stdout);
  if (printed === 0) return { summary: `nothing printed (no host keys in ${dir})`, data: { keys: 0 } };
  return { summary: `printed ${printed} host key fingerprint${printed === 1 ? "" : "s"}`, data: { keys: printed } };
}
