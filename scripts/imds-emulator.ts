// imds-emulator: an EC2-style instance metadata service on real sockets,
// for the tests, the demo and the benchmark. It follows AWS's rules for
// IMDSv2 session tokens and can misbehave on demand: v2 required, v1 only,
// a dropped token request, a late start, 5xx/429 bursts, latency, tokens
// that expire mid-run, and per-path broken bodies.
//
//   node_modules/.bin/node scripts/imds-emulator.ts [options]   (--help)
//   import { startEmulator } from "../scripts/imds-emulator.ts"
//
// Requests under /_emulator/ are the emulator's own control paths, never
// logged or faulted: GET /_emulator/requests (the request log as JSON),
// POST /_emulator/reset (clear it).
import * as http from "node:http";
import * as net from "node:net";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

export interface PublicKey {
  name: string;
  "openssh-key": string;
}
/** The meta-data tree: strings are values, objects directories, an array the public-keys layout. */
export interface MetaTree {
  [name: string]: string | MetaTree | PublicKey[];
}
export interface InstanceData {
  "meta-data": MetaTree;
  /** Served as is; absent or null: 404, as on EC2 when there is none. */
  "user-data"?: string | Buffer | null;
  /** Binary user-data (a JSON file cannot hold raw bytes). */
  "user-data-base64"?: string;
  /** Bodies served verbatim for these paths (relative to /latest/), over the tree: hostile listings and values. */
  raw?: Record<string, string>;
}

export type PathFault =
  /** Declare the full Content-Length, send half, close the connection. */
  | { kind: "cut" }
  /** A body of `bytes` bytes (chunked: no Content-Length). */
  | { kind: "huge"; bytes: number; chunked?: boolean }
  /** Send the headers (and `afterBytes` of the body), then nothing. */
  | { kind: "stall"; afterBytes?: number }
  /** One byte every `intervalMs`. */
  | { kind: "drip"; intervalMs: number }
  /** Answer with this status. */
  | { kind: "status"; status: number };

export type Mode = "optional" | "required" | "v1-only";

export interface EmulatorOptions {
  host?: string;
  /** 0 (default): pick a free port. */
  port?: number;
  /** Default: scripts/demo-instance.json. */
  data?: InstanceData;
  /** optional (EC2's default: tokens accepted, not needed), required (IMDSv2 only), v1-only (no tokens at all). */
  mode?: Mode;
  /** Answer every token request with this status (403, 404, 405, ...); v1-only mode answers 404 unless set. */
  putStatus?: number;
  /** Accept token requests and never answer them, as EC2 does past the hop limit. */
  dropPut?: boolean;
  /** Start listening only after this long. */
  lateStartMs?: number;
  /** Answer the first N requests with failStatus (default 503). */
  failFirst?: number;
  failStatus?: number;
  /** Wait this long before every answer. */
  latencyMs?: number;
  /** Tokens live at most this long, whatever TTL was asked for. */
  tokenTtlCapS?: number;
  /** A token is accepted for this many GETs, then answered 401. */
  tokenUses?: number;
  /** Per-path misbehaviour, paths relative to /latest/. */
  faults?: Record<string, PathFault>;
  /** Print one line per request to stderr (or to this function). */
  verbose?: boolean | ((line: string) => void);
}

export interface RequestRecord {
  method: string;
  path: string;
  /** null: not answered (a dropped token request). */
  status: number | null;
  /** Whether an X-aws-ec2-metadata-token header was sent. */
  token: boolean;
  /** The fault applied, if any. */
  fault?: string;
  /** Milliseconds since the emulator started. */
  at: number;
}

export interface Emulator {
  url: string;
  host: string;
  port: number;
  /** Every request under /latest/ and elsewhere but /_emulator/, in order. */
  requests: RequestRecord[];
  /** Resolves once the port accepts connections (at once unless lateStartMs). */
  listening: Promise<void>;
  /** Tokens handed out so far. */
  readonly tokensIssued: number;
  reset(): void;
  close(): Promise<void>;
}

