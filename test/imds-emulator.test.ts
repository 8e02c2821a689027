// The metadata client against the project's own emulator over loopback,
// with real sockets and real timeouts; and the emulator's own EC2 rules.
import { afterEach, describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startEmulator, type Emulator, type EmulatorOptions } from "../scripts/imds-emulator.ts";
import { connect } from "../src/imds/client.ts";
import { MetadataError, MetadataUnreachable } from "../src/imds/metadata.ts";
import { parsePublicKeys } from "../src/imds/values.ts";
import { Log } from "../src/log.ts";
import type { Config } from "../src/config.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const NODE = `${ROOT}node_modules/.bin/node`;
const TIMEOUT = 250;

let emu: Emulator | null = null;
afterEach(async () => {
  await emu?.close();
  emu = null;
});

async function start(opts: EmulatorOptions = {}): Promise<Emulator> {
  emu = await startEmulator(opts);
  return emu;
}

function settings(url: string, over: Partial<Config["metadata"]> = {}): Config["metadata"] {
  return { urls: [url], imdsv2: "auto", timeout_ms: TIMEOUT, deadline_s: 4, token_ttl_s: 21600, max_bytes: 1 << 20, ...over };
}
const quiet = () => new Log("fatal");

/** The request log as "METHOD path STATUS[ token][ fault]" lines. */
const trail = (e: Emulator) =>
  e.requests.map((r) => `${r.method} ${r.path.replace(/^\/latest\//, "")} ${r.status ?? "-"}${r.token ? " token" : ""}${r.fault ? ` ${r.fault}` : ""}`);

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await fn();
  return [r, performance.now() - t0];
}

/** What a boot asks, in the order the steps ask it. */
async function fullRun(url: string, over: Partial<Config["metadata"]> = {}) {
  const md = await connect(settings(url, over), quiet());
  const id = await md.value("meta-data/instance-id");
  const host = await md.value("meta-data/local-hostname");
  const keys = parsePublicKeys((await md.list("meta-data/public-keys/")) ?? []);
  const lines = [];
  for (const k of keys) lines.push(await md.value(`meta-data/public-keys/${k.index}/openssh-key`));
  const ud = await md.bytes("user-data");
  return { md, id, host, keys, lines, ud };
}

const FULL_V2 = [
  "PUT api/token 200",
  "GET meta-data/instance-id 200 token",
  "GET meta-data/local-hostname 200 token",
  "GET meta-data/public-keys/ 200 token",
  "GET meta-data/public-keys/0/openssh-key 200 token",
  "GET meta-data/public-keys/1/openssh-key 200 token",
  "GET user-data 200 token",
];

