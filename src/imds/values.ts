// Checks for values that come from the metadata service: untrusted bytes.
// Every rejection is a MetadataError naming the path, so a step can fail
// with a message that says exactly which answer was bad.
import { MetadataError } from "./metadata.ts";

/** An instance id: AWS "i-0123abcd...", OpenStack UUIDs and the like. */
export function validInstanceId(v: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/.test(v);
}

/** Longest single-line value accepted (an RSA-16384 key line is under 3 KiB). */
export const MAX_VALUE_CHARS = 8192;
/** Bounds for directory listings. */
export const MAX_LISTING_ENTRIES = 1000;
export const MAX_ENTRY_CHARS = 512;

// C0 controls, DEL, C1 controls, and the Unicode line and paragraph
// separators: anything that could split a line or drive a terminal.
const CONTROL = /[\x00-\x1f\x7f-\x9f\u2028\u2029]/;

function decode(path: string, buf: Buffer): string {
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(buf);
  } catch {
    throw new MetadataError(path, "not valid UTF-8");
  }
}

function where(text: string): string {
  const i = text.search(CONTROL);
  return `control character 0x${text.charCodeAt(i).toString(16).padStart(2, "0")} at offset ${i}`;
}

/**
 * A single-line value: one trailing newline (LF or CRLF) stripped; NUL,
 * other control characters and values over MAX_VALUE_CHARS rejected.
 */
export function singleLine(path: string, buf: Buffer): string {
  let text = decode(path, buf);
  if (text.endsWith("\r\n")) text = text.slice(0, -2);
  else if (text.endsWith("\n")) text = text.slice(0, -1);
  if (text.length > MAX_VALUE_CHARS) throw new MetadataError(path, `value longer than ${MAX_VALUE_CHARS} characters`);
  if (CONTROL.test(text)) {
    const nl = text.search(/[\r\n\u2028\u2029]/);
    throw new MetadataError(path, nl >= 0 ? "more than one line where a single value is expected" : where(text));
  }
  return text;
}

/**
 * A directory listing: one entry per line, a trailing "/" marks a
 * directory. Empty lines (but for one final newline), control characters,
 * duplicates and oversized listings make the whole listing malformed.
 */
export function parseListing(path: string, buf: Buffer): string[] {
  let text = decode(path, buf);
  if (text.endsWith("\n")) text = text.slice(0, -1);
  if (text === "") return [];
  const lines = text.split("\n");
  if (lines.length > MAX_LISTING_ENTRIES) throw new MetadataError(path, `listing has more than ${MAX_LISTING_ENTRIES} entries`);
  const seen = new Set<string>();
  lines.forEach((line, i) => {
    const bad =
      line === "" || line === "/"
        ? "empty entry"
        : line.length > MAX_ENTRY_CHARS
          ? `entry longer than ${MAX_ENTRY_CHARS} characters`
          : CONTROL.test(line)
            ? where(line)
            : seen.has(line)
              ? "duplicate entry"
              : null;
    if (bad) throw new MetadataError(path, `malformed listing: line ${i + 1}: ${bad}`);
    seen.add(line);
  });
  return lines;
}

export interface PublicKeyEntry {
  /** The N of meta-data/public-keys/N/openssh-key. */
  index: number;
  /** The key pair's name, as given at launch (printable, untrusted). */
  name: string;
}

/**
 * The meta-data/public-keys/ listing ("0=name" per entry, as returned by
 * Metadata.list) as index and name, sorted by index. Anything else,
 * including a repeated index, is a MetadataError for `path`.
 */
export function parsePublicKeys(entries: readonly string[], path = "meta-data/public-keys/"): PublicKeyEntry[] {
  const out: PublicKeyEntry[] = [];
  const seen = new Set<number>();
  entries.forEach((entry, i) => {
    const m = /^(0|[1-9][0-9]{0,3})=(.{1,255})$/su.exec(entry);
    if (!m || CONTROL.test(entry))
      throw new MetadataError(path, `malformed public-keys listing: line ${i + 1}: expected "N=name", got ${JSON.stringify(entry.slice(0, 80))}`);
    const index = Number(m[1]);
    if (seen.has(index)) throw new MetadataError(path, `malformed public-keys listing: index ${index} appears twice`);
    seen.add(index);
    out.push({ index, name: m[2]! });
  });
  return out.sort((a, b) => a.index - b.index);
}

/**
 * Printable text for display (the metadata command): several lines allowed,
 * tabs allowed, other control characters refused so a hostile answer
 * cannot drive the admin's terminal.
 */
export function displayText(path: string, buf: Buffer): string {
  const text = decode(path, buf);
  const body = text.replace(/\r?\n/g, "").replace(/\t/g, "");
  if (CONTROL.test(body)) throw new MetadataError(path, `${where(body)}; not printed`);
  return text;
}

// A path under /latest/: segments of the characters EC2 paths use (MAC
// addresses have ":", IAM role names "@+=,"); no ".", "..", "%", "?", "#",
// empty segments or leading "/", so it can only name something under
// /latest/ on the configured endpoint.
const SEGMENT = /^[A-Za-z0-9._~:@+,=-]+$/;

/** The reason `path` is not an acceptable metadata path, or null when it is. */
export function badPath(path: string): string | null {
  if (path.length > 1024) return "path longer than 1024 characters";
  if (path === "") return null;
  const segments = (path.endsWith("/") ? path.slice(0, -1) : path).split("/");
  for (const s of segments) {
    if (!SEGMENT.test(s) || s === "." || s === "..") return `not a metadata path (bad segment ${JSON.stringify(s.slice(0, 40))})`;
  }
  return null;
}