const MAX_TTL = 21600;
const TOKEN_TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER = "x-aws-ec2-metadata-token";

type Found = { dir: string[] } | { file: Buffer } | null;

function isKeys(v: unknown): v is PublicKey[] {
  return Array.isArray(v);
}

/** What the tree holds at `path` (relative to /latest/): a listing, a value, or nothing. */
export function lookup(data: InstanceData, path: string): Found {
  const raw = data.raw?.[path];
  if (raw !== undefined) return { file: Buffer.from(raw) };
  if (path === "") {
    const top = ["meta-data"];
    if (userData(data) !== null) top.push("user-data");
    return { dir: top };
  }
  if (path === "user-data") {
    const ud = userData(data);
    return ud === null ? null : { file: ud };
  }
  const wantDir = path.endsWith("/");
  const segments = (wantDir ? path.slice(0, -1) : path).split("/");
  if (segments.shift() !== "meta-data") return null;
  let node: string | MetaTree | PublicKey[] = data["meta-data"];
  for (const seg of segments) {
    if (typeof node === "string") return null;
    if (isKeys(node)) {
      const key: PublicKey | undefined = /^(0|[1-9][0-9]*)$/.test(seg) ? node[Number(seg)] : undefined;
      if (!key) return null;
      node = { "openssh-key": key["openssh-key"] };
    } else {
      if (!Object.hasOwn(node, seg)) return null;
      node = node[seg]!;
    }
  }
  if (typeof node === "string") return wantDir ? null : { file: Buffer.from(node) };
  if (isKeys(node)) return { dir: node.map((k, i) => `${i}=${k.name}`) };
  return { dir: Object.entries(node).map(([k, v]) => (typeof v === "string" ? k : `${k}/`)) };
}

function userData(data: InstanceData): Buffer | null {
  if (data["user-data-base64"] !== undefined) return Buffer.from(data["user-data-base64"], "base64");
  const ud = data["user-data"];
  if (ud === undefined || ud === null) return null;
  return typeof ud === "string" ? Buffer.from(ud) : ud;
}

export function loadData(file: string | URL): InstanceData {
  const data = JSON.parse(readFileSync(file, "utf8")) as InstanceData;
  if (typeof data !== "object" || data === null || typeof data["meta-data"] !== "object")
    throw new Error(`${String(file)}: expected an object with a "meta-data" object`);
  return data;
}

const DEMO = new URL("./demo-instance.json", import.meta.url);

