// The ssh-keys step: every key of meta-data/public-keys/ into the
// authorized_keys of every user in ssh_keys.users.
//
// Decisions:
// - No public-keys/ (404) or an empty listing: nothing to do, not a failure.
// - Each key is fetched and parsed on its own (src/ssh/keys.ts). A key that
//   cannot be fetched or does not parse is rejected, naming its index; the
//   others are still installed, and the step then fails so the next boot
//   tries again (the merge makes that harmless).
// - Each user on its own: a missing user, a missing home or a symlinked
//   ~/.ssh is an error for that user; the other users still get their keys.
import { MetadataError } from "../imds/metadata.ts";
import { parsePublicKeys, type PublicKeyEntry } from "../imds/values.ts";
import { Passwd, UserError } from "../passwd.ts";
import { FileRefused } from "../files.ts";
import { installKeys } from "../ssh/authorized-keys.ts";
import { KeyError, fingerprintLine, keyIdentity, parsePublicKeyBytes, type PublicKey } from "../ssh/keys.ts";
import { StepError, shown, type StepContext, type StepResult } from "./step.ts";

const step = "ssh-keys";
const LISTING = "meta-data/public-keys/";

function plural(n: number): string {
  return `${n} key${n === 1 ? "" : "s"}`;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export async function run(ctx: StepContext): Promise<StepResult> {
  const { log } = ctx;
  const md = ctx.md;
  if (!md) throw new StepError("the metadata service is not available");

  const listing = await md.list(LISTING);
  if (listing === null || listing.length === 0) return { summary: "no public keys in the metadata", data: { keys: 0 } };
  const entries: PublicKeyEntry[] = parsePublicKeys(listing, LISTING);

  const keys: PublicKey[] = [];
  const seen = new Set<string>();
  const rejected: string[] = [];
  const kept: { index: number; name: string; fingerprint: string }[] = [];
  for (const { index, name } of entries) {
    const path = `${LISTING}${index}/openssh-key`;
    const label = `key ${index} (${shown(name, 40)})`;
    try {
      const bytes = await md.bytes(path);
      if (bytes === null) throw new KeyError(`${path} not found (404)`);
      const key = parsePublicKeyBytes(bytes);
      const fp = fingerprintLine(key);
      log.debug(`${label}: ${fp}`, { step });
      kept.push({ index, name, fingerprint: fp });
      const id = keyIdentity(key.type, key.blob);
      if (!seen.has(id)) keys.push(key);
      seen.add(id);
    } catch (e) {
      if (!(e instanceof KeyError || e instanceof MetadataError)) throw e;
      log.error(`${label} rejected: ${message(e)}`, { step, key: index });
      rejected.push(`key ${index} rejected (${message(e)})`);
    }
  }

  const parts: string[] = [];
  const users: Record<string, unknown> = {};
  let userFailed = false;
  if (keys.length > 0) {
    let passwd: Passwd | null = null;
    let passwdError = "";
    try {
      passwd = Passwd.load(ctx.root);
    } catch (e) {
      if (!(e instanceof UserError || e instanceof FileRefused)) throw e;
      passwdError = message(e);
    }
    for (const name of ctx.config.ssh_keys.users) {
      try {
        if (!passwd) throw new UserError(`user ${name}: ${passwdError}`);
        const user = passwd.lookup(name);
        const r = installKeys(ctx.root, user, keys, ctx.dryRun);
        if (r.created) log.info(`${ctx.dryRun ? "would create" : "created"} ${r.created}`, { step, user: name });
        for (const f of r.fixed) log.info(`${ctx.dryRun ? "would fix" : "fixed"} ${f}`, { step, user: name });
        const also = r.present > 0 ? ` (${r.present} already present)` : "";
        if (r.added === 0) parts.push(`${plural(r.present)} already present for ${name}`);
        else parts.push(`${ctx.dryRun ? "would install" : "installed"} ${plural(r.added)} for ${name}${also}`);
        users[name] = { added: r.added, present: r.present };
      } catch (e) {
        if (!(e instanceof UserError || e instanceof FileRefused || (e as NodeJS.ErrnoException).code)) throw e;
        userFailed = true;
        // UserError messages name the user already; paths and errno messages do not.
        const msg = e instanceof UserError ? message(e) : `${name}: ${message(e)}`;
        log.error(msg, { step, user: name });
        parts.push(msg);
        users[name] = { error: msg };
      }
    }
  } else {
    parts.push("no key to install");
  }
  if (keys.length > 0 && ctx.config.ssh_keys.users.length === 0) parts.push("no users to install keys for (ssh_keys.users is empty)");
  parts.push(...rejected);
  return {
    summary: parts.join("; "),
    data: { keys: kept, rejected: rejected.length, users },
    ...(rejected.length > 0 || userFailed ? { failed: true } : {}),
  };
}
