// The hostname step: the name from the metadata service, validated, made
// the kernel's host name (only when the root is "/"), written to
// /etc/hostname and, on EL6-era images, to HOSTNAME= in /etc/sysconfig/network.
//
// Decisions:
// - A value is a host name per RFC 1123: labels of 1-63 letters, digits and
//   inner hyphens, at most 253 characters. One trailing dot (the absolute
//   form "host.example.com.") is accepted and dropped: it names the same
//   host, and neither the kernel nor /etc/hostname wants it.
// - The whole value is validated before `hostname.short` keeps its first
//   label: a hostile value is refused, never trimmed into something valid.
// - Linux limits the kernel host name to 64 characters, and systemd ignores
//   an /etc/hostname over 64 at boot (falling back to "localhost"). A longer
//   FQDN therefore becomes its first label everywhere (kernel, /etc/hostname,
//   sysconfig), with a warning: one name in all places, the same outcome as
//   systemd's own shortening of overlong names and GCE/Flatcar practice. Keeping
//   the FQDN in /etc/hostname only would lose the name on the next boot.
// - The live name is set by writing /proc/sys/kernel/hostname (sethostname(2)
//   without a `hostname` binary, which minimal images lack), then read back.
// - /etc/hostname and /etc/sysconfig/network are never written through a
//   symlink: a symlink there is refused (the admin put it there; we do not
//   guess where it should point), and then nothing at all is changed.
// - Every check happens before the first change; nothing that is already
//   right is rewritten (no new inode, no new mtime).
import * as fs from "node:fs";
import { hostname as kernelHostname } from "node:os";
import { resolve } from "node:path";
import { paths, under, hostNameMax } from "../os.ts";
import { readFileSafe, requireRegularOrMissing, writeAll, writeFileAtomic, type Ownership } from "../files.ts";
import { StepError, shown, type StepContext, type StepResult } from "./step.ts";

const step = "hostname";
// /etc/hostname and /etc/sysconfig/network are a few lines; anything bigger is not what we think it is.
const maxFileBytes = 64 << 10;

/** Why `value` is not an RFC 1123 host name, or null when it is one. */
export function hostnameProblem(value: string): string | null {
  if (value.length === 0) return "it is empty";
  const name = value.endsWith(".") ? value.slice(0, -1) : value;
  if (name.length > 253) return `it is ${name.length} characters long, over 253`;
  if (/[^A-Za-z0-9.-]/.test(name)) return "it has characters other than letters, digits, '-' and '.'";
  for (const label of name.split(".")) {
    if (label.length === 0) return "it has an empty label";
    if (label.length > 63) return `it has a label of ${label.length} characters, over 63`;
    if (label.startsWith("-") || label.endsWith("-")) return "it has a label that starts or ends with '-'";
  }
  return null;
}

/** The name to use for a valid value: trailing dot dropped, first label when short or too long for the kernel. */
export function chooseHostname(value: string, short: boolean): { name: string; shortened: boolean } {
  const full = value.endsWith(".") ? value.slice(0, -1) : value;
  const first = full.split(".")[0]!;
  if (short) return { name: first, shortened: false };
  if (full.length > hostNameMax) return { name: first, shortened: true };
  return { name: full, shortened: false };
}

/** /etc/hostname with its first name line replaced; comment and blank lines kept byte for byte. */
export function withEtcHostname(old: string, name: string): string {
  const lines = old.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  const i = lines.findIndex((l) => l.trim() !== "" && !l.trim().startsWith("#"));
  if (i < 0) lines.push(name);
  else lines[i] = name;
  return lines.join("\n") + "\n";
}

// A HOSTNAME= assignment: prefix, value (quoted or bare), the rest, and a CR to keep.
const assignment = /^(\s*(?:export\s+)?HOSTNAME=)("[^"]*"|'[^']*'|[^\s"'#;]*)(.*?)(\r?)$/;

/**
 * /etc/sysconfig/network with every HOSTNAME= line set to `name` (quoting
 * style and a trailing comment kept) or the line added; every other line kept
 * byte for byte. A line already naming `name` is left exactly as it is.
 */
