// `imds-init metadata [PATH]`: ask the metadata service directly, with the
// same client, endpoints and protocol choice a boot uses, to see what the
// steps would see. PATH is relative to /latest/; without it, the meta-data
// tree as YAML.
import { stringify } from "yaml";
import type { Options } from "../cli.ts";
import type { Config } from "../config.ts";
import type { Log } from "../log.ts";
import { connect } from "../imds/client.ts";
import { MetadataError, MetadataUnreachable, type Metadata } from "../imds/metadata.ts";
import { badPath, displayText } from "../imds/values.ts";
import { EXIT } from "../exit.ts";

// Bounds on the tree walk: EC2's meta-data tree is a few levels deep and
// under a hundred entries; a hostile or looping service gets no further.
const MAX_DEPTH = 8;
const MAX_PATHS = 500;

const out = (data: string | Buffer): void => void process.stdout.write(data);

type Tree = Map<string, Tree | string | null>;

/** The meta-data tree under `path`; problems are collected, not thrown, so one bad value does not hide the rest. */
async function walk(md: Metadata, path: string, depth: number, budget: { left: number }, problems: string[]): Promise<Tree | null> {
  let entries: string[] | null;
  try {
    entries = await md.list(path);
  } catch (e) {
    problems.push((e as Error).message);
    return null;
  }
  if (entries === null) {
    problems.push(`${path}: not found (404)`);
    return null;
  }
  const tree: Tree = new Map();
  for (const entry of entries) {
    if (budget.left-- <= 0) {
      problems.push(`${path}: stopped after ${MAX_PATHS} paths`);
      break;
    }
    // public-keys/ lists "0=name"; the key itself is under "0/".
    const key = path.endsWith("public-keys/") ? /^([0-9]+)=/.exec(entry) : null;
    const child = key ? `${path}${key[1]}/` : path + entry;
    const name = entry.endsWith("/") ? entry.slice(0, -1) : entry;
    const bad = badPath(child);
    if (bad) {
      problems.push(`${path}: entry ${JSON.stringify(entry)}: ${bad}`);
      continue;
    }
    if (child.endsWith("/")) {
      if (depth >= MAX_DEPTH) problems.push(`${child}: deeper than ${MAX_DEPTH} levels, not walked`);
      else tree.set(name, await walk(md, child, depth + 1, budget, problems));
      continue;
    }
    try {
      const body = await md.bytes(child);
      tree.set(name, body === null ? null : displayText(child, body));
      if (body === null) problems.push(`${child}: listed but not found (404)`);
    } catch (e) {
      problems.push((e as Error).message);
      tree.set(name, null);
    }
  }
  return tree;
}

export async function metadata(opts: Options, config: Config, log: Log): Promise<number> {
  const path = opts.path?.replace(/^\/(latest\/)?/, "");
  const bad = path === undefined ? null : badPath(path);
  if (bad) {
    log.error(`${JSON.stringify(opts.path)}: ${bad}; PATH is relative to /latest/, e.g. meta-data/instance-id`);
    return EXIT.usage;
  }
  let md: Metadata;
  try {
    md = await connect(config.metadata, log);
  } catch (e) {
    log.error((e as Error).message);
    return e instanceof MetadataUnreachable ? EXIT.unreachable : EXIT.failed;
  }
  // Said after the fetch: a 401 can move a v1 session to tokens mid-way.
  const answered = (): void =>
    log.info(`answered by ${md.endpoint} (${md.protocol === "v2" ? "IMDSv2 token" : "IMDSv1"}, ${md.requests} requests)`);
  try {
    if (path === undefined) {
      const problems: string[] = [];
      const tree = await walk(md, "meta-data/", 1, { left: MAX_PATHS }, problems);
      if (tree) out(stringify(tree, { lineWidth: 0 }));
      answered();
      for (const p of problems) log.warn(p);
      return problems.length > 0 ? EXIT.failed : EXIT.ok;
    }
    if (path === "" || path.endsWith("/")) {
      const entries = await md.list(path);
      answered();
      if (entries === null) return notFound(log, path);
      out(entries.map((e) => e + "\n").join(""));
      return EXIT.ok;
    }
    const body = await md.bytes(path);
    answered();
    if (body === null) return notFound(log, path);
    if (path === "user-data") {
      out(body); // the bytes as they are, for `> file`
      return EXIT.ok;
    }
    const text = displayText(path, body);
    out(text.endsWith("\n") || text === "" ? text : text + "\n");
    return EXIT.ok;
  } catch (e) {
    if (!(e instanceof MetadataError)) throw e;
    answered();
    log.error(e.message);
    return EXIT.failed;
  }
}

function notFound(log: Log, path: string): number {
  log.error(`${path}: not found (404)`);
  return EXIT.failed;
}