async function freePort(host: string): Promise<number> {
  const probe = net.createServer();
  await new Promise<void>((resolve, reject) => probe.once("error", reject).listen(0, host, resolve));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

export async function startEmulator(options: EmulatorOptions = {}): Promise<Emulator> {
  const host = options.host ?? "127.0.0.1";
  const data = options.data ?? loadData(DEMO);
  const mode = options.mode ?? "optional";
  const faults = options.faults ?? {};
  const print =
    typeof options.verbose === "function"
      ? options.verbose
      : options.verbose
        ? (line: string) => void process.stderr.write(line + "\n")
        : null;
  const started = performance.now();
  const requests: RequestRecord[] = [];
  const tokens = new Map<string, { expiresAt: number; uses: number }>();
  const sockets = new Set<net.Socket>();
  const timers = new Set<NodeJS.Timeout>();
  let served = 0;
  let issued = 0;
  let closed = false;

  const later = (ms: number, fn: () => void): void => {
    const t = setTimeout(() => {
      timers.delete(t);
      fn();
    }, ms);
    timers.add(t);
  };
  const wait = (ms: number) => new Promise<void>((resolve) => later(ms, resolve));

  function tokenValid(value: string): boolean {
    const t = tokens.get(value);
    if (!t || performance.now() >= t.expiresAt || t.uses <= 0) return false;
    t.uses--;
    return true;
  }

  function sendFault(res: http.ServerResponse, fault: PathFault, body: Buffer, rec: RequestRecord): void {
    rec.fault = fault.kind;
    rec.status = fault.kind === "status" ? fault.status : 200;
    const filler = (n: number) => Buffer.alloc(n, "x");
    const content = body.length > 1 ? body : filler(2048);
    switch (fault.kind) {
      case "status":
        res.writeHead(fault.status, { "content-type": "text/plain" }).end(`${fault.status}\n`);
        return;
      case "cut":
        res.writeHead(200, { "content-type": "text/plain", "content-length": content.length });
        res.write(content.subarray(0, content.length >> 1), () => res.socket?.destroy());
        return;
      case "stall": {
        res.writeHead(200, { "content-type": "text/plain", "content-length": content.length });
        const n = Math.min(fault.afterBytes ?? 0, content.length - 1);
        if (n > 0) res.write(content.subarray(0, n));
        else res.flushHeaders();
        return; // nothing more, ever: the client's timeout has to end it
      }
      case "drip": {
        res.writeHead(200, { "content-type": "text/plain", "content-length": content.length });
        let i = 0;
        const next = (): void => {
          if (closed || res.destroyed || i >= content.length) return void res.end();
          res.write(content.subarray(i, ++i));
          later(fault.intervalMs, next);
        };
        next();
        return;
      }
      case "huge": {
        res.writeHead(200, fault.chunked ? { "content-type": "text/plain" } : { "content-type": "text/plain", "content-length": fault.bytes });
        const chunk = filler(64 * 1024);
        let left = fault.bytes;
        const pump = (): void => {
          while (left > 0 && !res.destroyed) {
            const n = Math.min(left, chunk.length);
            left -= n;
            if (!res.write(chunk.subarray(0, n))) return void res.once("drain", pump);
          }
          if (!res.destroyed) res.end();
        };
        pump();
        return;
      }
    }
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? "/").split("?")[0]!;
    const method = req.method ?? "GET";
    if (path.startsWith("/_emulator/")) return control(method, path, res);
    const token = req.headers[TOKEN_HEADER];
    const rec: RequestRecord = { method, path, status: null, token: token !== undefined, at: Math.round(performance.now() - started) };
    requests.push(rec);
    res.on("close", () => print?.(`${method} ${path} ${rec.status ?? "-"}${rec.fault ? ` ${rec.fault}` : ""} token=${rec.token ? "yes" : "no"}`));
    const answer = (status: number, body: string | Buffer = "", headers: http.OutgoingHttpHeaders = {}): void => {
      rec.status = status;
      res.writeHead(status, { "content-type": "text/plain", server: "EC2ws", ...headers }).end(body);
    };
    const count = ++served;
    if (options.latencyMs) await wait(options.latencyMs);
    if (closed) return;
    if (options.failFirst && count <= options.failFirst) {
      const status = options.failStatus ?? 503;
      return answer(status, `${status}\n`);
    }
    if (path === "/") return answer(200, "latest");
    if (path !== "/latest" && !path.startsWith("/latest/")) return answer(404, "Not Found\n");
    const rel = path.slice("/latest/".length);

    if (rel === "api/token") {
      if (method !== "PUT") return answer(405, "Method Not Allowed\n");
      if (options.dropPut) {
        rec.fault = "dropped";
        return; // the connection stays open, the answer never comes
      }
      if (options.putStatus) return answer(options.putStatus, `${options.putStatus}\n`);
      if (mode === "v1-only") return answer(404, "Not Found\n");
      // EC2 refuses tokens to anything that looks like it came through a proxy.
      if (req.headers["x-forwarded-for"] !== undefined) return answer(403, "Forbidden\n");
      const ttlText = req.headers[TOKEN_TTL_HEADER];
      const ttl = typeof ttlText === "string" && /^[0-9]{1,5}$/.test(ttlText) ? Number(ttlText) : NaN;
      if (!(ttl >= 1 && ttl <= MAX_TTL)) return answer(400, "Bad Request\n");
      const value = `AQAEA${randomBytes(42).toString("base64url")}==`;
      const life = Math.min(ttl, options.tokenTtlCapS ?? MAX_TTL) * 1000;
      tokens.set(value, { expiresAt: performance.now() + life, uses: options.tokenUses ?? Infinity });
      issued++;
      return answer(200, value, { [TOKEN_TTL_HEADER]: String(ttl) });
    }
    if (method !== "GET") return answer(405, "Method Not Allowed\n");
    if (mode !== "v1-only") {
      // A token that is sent must be good, even where tokens are optional.
      if (token !== undefined ? !(typeof token === "string" && tokenValid(token)) : mode === "required")
        return answer(401, "Unauthorized\n");
    }
    const found = lookup(data, rel);
    const fault = faults[rel];
    if (fault) return sendFault(res, fault, found && "file" in found ? found.file : Buffer.alloc(0), rec);
    if (!found) return answer(404, "Not Found\n");
    return answer(200, "file" in found ? found.file : found.dir.join("\n"));
  }

  function control(method: string, path: string, res: http.ServerResponse): void {
    const json = (status: number, body: unknown) =>
      void res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body) + "\n");
    if (path === "/_emulator/requests" && method === "GET") return json(200, { count: requests.length, tokens: issued, requests });
    if (path === "/_emulator/reset" && method === "POST") {
      requests.length = 0;
      return json(200, { count: 0 });
    }
    json(404, { error: "unknown control path" });
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      if (!res.headersSent) res.writeHead(500).end(String(e));
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 5000;
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });

  let port = options.port ?? 0;
  if (options.lateStartMs && port === 0) port = await freePort(host);
  const listening = new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    const go = (): void => {
      if (!closed) server.listen(port, host, () => resolve());
      else resolve();
    };
    if (options.lateStartMs) later(options.lateStartMs, go);
    else go();
  });
  listening.catch(() => {}); // a late listen that fails is reported to whoever awaits `listening`
  if (!options.lateStartMs) {
    await listening;
    port = (server.address() as net.AddressInfo).port;
  }

  return {
    url: `http://${host.includes(":") ? `[${host}]` : host}:${port}`,
    host,
    port,
    requests,
    listening,
    get tokensIssued() {
      return issued;
    },
    reset() {
      requests.length = 0;
    },
    close() {
      closed = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      for (const s of sockets) s.destroy();
      return new Promise<void>((resolve) => (server.listening ? server.close(() => resolve()) : resolve()));
    },
  };
}

