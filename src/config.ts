// The configuration file: YAML, every key optional with a documented
// default. Unknown keys and wrong types are errors that name the file, the
// line and the key, because a typo in a boot agent's config should stop the
// admin at the console, not silently do something else.
import { LineCounter, parseDocument, isMap, isSeq, isScalar, type Node, type Pair } from "yaml";
import { readFileSafe, FileRefused } from "./files.ts";

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export const IMDSV2_MODES = ["auto", "required", "off"] as const;
export const HOSTNAME_SOURCES = ["local-hostname", "hostname", "public-hostname"] as const;

export interface Config {
  metadata: {
    urls: string[];
    imdsv2: (typeof IMDSV2_MODES)[number];
    timeout_ms: number;
    deadline_s: number;
    token_ttl_s: number;
    max_bytes: number;
  };
  hostname: { enabled: boolean; source: (typeof HOSTNAME_SOURCES)[number]; short: boolean };
  ssh_keys: { enabled: boolean; users: string[] };
  user_data: { enabled: boolean; timeout_s: number };
  fingerprints: { enabled: boolean; prefix: string };
  basesystem: { enabled: boolean; package: string };
  log: { level: LogLevel };
}

export function defaults(): Config {
  return {
    metadata: {
      urls: ["http://169.254.169.254", "http://[fd00:ec2::254]"],
      imdsv2: "auto",
      timeout_ms: 1000,
      deadline_s: 60,
      token_ttl_s: 21600,
      max_bytes: 1048576,
    },
    hostname: { enabled: true, source: "local-hostname", short: false },
    ssh_keys: { enabled: true, users: ["root"] },
    user_data: { enabled: true, timeout_s: 3600 },
    fingerprints: { enabled: true, prefix: "ec2: " },
    basesystem: { enabled: true, package: "/var/lib/imds-init/basesystem.rpm" },
    log: { level: "info" },
  };
}

/** A configuration error: exit code 2. */
export class ConfigError extends Error {}

type Check = (v: unknown) => string | null; // null when fine, else what was expected

const bool: Check = (v) => (typeof v === "boolean" ? null : "true or false");
const int =
  (min: number, max: number): Check =>
  (v) =>
    typeof v === "number" && Number.isInteger(v) && v >= min && v <= max ? null : `an integer from ${min} to ${max}`;
const oneOf =
  (values: readonly string[]): Check =>
  (v) =>
    typeof v === "string" && values.includes(v) ? null : `one of ${values.join(", ")}`;
const str =
  (max: number): Check =>
  (v) =>
    typeof v === "string" && v.length <= max && !/[\x00-\x1f\x7f]/.test(v) ? null : `a string of at most ${max} printable characters`;
const absPath: Check = (v) =>
  typeof v === "string" && v.startsWith("/") && !/[\x00-\x1f\x7f]/.test(v) && !v.split("/").includes("..")
    ? null
    : "an absolute path without '..'";
const userName: Check = (v) =>
  typeof v === "string" && /^[a-z_][a-z0-9_.-]{0,31}\$?$/i.test(v) ? null : "a user name";
const listOf =
  (item: Check, minLen: number): Check =>
  (v) => {
    if (!Array.isArray(v) || v.length < minLen) return `a list of at least ${minLen}`;
    for (const x of v) {
      const bad = item(x);
      if (bad) return `a list of ${bad}`;
    }
    return null;
  };

/**
 * Ports fetch() refuses to connect to (the Fetch standard's "bad ports").
 * Refused here so a metadata URL on one is a config error at once, not a
 * "bad port" retried until the deadline.
 */
export const FETCH_BAD_PORTS = new Set([
  1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95, 101, 102, 103, 104, 109, 110,
  111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179, 389, 427, 465, 512, 513, 514, 515, 526, 530, 531, 532,
  540, 548, 554, 556, 563, 587, 601, 636, 989, 990, 993, 995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061,
  6000, 6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080,
]);