export function withSysconfigHostname(old: string, name: string): string {
  let found = false;
  const lines = old.split("\n").map((line) => {
    const m = assignment.exec(line);
    if (!m) return line;
    found = true;
    const [, prefix, value, rest, cr] = m as unknown as [string, string, string, string, string];
    const q = value.startsWith('"') ? '"' : value.startsWith("'") ? "'" : "";
    const current = q ? value.slice(1, -1) : value;
    // Only a trailing comment survives; anything else after the value
    // (a command substitution, a second word) goes with the old value.
    const keep = /^\s*(#.*)?$/.test(rest) ? rest : "";
    if (current === name && keep === rest) return line;
    return `${prefix}${q}${name}${q}${keep}${cr}`;
  });
  if (found) return lines.join("\n");
  return old + (old === "" || old.endsWith("\n") ? "" : "\n") + `HOSTNAME=${name}\n`;
}

interface FileChange {
  /** The path as the admin knows it, for messages. */
  label: string;
  file: string;
  data: Buffer;
  own: Ownership;
}

/** What writing `file` would change, or null when it is already right. `edit` gets and returns the text. */
function planFile(label: string, file: string, edit: (old: string) => string, whenMissing: Ownership | null): FileChange | null {
  const st = requireRegularOrMissing(file); // a symlink or directory there: refused
  const old = readFileSafe(file, maxFileBytes); // O_NOFOLLOW: refused too if it turned into a symlink
  if (old === null && whenMissing === null) return null;
  // latin1 maps every byte to one character and back: other lines stay byte for byte.
  const data = Buffer.from(edit(old === null ? "" : old.toString("latin1")), "latin1");
  if (old !== null && old.equals(data)) return null;
  const own = st ? { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid } : whenMissing!;
  return { label, file, data, own };
}

/**
 * Make `name` the running kernel's host name (of this UTS namespace).
 * Returns false when it already was. The name is checked again here because
 * this writes straight to the kernel.
 */
export function setLiveHostname(name: string, procFile: string = paths.procHostname): boolean {
  if (hostnameProblem(name) !== null || name.endsWith(".") || name.length > hostNameMax)
    throw new StepError(`refusing to set the kernel host name to ${shown(name)}`);
  if (kernelHostname() === name) return false;
  let fd: number;
  try {
    fd = fs.openSync(procFile, fs.constants.O_WRONLY | fs.constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new StepError(`cannot set the kernel host name: ${procFile} does not exist (is /proc mounted?)`);
    throw new StepError(`cannot set the kernel host name: ${procFile}: ${(e as Error).message}`);
  }
  try {
    writeAll(fd, Buffer.from(name));
  } catch (e) {
    throw new StepError(`cannot set the kernel host name: writing ${procFile}: ${(e as Error).message}`);
  } finally {
    fs.closeSync(fd);
  }
  const now = kernelHostname();
  if (now !== name) throw new StepError(`the kernel host name is ${shown(now)} after setting it to ${shown(name)}`);
  return true;
}

export async function run(ctx: StepContext): Promise<StepResult> {
  const { source, short } = ctx.config.hostname;
  const mdPath = `meta-data/${source}`;
  if (!ctx.md) throw new StepError("the metadata service is not available");
  const value = await ctx.md.value(mdPath);
  if (value === null)
    throw new StepError(`${mdPath} not found (404): the metadata service has no ${source}; nothing changed (hostname.source chooses another)`);
  const problem = hostnameProblem(value);
  if (problem) throw new StepError(`${mdPath} is not a valid host name (${problem}): ${shown(value)}; nothing changed`);
  const { name, shortened } = chooseHostname(value, short);
  if (shortened)
    ctx.log.warn(`${value} is ${value.length} characters, over the kernel's limit of ${hostNameMax}: using its first label ${name}`, { step });

  const live = resolve(ctx.root) === "/";
  const changes: FileChange[] = [];
  const hostnameFile = planFile(paths.hostname, under(ctx.root, paths.hostname), (old) => withEtcHostname(old, name), { mode: 0o644 });
  if (hostnameFile) changes.push(hostnameFile);
  const network = planFile(paths.sysconfigNetwork, under(ctx.root, paths.sysconfigNetwork), (old) => withSysconfigHostname(old, name), null);
  if (network) changes.push(network);
  const liveDue = live && kernelHostname() !== name;

  const what = [...changes.map((c) => c.label), ...(liveDue ? ["kernel"] : [])];
  const data: Record<string, unknown> = { hostname: name, source, changed: what };
  if (name !== value) data.from = value;
  if (what.length === 0) return { summary: `already ${name}`, data };
  if (ctx.dryRun) return { summary: `would set ${name} (${what.join(", ")})`, data };

  // Files first: if one cannot be written the kernel keeps its old name too,
  // and the step fails and is retried next boot.
  for (const c of changes) {
    try {
      writeFileAtomic(c.file, c.data, c.own);
    } catch (e) {
      const done = changes.slice(0, changes.indexOf(c)).map((x) => x.label);
      throw new StepError(`cannot write ${c.file}: ${(e as Error).message}${done.length ? ` (already written: ${done.join(", ")})` : ""}`);
    }
  }
  if (liveDue) setLiveHostname(name);
  return { summary: `set to ${name} (${what.join(", ")})`, data };
}