const USAGE = `usage: node scripts/imds-emulator.ts [options]
An EC2-style instance metadata service. Prints "listening on URL" first.
  --host HOST             address to listen on (default 127.0.0.1)
  --port N                port (default 0: pick a free one)
  --data FILE             instance data as JSON (default scripts/demo-instance.json)
  --mode MODE             optional (default; tokens accepted, not needed),
                          required (IMDSv2 only), v1-only (token request 404)
  --put-status N          answer every token request with status N (403, 405...)
  --drop-put              never answer token requests (EC2 past the hop limit)
  --late-start SECONDS    listen only after this long
  --fail-first N          answer the first N requests with --fail-status
  --fail-status N         default 503 (500, 429...)
  --latency MS            wait before every answer
  --token-ttl-cap SECONDS tokens expire after at most this long
  --token-uses N          a token is good for N requests, then 401
  --cut PATH              send half the declared body, then close   (PATH under /latest/,
  --huge PATH[=BYTES]     a body of BYTES (default 64 MiB)           e.g. user-data;
  --huge-chunked PATH[=BYTES]  the same without Content-Length       each may be repeated)
  --stall PATH            headers, then nothing
  --drip PATH[=MS]        one byte every MS (default 100)
  --status PATH=N         answer PATH with status N
  --verbose               one line per request on stderr
control: GET /_emulator/requests (request log, JSON), POST /_emulator/reset`;