describe("client against the emulator", () => {
  it("a full run on the demo instance: 7 requests, one token", async () => {
    const e = await start();
    const r = await fullRun(e.url);
    expect(r.id).toBe("i-0abc4d2f6e8a91b37");
    expect(r.host).toBe("ip-172-31-16-127.eu-west-1.compute.internal");
    expect(r.keys).toEqual([
      { index: 0, name: "alice" },
      { index: 1, name: "deploy" },
    ]);
    expect(r.lines[0]).toMatch(/^ssh-ed25519 AAAA\S+ alice@laptop$/);
    expect(r.lines[1]).toMatch(/^ssh-rsa AAAA\S+ deploy@ci$/);
    expect(r.ud!.toString()).toMatch(/^#!\/bin\/sh\n/);
    expect(r.md.protocol).toBe("v2");
    expect(r.md.requests).toBe(7);
    expect(trail(e)).toEqual(FULL_V2);
    expect(e.tokensIssued).toBe(1);
  });

  it("late start: answers about when the service comes up", async () => {
    const e = await start({ lateStartMs: 1200 });
    const [md, ms] = await timed(() => connect(settings(e.url), quiet()));
    expect(md.protocol).toBe("v2");
    expect(ms).toBeGreaterThanOrEqual(1200);
    expect(ms).toBeLessThan(1200 + 1100); // backoff capped near 1 s
    expect(trail(e)).toEqual(["PUT api/token 200"]);
  });

  it("dropped token request: falls back to v1 in one request timeout", async () => {
    const e = await start({ dropPut: true });
    const [r, ms] = await timed(() => fullRun(e.url));
    expect(r.md.protocol).toBe("v1");
    expect(r.id).toBe("i-0abc4d2f6e8a91b37");
    expect(ms).toBeGreaterThanOrEqual(TIMEOUT);
    expect(ms).toBeLessThan(TIMEOUT + 200);
    expect(trail(e)).toEqual([
      "PUT api/token - dropped",
      "GET meta-data/instance-id 200",
      "GET meta-data/local-hostname 200",
      "GET meta-data/public-keys/ 200",
      "GET meta-data/public-keys/0/openssh-key 200",
      "GET meta-data/public-keys/1/openssh-key 200",
      "GET user-data 200",
    ]);
  });

  for (const status of [500, 503, 429]) {
    it(`a burst of ${status}s at boot is waited out`, async () => {
      const e = await start({ failFirst: 3, failStatus: status });
      const r = await fullRun(e.url);
      expect(r.md.protocol).toBe("v2");
      expect(trail(e)).toEqual([`PUT api/token ${status}`, `PUT api/token ${status}`, `PUT api/token ${status}`, ...FULL_V2]);
    });
  }

  it("v1-only service (token request 404, like OpenStack)", async () => {
    const e = await start({ mode: "v1-only" });
    const r = await fullRun(e.url);
    expect(r.md.protocol).toBe("v1");
    expect(r.lines).toHaveLength(2);
    expect(trail(e)[0]).toBe("PUT api/token 404");
    expect(trail(e).slice(1).every((l) => l.startsWith("GET ") && l.endsWith(" 200"))).toBe(true);
    expect(e.requests).toHaveLength(7);
  });

  for (const putStatus of [403, 405]) {
    it(`token request answered ${putStatus}: v1`, async () => {
      const e = await start({ putStatus });
      const md = await connect(settings(e.url), quiet());
      expect(md.protocol).toBe("v1");
      expect(await md.value("meta-data/instance-id")).toBe("i-0abc4d2f6e8a91b37");
      expect(trail(e)).toEqual([`PUT api/token ${putStatus}`, "GET meta-data/instance-id 200"]);
    });
  }

  it("v2-required service: every GET carries the token", async () => {
    const e = await start({ mode: "required" });
    const r = await fullRun(e.url, { imdsv2: "required" });
    expect(r.md.protocol).toBe("v2");
    expect(trail(e)).toEqual(FULL_V2);
  });

  it("v2-required service with imdsv2: off is a clear error", async () => {
    const e = await start({ mode: "required" });
    await expect(connect(settings(e.url, { imdsv2: "off" }), quiet())).rejects.toThrow(/requires IMDSv2 tokens and metadata.imdsv2 is off/);
    expect(trail(e)).toEqual(["GET meta-data/instance-id 401"]);
  });

  it("imdsv2: required against a v1-only service fails without a single GET", async () => {
    const e = await start({ mode: "v1-only" });
    await expect(connect(settings(e.url, { imdsv2: "required" }), quiet())).rejects.toBeInstanceOf(MetadataError);
    expect(trail(e)).toEqual(["PUT api/token 404"]);
  });

  it("a token that runs out mid-run (uses) is renewed once and the request retried", async () => {
    const e = await start({ tokenUses: 2 });
    const r = await fullRun(e.url);
    expect(r.lines).toHaveLength(2);
    expect(trail(e)).toEqual([
      "PUT api/token 200",
      "GET meta-data/instance-id 200 token",
      "GET meta-data/local-hostname 200 token",
      "GET meta-data/public-keys/ 401 token",
      "PUT api/token 200",
      "GET meta-data/public-keys/ 200 token",
      "GET meta-data/public-keys/0/openssh-key 200 token",
      "GET meta-data/public-keys/1/openssh-key 401 token",
      "PUT api/token 200",
      "GET meta-data/public-keys/1/openssh-key 200 token",
      "GET user-data 200 token",
    ]);
  });

  it("a token that expires mid-run (time) is renewed", async () => {
    const e = await start({ tokenTtlCapS: 0.3 });
    const md = await connect(settings(e.url), quiet());
    expect(await md.value("meta-data/instance-id")).toBe("i-0abc4d2f6e8a91b37");
    await new Promise((r) => setTimeout(r, 400));
    expect(await md.value("meta-data/local-hostname")).toBe("ip-172-31-16-127.eu-west-1.compute.internal");
    expect(trail(e)).toEqual([
      "PUT api/token 200",
      "GET meta-data/instance-id 200 token",
      "GET meta-data/local-hostname 401 token",
      "PUT api/token 200",
      "GET meta-data/local-hostname 200 token",
    ]);
  });

  it("latency under the timeout is fine", async () => {
    const e = await start({ latencyMs: 100 });
    const [r, ms] = await timed(() => fullRun(e.url));
    expect(r.md.requests).toBe(7);
    expect(ms).toBeGreaterThanOrEqual(700);
  });

  it("latency over the timeout at boot ends at the deadline as unreachable", async () => {
    const e = await start({ latencyMs: 400 });
    const [err, ms] = await timed(() => connect(settings(e.url, { timeout_ms: 150, deadline_s: 1 }), quiet()).catch((x: unknown) => x));
    expect(err).toBeInstanceOf(MetadataUnreachable);
    // The token request timed out, so v1 was tried in the same round: it timed out too.
    expect((err as Error).message).toContain(`${e.url} (token request: no complete answer within 150 ms; meta-data/instance-id: no complete answer within 150 ms)`);
    expect(ms).toBeLessThan(1000 + 2 * 150 + 100);
  });

  it("nothing listening: unreachable at the deadline, naming the endpoint and the error", async () => {
    const e = await start();
    const url = e.url;
    await e.close();
    emu = null;
    const [err, ms] = await timed(() => connect(settings(url, { deadline_s: 1 }), quiet()).catch((x: unknown) => x));
    expect(err).toBeInstanceOf(MetadataUnreachable);
    expect((err as Error).message).toMatch(new RegExp(`^metadata service unreachable after 1\\.\\d s; tried ${url.replace(/\./g, "\\.")} \\(token request: connection refused\\)$`));
    expect(ms).toBeGreaterThanOrEqual(1000);
    expect(ms).toBeLessThan(1300);
  });

  it("a body cut off mid-way is retried, then an error for that path", async () => {
    const e = await start({ faults: { "user-data": { kind: "cut" } } });
    const md = await connect(settings(e.url), quiet());
    await expect(md.bytes("user-data")).rejects.toThrow(/^user-data: no answer after 3 tries: /);
    expect(trail(e)).toEqual(["PUT api/token 200", "GET user-data 200 token cut", "GET user-data 200 token cut", "GET user-data 200 token cut"]);
    // The rest of the service still works on a fresh connection.
    expect(await md.value("meta-data/instance-id")).toBe("i-0abc4d2f6e8a91b37");
  });

  for (const chunked of [false, true]) {
    it(`a body over max_bytes (${chunked ? "chunked" : "Content-Length"}) is refused without reading it all`, async () => {
      const e = await start({ faults: { "user-data": { kind: "huge", bytes: 64 << 20, chunked } } });
      const md = await connect(settings(e.url, { max_bytes: 1 << 20 }), quiet());
      const [err, ms] = await timed(() => md.bytes("user-data").catch((x: unknown) => x));
      expect((err as Error).message).toBe("user-data: unexpected answer: answer larger than 1048576 bytes (metadata.max_bytes)");
      expect(ms).toBeLessThan(TIMEOUT); // 64 MiB was not read
      expect(trail(e)).toEqual(["PUT api/token 200", "GET user-data 200 token huge"]);
    });
  }

  it("a stalled body hits the request timeout on every try", async () => {
    const e = await start({ faults: { "user-data": { kind: "stall", afterBytes: 10 } } });
    const md = await connect(settings(e.url), quiet());
    const [err, ms] = await timed(() => md.bytes("user-data").catch((x: unknown) => x));
    expect((err as Error).message).toBe(`user-data: no answer after 3 tries: no complete answer within ${TIMEOUT} ms`);
    expect(ms).toBeGreaterThanOrEqual(3 * TIMEOUT);
    expect(ms).toBeLessThan(3 * TIMEOUT + 500);
  });

  it("a slow drip is cut by the timeout even though bytes keep coming", async () => {
    const e = await start({ faults: { "meta-data/local-hostname": { kind: "drip", intervalMs: 20 } } });
    const md = await connect(settings(e.url), quiet());
    const [err, ms] = await timed(() => md.value("meta-data/local-hostname").catch((x: unknown) => x));
    expect((err as Error).message).toBe(`meta-data/local-hostname: no answer after 3 tries: no complete answer within ${TIMEOUT} ms`);
    expect(ms).toBeLessThan(3 * TIMEOUT + 500);
  });

  it("hostile raw answers are errors for their path", async () => {
    const e = await start({
      data: {
        "meta-data": { "instance-id": "i-1", "local-hostname": "x" },
        raw: { "meta-data/local-hostname": "evil; rm -rf /\nsecond", "meta-data/public-keys/": "0=a\n\n1=b" },
      },
    });
    const md = await connect(settings(e.url), quiet());
    await expect(md.value("meta-data/local-hostname")).rejects.toThrow("meta-data/local-hostname: more than one line");
    await expect(md.list("meta-data/public-keys/")).rejects.toThrow("meta-data/public-keys/: malformed listing: line 2: empty entry");
  });
});

describe("the emulator's EC2 rules", () => {
  const put = (url: string, headers: Record<string, string> = {}) =>
    fetch(`${url}/latest/api/token`, { method: "PUT", headers });
  const get = (url: string, path: string, headers: Record<string, string> = {}) => fetch(`${url}/latest/${path}`, { headers });
  const TTL = "x-aws-ec2-metadata-token-ttl-seconds";

  it("token request: TTL 1..21600 required (400), X-Forwarded-For refused (403), TTL echoed", async () => {
    const e = await start();
    for (const ttl of [undefined, "0", "21601", "abc", "-5", "1.5", ""]) {
      const r = await put(e.url, ttl === undefined ? {} : { [TTL]: ttl });
      expect(r.status, `ttl ${ttl}`).toBe(400);
    }
    expect((await put(e.url, { [TTL]: "60", "x-forwarded-for": "10.0.0.1" })).status).toBe(403);
    for (const ttl of ["1", "21600"]) {
      const r = await put(e.url, { [TTL]: ttl });
      expect(r.status).toBe(200);
      expect(r.headers.get(TTL)).toBe(ttl);
      expect(await r.text()).toMatch(/^[A-Za-z0-9_=-]{40,}$/);
    }
    expect(e.tokensIssued).toBe(2);
  });

  it("optional mode: no token is fine, a bad token is 401, a good one 200", async () => {
    const e = await start();
    expect((await get(e.url, "meta-data/instance-id")).status).toBe(200);
    expect((await get(e.url, "meta-data/instance-id", { "x-aws-ec2-metadata-token": "forged" })).status).toBe(401);
    const token = await (await put(e.url, { [TTL]: "60" })).text();
    const r = await get(e.url, "meta-data/instance-id", { "x-aws-ec2-metadata-token": token });
    expect(r.status).toBe(200);
    expect(await r.text()).toBe("i-0abc4d2f6e8a91b37");
  });

  it("a token expires after its TTL", async () => {
    const e = await start();
    const token = await (await put(e.url, { [TTL]: "1" })).text();
    expect((await get(e.url, "meta-data/instance-id", { "x-aws-ec2-metadata-token": token })).status).toBe(200);
    await new Promise((r) => setTimeout(r, 1050));
    expect((await get(e.url, "meta-data/instance-id", { "x-aws-ec2-metadata-token": token })).status).toBe(401);
  });

  it("required mode: 401 without a token", async () => {
    const e = await start({ mode: "required" });
    expect((await get(e.url, "meta-data/instance-id")).status).toBe(401);
    const token = await (await put(e.url, { [TTL]: "60" })).text();
    expect((await get(e.url, "meta-data/instance-id", { "x-aws-ec2-metadata-token": token })).status).toBe(200);
  });

  it("v1-only mode: token request 404 (or as configured), token headers ignored", async () => {
    let e = await start({ mode: "v1-only" });
    expect((await put(e.url, { [TTL]: "60" })).status).toBe(404);
    expect((await get(e.url, "meta-data/instance-id", { "x-aws-ec2-metadata-token": "whatever" })).status).toBe(200);
    await e.close();
    e = await start({ mode: "v1-only", putStatus: 405 });
    expect((await put(e.url, { [TTL]: "60" })).status).toBe(405);
  });

  it("methods: GET for values, PUT only for the token", async () => {
    const e = await start();
    expect((await fetch(`${e.url}/latest/api/token`)).status).toBe(405);
    expect((await fetch(`${e.url}/latest/meta-data/instance-id`, { method: "POST" })).status).toBe(405);
    expect((await fetch(`${e.url}/latest/meta-data/instance-id`, { method: "PUT", headers: { [TTL]: "60" } })).status).toBe(405);
  });

  it("serves listings generated from the tree, keys in the EC2 layout, 404 for what is not there", async () => {
    const e = await start({ data: { "meta-data": { "instance-id": "i-9", placement: { "availability-zone": "az-1" }, "public-keys": [{ name: "k", "openssh-key": "ssh-ed25519 AAAA k" }] } } });
    const text = async (p: string) => {
      const r = await get(e.url, p);
      return `${r.status} ${await r.text()}`;
    };
    expect(await text("meta-data/")).toBe("200 instance-id\nplacement/\npublic-keys/");
    expect(await text("meta-data")).toBe("200 instance-id\nplacement/\npublic-keys/");
    expect(await text("meta-data/placement/")).toBe("200 availability-zone");
    expect(await text("meta-data/placement/availability-zone")).toBe("200 az-1");
    expect(await text("meta-data/public-keys/")).toBe("200 0=k");
    expect(await text("meta-data/public-keys/0/")).toBe("200 openssh-key");
    expect(await text("meta-data/public-keys/0/openssh-key")).toBe("200 ssh-ed25519 AAAA k");
    expect((await get(e.url, "meta-data/public-keys/1/openssh-key")).status).toBe(404);
    expect((await get(e.url, "meta-data/public-keys/0=k")).status).toBe(404);
    expect((await get(e.url, "meta-data/instance-id/")).status).toBe(404);
    expect((await get(e.url, "meta-data/constructor")).status).toBe(404);
    expect((await get(e.url, "user-data")).status).toBe(404);
    expect(await text("")).toBe("200 meta-data");
  });

  it("drops token requests without answering when told to", async () => {
    const e = await start({ dropPut: true });
    const err = await fetch(`${e.url}/latest/api/token`, { method: "PUT", headers: { [TTL]: "60" }, signal: AbortSignal.timeout(300) }).catch((x: unknown) => x);
    expect((err as Error).name).toBe("TimeoutError");
    expect(trail(e)).toEqual(["PUT api/token - dropped"]);
  });

  it("keeps a request log, and serves it on a control path outside /latest/", async () => {
    const e = await start({ failFirst: 1, failStatus: 429 });
    expect((await get(e.url, "meta-data/instance-id")).status).toBe(429);
    expect((await get(e.url, "meta-data/instance-id")).status).toBe(200);
    const log = (await (await fetch(`${e.url}/_emulator/requests`)).json()) as { count: number; requests: { status: number }[] };
    expect(log.count).toBe(2);
    expect(log.requests.map((r) => r.status)).toEqual([429, 200]);
    await fetch(`${e.url}/_emulator/reset`, { method: "POST" });
    expect(e.requests).toHaveLength(0);
  });

  it("runs from the command line and prints its URL first", async () => {
    const child = spawn(NODE, [`${ROOT}scripts/imds-emulator.ts`, "--mode", "required", "--verbose"], { stdio: ["ignore", "pipe", "pipe"] });
    try {
      const first = await new Promise<string>((resolve, reject) => {
        createInterface({ input: child.stdout! }).once("line", resolve);
        child.once("exit", (code) => reject(new Error(`emulator exited ${code}`)));
      });
      const m = /^listening on (http:\/\/127\.0\.0\.1:\d+)$/.exec(first);
      expect(m).not.toBeNull();
      const url = m![1]!;
      const stderr: string[] = [];
      createInterface({ input: child.stderr! }).on("line", (l) => stderr.push(l));
      expect((await get(url, "meta-data/instance-id")).status).toBe(401);
      const log = (await (await fetch(`${url}/_emulator/requests`)).json()) as { count: number };
      expect(log.count).toBe(1);
      await new Promise((r) => setTimeout(r, 50));
      expect(stderr).toEqual(["GET /latest/meta-data/instance-id 401 token=no"]);
    } finally {
      child.kill("SIGTERM");
    }
  });

  it("refuses a bad option with exit 2", async () => {
    const child = spawn(NODE, [`${ROOT}scripts/imds-emulator.ts`, "--mode", "sometimes"], { stdio: ["ignore", "pipe", "pipe"] });
    let err = "";
    child.stderr!.on("data", (d: Buffer) => (err += d));
    const code = await new Promise((r) => child.once("exit", r));
    expect(code).toBe(2);
    expect(err).toMatch(/--mode: expected optional, required or v1-only/);
  });
});

describe("imds-init metadata", () => {
  const run = (args: string[]) =>
    new Promise<{ code: number | null; out: Buffer; err: string }>((resolve) => {
      const child = spawn(NODE, [`${ROOT}src/main.ts`, "metadata", ...args], { stdio: ["ignore", "pipe", "pipe"] });
      const out: Buffer[] = [];
      let err = "";
      child.stdout!.on("data", (d: Buffer) => out.push(d));
      child.stderr!.on("data", (d: Buffer) => (err += d));
      child.once("close", (code) => resolve({ code, out: Buffer.concat(out), err }));
    });

  it("prints one value and says who answered how", async () => {
    const e = await start();
    const r = await run(["--metadata-url", e.url, "meta-data/instance-id"]);
    expect(r.code).toBe(0);
    expect(r.out.toString()).toBe("i-0abc4d2f6e8a91b37\n");
    expect(r.err).toBe(`imds-init: answered by ${e.url} (IMDSv2 token, 2 requests)\n`);
  });

  it("prints user-data as raw bytes", async () => {
    const raw = Buffer.from([0x1f, 0x8b, 0x08, 0x00, 0x00, 0x0a, 0xff]);
    const e = await start({ mode: "v1-only", data: { "meta-data": { "instance-id": "i-1" }, "user-data": raw } });
    const r = await run(["--metadata-url", e.url, "/latest/user-data"]);
    expect(r.code).toBe(0);
    expect(r.out.equals(raw)).toBe(true);
    expect(r.err).toMatch(/\(IMDSv1, 2 requests\)/);
  });

  it("prints the meta-data tree as YAML", async () => {
    const e = await start();
    const r = await run(["--metadata-url", e.url]);
    expect(r.code).toBe(0);
    const text = r.out.toString();
    expect(text).toContain("instance-id: i-0abc4d2f6e8a91b37\n");
    expect(text).toContain("placement:\n  availability-zone: eu-west-1a\n  region: eu-west-1\n");
    expect(text).toMatch(/public-keys:\n {2}0=alice:\n {4}openssh-key: ssh-ed25519 AAAA\S+ alice@laptop\n {2}1=deploy:\n/);
  });

  it("not found is exit 1, a bad path exit 2, no service exit 3", async () => {
    const e = await start();
    const nf = await run(["--metadata-url", e.url, "meta-data/nothing"]);
    expect(nf.code).toBe(1);
    expect(nf.err).toContain("imds-init: meta-data/nothing: not found (404)");
    const bad = await run(["--metadata-url", e.url, "meta-data/../../etc"]);
    expect(bad.code).toBe(2);
    const url = e.url;
    await e.close();
    emu = null;
    const dir = mkdtempSync(join(tmpdir(), "imds-test-"));
    writeFileSync(join(dir, "c.yaml"), "metadata:\n  deadline_s: 1\n  timeout_ms: 200\n");
    try {
      const down = await run(["--config", join(dir, "c.yaml"), "--metadata-url", url, "meta-data/instance-id"]);
      expect(down.code).toBe(3);
      expect(down.err).toContain(`tried ${url} (token request: connection refused)`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("refuses to print a value with terminal control characters", async () => {
    const e = await start({ data: { "meta-data": { "instance-id": "i-1", motd: "hi\x1b]0;owned\x07" } } });
    const r = await run(["--metadata-url", e.url, "meta-data/motd"]);
    expect(r.code).toBe(1);
    expect(r.out.length).toBe(0);
    expect(r.err).toContain("meta-data/motd: control character 0x1b at offset 2; not printed");
  });
});