/** Where imds-init may fetch metadata from: plain http(s) origins only. */
export function checkMetadataUrl(v: unknown): string | null {
  const expected = "an http:// URL with no path, user, query or fragment";
  if (typeof v !== "string") return expected;
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    return expected;
  }
  if ((u.protocol !== "http:" && u.protocol !== "https:") || u.username || u.password || u.search || u.hash) return expected;
  if (u.pathname !== "/" && u.pathname !== "") return expected;
  if (u.port && FETCH_BAD_PORTS.has(Number(u.port))) return `${expected}, on a port HTTP clients may use (not ${u.port})`;
  return null;
}

const schema: Record<string, Record<string, Check>> = {
  metadata: {
    urls: listOf(checkMetadataUrl, 1),
    imdsv2: oneOf(IMDSV2_MODES),
    timeout_ms: int(50, 60000),
    deadline_s: int(0, 3600),
    token_ttl_s: int(1, 21600),
    max_bytes: int(1024, 64 << 20),
  },
  hostname: { enabled: bool, source: oneOf(HOSTNAME_SOURCES), short: bool },
  ssh_keys: { enabled: bool, users: listOf(userName, 0) },
  user_data: { enabled: bool, timeout_s: int(0, 86400) },
  fingerprints: { enabled: bool, prefix: str(64) },
  basesystem: { enabled: bool, package: absPath },
  log: { level: oneOf(LOG_LEVELS) },
};

function show(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? s.slice(0, 57) + "..." : s;
}

/**
 * Parse and validate configuration text. `file` is used in messages only.
 * Returns a full Config: the defaults with the file's keys applied.
 */
export function parseConfig(text: string, file: string): Config {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const at = (node: Node | null | undefined) =>
    node?.range ? `${file}:${lines.linePos(node.range[0]).line}` : file;
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    throw new ConfigError(`${file}:${lines.linePos(e.pos[0]).line}: not valid YAML: ${e.message.split("\n")[0]}`);
  }
  const config = defaults();
  const root = doc.contents;
  if (root === null || (isScalar(root) && root.value === null)) return config; // empty file
  if (!isMap(root)) throw new ConfigError(`${at(root)}: expected a mapping of sections (metadata:, hostname:, ...)`);
  for (const pair of root.items as Pair<Node, Node | null>[]) {
    const section = isScalar(pair.key) ? String(pair.key.value) : "?";
    const keys = schema[section];
    if (!keys) throw new ConfigError(`${at(pair.key)}: unknown section "${section}" (known: ${Object.keys(schema).join(", ")})`);
    const body = pair.value;
    if (body === null || (isScalar(body) && body.value === null)) continue;
    if (!isMap(body)) throw new ConfigError(`${at(body ?? pair.key)}: ${section}: expected a mapping of keys`);
    for (const item of body.items as Pair<Node, Node | null>[]) {
      const key = isScalar(item.key) ? String(item.key.value) : "?";
      const check = keys[key];
      if (!check) throw new ConfigError(`${at(item.key)}: unknown key "${section}.${key}" (known: ${Object.keys(keys).join(", ")})`);
      if (item.value !== null && !isScalar(item.value) && !isSeq(item.value))
        throw new ConfigError(`${at(item.value)}: ${section}.${key}: expected ${check(undefined)}`);
      const value: unknown = item.value === null ? null : item.value.toJSON();
      const bad = check(value);
      if (bad) throw new ConfigError(`${at(item.value ?? item.key)}: ${section}.${key}: expected ${bad}, got ${show(value)}`);
      (config as unknown as Record<string, Record<string, unknown>>)[section]![key] = value;
    }
  }
  return config;
}

/**
 * Load the config file. A missing file is all defaults only when it is the
 * default path; a file named on the command line must exist.
 */
export function loadConfig(file: string, explicit: boolean): Config {
  let buf: Buffer | null;
  try {
    buf = readFileSafe(file, 1 << 20);
  } catch (e) {
    throw new ConfigError(`${file}: ${e instanceof FileRefused ? e.message : (e as Error).message}`);
  }
  if (buf === null) {
    if (explicit) throw new ConfigError(`${file}: no such file`);
    return defaults();
  }
  return parseConfig(buf.toString("utf8"), file);
}