function cliOptions(argv: string[]): EmulatorOptions {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      host: { type: "string" },
      port: { type: "string" },
      data: { type: "string" },
      mode: { type: "string" },
      "put-status": { type: "string" },
      "drop-put": { type: "boolean" },
      "late-start": { type: "string" },
      "fail-first": { type: "string" },
      "fail-status": { type: "string" },
      latency: { type: "string" },
      "token-ttl-cap": { type: "string" },
      "token-uses": { type: "string" },
      cut: { type: "string", multiple: true },
      huge: { type: "string", multiple: true },
      "huge-chunked": { type: "string", multiple: true },
      stall: { type: "string", multiple: true },
      drip: { type: "string", multiple: true },
      status: { type: "string", multiple: true },
      verbose: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE + "\n");
    process.exit(0);
  }
  const num = (name: string, v: string | undefined, min: number, max: number): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) throw new Error(`--${name}: expected a number from ${min} to ${max}, got ${JSON.stringify(v)}`);
    return n;
  };
  // PATH or PATH=N (the number after the last "=").
  const pathArg = (name: string, v: string, dflt?: number): [string, number | undefined] => {
    const m = /^(.*)=([0-9]+)$/.exec(v);
    if (!m) return [v, dflt];
    return [m[1]!, num(name, m[2], 0, 2 ** 40)];
  };
  const mode = values.mode ?? "optional";
  if (!["optional", "required", "v1-only"].includes(mode)) throw new Error(`--mode: expected optional, required or v1-only, got ${JSON.stringify(mode)}`);
  const faults: Record<string, PathFault> = {};
  for (const p of values.cut ?? []) faults[p] = { kind: "cut" };
  for (const p of values.stall ?? []) faults[p] = { kind: "stall" };
  for (const v of values.huge ?? []) {
    const [p, n] = pathArg("huge", v, 64 << 20);
    faults[p] = { kind: "huge", bytes: n! };
  }
  for (const v of values["huge-chunked"] ?? []) {
    const [p, n] = pathArg("huge-chunked", v, 64 << 20);
    faults[p] = { kind: "huge", bytes: n!, chunked: true };
  }
  for (const v of values.drip ?? []) {
    const [p, n] = pathArg("drip", v, 100);
    faults[p] = { kind: "drip", intervalMs: n! };
  }
  for (const v of values.status ?? []) {
    const [p, n] = pathArg("status", v);
    if (n === undefined || n < 100 || n > 599) throw new Error(`--status: expected PATH=N with N an HTTP status, got ${JSON.stringify(v)}`);
    faults[p] = { kind: "status", status: n };
  }
  const opts: EmulatorOptions = { host: values.host ?? "127.0.0.1", mode: mode as Mode, faults, verbose: values.verbose ?? false };
  const set = <K extends keyof EmulatorOptions>(k: K, v: EmulatorOptions[K] | undefined): void => {
    if (v !== undefined) opts[k] = v;
  };
  set("port", num("port", values.port, 0, 65535));
  set("putStatus", num("put-status", values["put-status"], 100, 599));
  set("dropPut", values["drop-put"]);
  const late = num("late-start", values["late-start"], 0, 3600);
  set("lateStartMs", late === undefined ? undefined : late * 1000);
  set("failFirst", num("fail-first", values["fail-first"], 0, 1e9));
  set("failStatus", num("fail-status", values["fail-status"], 100, 599));
  set("latencyMs", num("latency", values.latency, 0, 600_000));
  set("tokenTtlCapS", num("token-ttl-cap", values["token-ttl-cap"], 0, MAX_TTL));
  set("tokenUses", num("token-uses", values["token-uses"], 0, 1e9));
  if (values.data !== undefined) opts.data = loadData(values.data);
  return opts;
}

async function main(): Promise<void> {
  let opts: EmulatorOptions;
  try {
    opts = cliOptions(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`imds-emulator: ${(e as Error).message}\n${USAGE}\n`);
    process.exit(2);
  }
  const emu = await startEmulator(opts);
  process.stdout.write(`listening on ${emu.url}\n`);
  if (opts.lateStartMs) process.stderr.write(`imds-emulator: accepting connections in ${opts.lateStartMs / 1000} s\n`);
  emu.listening.catch((e: unknown) => {
    process.stderr.write(`imds-emulator: ${(e as Error).message}\n`);
    process.exit(1);
  });
  const stop = (): void => void emu.close().then(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

if (import.meta.main) await main();
