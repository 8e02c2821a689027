// The fault suite, network and hostile-value side (issue 6): the built
// binary, run for real against the project's metadata emulator (its own
// process, real sockets) in scratch roots. The service is down, late,
// failing, refusing or dropping tokens, expiring tokens mid-run, cutting,
// bloating or stalling bodies; the values it serves are hostile (host
// names, key lines, user-data). Every case snapshots the whole root before
// and after (path -> type, mode, owner, sha256 or link target) and names
// exactly what may differ: what was there is still there, nothing else
// changed. Two cases run the binary with its default endpoints inside new
// UTS, network and mount namespaces (169.254.169.254 on their own loopback),
// once with --root and once with root "/" over private overlays of /etc,
// /root and /var, so the machine running the tests is never touched.
import { describe, it, expect, beforeAll, afterAll, vi } from "vitest";
import * as fs from "node:fs";
import * as net from "node:net";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { hostname as liveHostname } from "node:os";
import { join } from "node:path";
import { createGzip, gzipSync } from "node:zlib";
import { BINARY, requireBinary } from "./binary.ts";
import { EMULATOR, NODE, TEMPLATE_HOSTNAME, byPath, makeRoot, runAsync, snapshotTree, startEmulator, templateHostKeys, treeChanges, type Ran, type Scratch, type Snapshot } from "./scratch.ts";
import type { InstanceData, RequestRecord } from "../scripts/imds-emulator.ts";

// A short deadline keeps the suite fast: the service gets 2 s. A request gets
// the default 1 s: shorter, a loaded CI machine turns slow answers into
// timeouts. Lower time bounds are measured by this side (they cannot fail
// for a slow machine); upper bounds leave room for one.
const TIMEOUT_MS = 1000;
const DEADLINE_S = 2;
const CONFIG = `metadata:\n  deadline_s: ${DEADLINE_S}\n  timeout_ms: ${TIMEOUT_MS}\n`;
const ID = "i-0fa17ee7000000001";
const HOST = "node-1.net.internal";
const TAG = randomBytes(4).toString("hex");
// Written (chrooted: under ROOT) by any user-data that runs; never by one that must not.
const RAN = "ud-ran";

// ---------------------------------------------------------------- keys

function sshString(b: Buffer | string): Buffer {
  const body = Buffer.isBuffer(b) ? b : Buffer.from(b);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(body.length);
  return Buffer.concat([len, body]);
}

/** A fresh Ed25519 public key: its base64 blob. */
function ed25519(): string {
  const jwk = generateKeyPairSync("ed25519").publicKey.export({ format: "jwk" });
  return Buffer.concat([sshString("ssh-ed25519"), sshString(Buffer.from(jwk.x!, "base64url"))]).toString("base64");
}

const ALICE = ed25519();
const BOB = ed25519();
const CAROL = ed25519();
const MALLORY = ed25519();

function base(over: Partial<InstanceData> = {}, meta: Record<string, unknown> = {}): InstanceData {
  return {
    "meta-data": {
      "instance-id": ID,
      "local-hostname": HOST,
      "public-keys": [{ name: "alice", "openssh-key": `ssh-ed25519 ${ALICE} alice@laptop\n` }],
      ...meta,
    } as InstanceData["meta-data"],
    "user-data": `#!/bin/sh\n# SECRET-${TAG}\necho ran >/${RAN}\n`,
    ...over,
  };
}

// ---------------------------------------------------------------- running a case

const scratches: Scratch[] = [];

interface Case {
  s: Scratch;
  r: Ran;
  before: Snapshot;
  after: Snapshot;
  /** treeChanges(before, after). */
  changes: string[];
  requests: RequestRecord[];
  /** The state file, parsed (null when none was written). */
  state: { instance_id?: string; steps: Record<string, { result: string; summary?: string; data?: Record<string, unknown> }> } | null;
  /** The JSON log, as text. */
  log: string;
  read(path: string): string;
}

function finish(s: Scratch, r: Ran, before: Snapshot, requests: RequestRecord[]): Case {
  const after = snapshotTree(s.root);
  const read = (p: string): string => fs.readFileSync(join(s.root, p), "utf8");
  const stateFile = join(s.root, "var/lib/imds-init/state.json");
  const logFile = join(s.root, "var/log/imds-init.log");
  return {
    s,
    r,
    before,
    after,
    changes: treeChanges(before, after),
    requests,
    state: fs.existsSync(stateFile) ? JSON.parse(fs.readFileSync(stateFile, "utf8")) : null,
    log: fs.existsSync(logFile) ? fs.readFileSync(logFile, "utf8") : "",
    read,
  };
}

/** One run of `imds-init run` in a fresh scratch root against an emulator serving `data` with `emuArgs`. */
async function scenario(data: InstanceData, emuArgs: string[] = [], config = CONFIG): Promise<Case> {
  const s = makeRoot();
  scratches.push(s);
  const emu = await startEmulator(data, emuArgs);
  try {
    const cfg = s.config(config);
    const before = snapshotTree(s.root);
    const r = await runAsync(["run", "--root", s.root, "--config", cfg, "--metadata-url", emu.url]);
    return finish(s, r, before, await emu.requests());
  } finally {
    await emu.stop();
  }
}

/** A port on 127.0.0.1 that nothing listens on (it was free a moment ago). */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

// What a run always adds to a fresh root, and what each step changes.
const RUN = ["+ var/lib", "+ var/lib/imds-init", "+ var/lib/imds-init/state.json", "+ var/log/imds-init.log"];
// A run that learnt nothing: its log, and the (empty) state directory its run lock was in.
const LOG_ONLY = ["+ var/lib", "+ var/lib/imds-init", "+ var/log/imds-init.log"];
const HOSTNAME_CHANGE = ["~ etc/hostname"];
const KEYS_CHANGE = ["~ root/.ssh/authorized_keys"];
const SCRIPT_RAN = [`+ ${RAN}`, "+ var/log/imds-init-user-data.log"];

function expected(...groups: string[][]): string[] {
  return groups.flat().sort(byPath);
}

/** What every run must show whatever went wrong: the host key block on stdout, no raw control characters on the console. */
function expectConsole(c: Case): void {
  expect(c.r.stdout).toContain("ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----");
  for (const line of templateHostKeys().values()) expect(c.r.stdout).toContain(line + "\n");
  expect(c.r.stderr).not.toMatch(/[\x00-\x08\x0b-\x1f\x7f]/);
  expect(c.r.signal).toBeNull();
}

function expectHostnameSet(c: Case): void {
  expect(c.read("etc/hostname")).toBe(`${HOST}\n`);
}

function expectAliceInstalled(c: Case): void {
  expect(c.read("root/.ssh/authorized_keys")).toBe(`${c.s.adminLine}\nssh-ed25519 ${ALICE} alice@laptop\n`);
}

/** The state's result per step. */
/** The instance with two keys: alice (index 0) and bob (index 1). */
function aliceAndBob(): InstanceData {
  return base({}, {
    "public-keys": [
      { name: "alice", "openssh-key": `ssh-ed25519 ${ALICE} alice@laptop` },
      { name: "bob", "openssh-key": `ssh-ed25519 ${BOB} bob@ci` },
    ],
  });
}

function results(c: Case): Record<string, string> {
  return Object.fromEntries(Object.entries(c.state?.steps ?? {}).map(([k, v]) => [k, v.result]));
}

const ALL_OK = { hostname: "ok", "ssh-keys": "ok", "user-data": "ok", fingerprints: "ok", basesystem: "ok" };

// ---------------------------------------------------------------- the suite

const machineHostname = liveHostname();

// Most of a case is waiting (deadlines, timeouts, backoff) in processes of
// its own, each with its own root and emulator: run many at once.
vi.setConfig({ maxConcurrency: 8 });

beforeAll(() => {
  requireBinary();
  makeRoot().cleanup(); // builds the template (host keys) once, before the concurrent cases
});

afterAll(() => {
  for (const s of scratches) s.cleanup();
  // No case, whatever it did, may touch the machine running the tests.
  expect(liveHostname()).toBe(machineHostname);
});

describe.concurrent("metadata service faults", () => {
  it("down for the whole deadline: exit 3 after about the deadline, fingerprints still printed, each endpoint and its last error named, nothing but the log (and the empty state directory) written", async () => {
    const s = makeRoot();
    scratches.push(s);
    const [p1, p2] = [await closedPort(), await closedPort()];
    const cfg = s.config(`${CONFIG}  urls: ["http://127.0.0.1:${p1}", "http://127.0.0.1:${p2}"]\n`);
    const before = snapshotTree(s.root);
    const r = await runAsync(["run", "--root", s.root, "--config", cfg]);
    const c = finish(s, r, before, []);
    expect(r.code).toBe(3);
    expectConsole(c);
    const m = new RegExp(
      `metadata service unreachable after (\\d+\\.\\d) s; tried http://127\\.0\\.0\\.1:${p1} \\(token request: connection refused\\), http://127\\.0\\.0\\.1:${p2} \\(token request: connection refused\\)\n`,
    ).exec(r.stderr);
    expect(m, r.stderr).not.toBeNull();
    for (const step of ["hostname", "ssh-keys", "user-data", "basesystem"]) expect(r.stderr).toContain(`imds-init: ${step}: not run: metadata service unreachable\n`);
    expect(r.stderr).toContain("imds-init: fingerprints: printed 3 host key fingerprints\n");
    // Bounded by the deadline (the binary's own measure), not a request
    // timeout per try on top of it, nor the default 60 s.
    expect(Number(m![1])).toBeGreaterThanOrEqual(DEADLINE_S);
    expect(Number(m![1])).toBeLessThan(DEADLINE_S + 1);
    expect(r.ms).toBeGreaterThan(DEADLINE_S * 1000);
    expect(r.ms).toBeLessThan(DEADLINE_S * 1000 + 10_000);
    expect(c.changes).toEqual(LOG_ONLY);
  });

  it("answering but refusing every request without a token while token requests go unanswered: exit 3 at the deadline, saying why", async () => {
    const c = await scenario(base(), ["--mode", "required", "--drop-put"]);
    expect(c.r.code).toBe(3);
    expectConsole(c);
    expect(c.r.stderr).toContain(
      `(token request: no complete answer within ${TIMEOUT_MS} ms; meta-data/instance-id: HTTP 401 (tokens required))`,
    );
    const m = /metadata service unreachable after (\d+\.\d) s;/.exec(c.r.stderr);
    // A probe started just before the deadline may finish after it: a token request and one GET.
    expect(Number(m![1])).toBeLessThan(DEADLINE_S + (2 * TIMEOUT_MS) / 1000 + 0.5);
    expect(c.requests.every((q) => q.status !== 200)).toBe(true);
    expect(c.changes).toEqual(LOG_ONLY);
  });

  it("up late (3 s into an 8 s deadline): waits, then every step succeeds", async () => {
    const c = await scenario(base(), ["--late-start", "3"], CONFIG.replace(`deadline_s: ${DEADLINE_S}`, "deadline_s: 8"));
    expect(c.r.code).toBe(0);
    expectConsole(c);
    expect(c.r.stderr).toContain("imds-init: waiting up to 8 s for the metadata service (token request: connection refused)\n");
    expect(c.r.stderr).toMatch(/answered after \d+\.\d s\n/);
    expect(c.r.ms).toBeGreaterThan(1000);
    expect(results(c)).toEqual(ALL_OK);
    expectHostnameSet(c);
    expectAliceInstalled(c);
    expect(c.changes).toEqual(expected(RUN, HOSTNAME_CHANGE, KEYS_CHANGE, SCRIPT_RAN));
  });

  for (const status of [500, 429]) {
    it(`HTTP ${status} for the first 4 requests: retried with backoff, then every step succeeds`, async () => {
      const c = await scenario(base(), ["--fail-first", "4", "--fail-status", String(status)]);
      expect(c.r.code).toBe(0);
      expectConsole(c);
      expect(c.r.stderr).toContain(`waiting up to ${DEADLINE_S} s for the metadata service (token request: HTTP ${status})`);
      expect(c.requests.slice(0, 4).map((q) => `${q.method} ${q.status}`)).toEqual(Array(4).fill(`PUT ${status}`));
      expect(c.requests.slice(4).every((q) => q.status === 200)).toBe(true);
      expect(c.requests[4]).toMatchObject({ method: "PUT", status: 200 });
      expect(results(c)).toEqual(ALL_OK);
      expect(c.changes).toEqual(expected(RUN, HOSTNAME_CHANGE, KEYS_CHANGE, SCRIPT_RAN));
    });
  }

  it("HTTP 500 for ever on one path: that step fails after 3 tries, the others run, exit 1", async () => {
    const c = await scenario(base(), ["--status", "meta-data/local-hostname=500"]);
    expect(c.r.code).toBe(1);
    expectConsole(c);
    expect(c.r.stderr).toContain("imds-init: hostname: failed: meta-data/local-hostname: no answer after 3 tries: HTTP 500\n");
    expect(c.requests.filter((q) => q.path === "/latest/meta-data/local-hostname")).toHaveLength(3);
    expect(results(c)).toEqual({ ...ALL_OK, hostname: "failed" });
    expect(c.read("etc/hostname")).toBe(TEMPLATE_HOSTNAME);
    expectAliceInstalled(c);
    expect(c.changes).toEqual(expected(RUN, KEYS_CHANGE, SCRIPT_RAN));
  });

  it("HTTP 429 for ever on one key: that key is rejected by index, the others are installed, exit 1", async () => {
    const data = aliceAndBob();
    const c = await scenario(data, ["--status", "meta-data/public-keys/1/openssh-key=429"]);
    expect(c.r.code).toBe(1);
    expectConsole(c);
    expect(c.r.stderr).toContain('imds-init: ssh-keys: key 1 ("bob") rejected: meta-data/public-keys/1/openssh-key: no answer after 3 tries: HTTP 429\n');
    expectAliceInstalled(c);
    expect(results(c)).toEqual({ ...ALL_OK, "ssh-keys": "failed" });
    expect(c.changes).toEqual(expected(RUN, HOSTNAME_CHANGE, KEYS_CHANGE, SCRIPT_RAN));
  });

  for (const put of ["403", "404", "405"]) {
    it(`token request answered ${put}: falls back to IMDSv1 at once, every step succeeds`, async () => {
      const c = await scenario(base(), ["--put-status", put]);
      expect(c.r.code).toBe(0);
      expectConsole(c);
      expect(c.r.stderr).toContain(`token request refused (HTTP ${put}); using IMDSv1\n`);
      expect(c.r.stderr).toContain(`instance ${ID} via `);
      expect(c.r.stderr).toContain("(IMDSv1)");
      expect(c.requests.filter((q) => q.method === "PUT")).toHaveLength(1);
      expect(c.requests.filter((q) => q.method === "GET").every((q) => !q.token && q.status === 200)).toBe(true);
      // No timeout waited (a dropped request costs one).
      expect(c.requests[1]!.at - c.requests[0]!.at).toBeLessThan(TIMEOUT_MS);
      expect(results(c)).toEqual(ALL_OK);
      expect(c.changes).toEqual(expected(RUN, HOSTNAME_CHANGE, KEYS_CHANGE, SCRIPT_RAN));
    });
  }

  it("token request dropped (hop limit): falls back to IMDSv1 after one request timeout, every step succeeds", async () => {
    const c = await scenario(base(), ["--drop-put"]);
    expect(c.r.code).toBe(0);
    expectConsole(c);
    expect(c.r.stderr).toContain(`token request got no answer within ${TIMEOUT_MS} ms (hop limit?); using IMDSv1\n`);
    const [put, first] = c.requests;
    expect(put).toMatchObject({ method: "PUT", status: null, fault: "dropped" });
    expect(first).toMatchObject({ method: "GET", path: "/latest/meta-data/instance-id", token: false, status: 200 });
    // The fallback costs one request timeout, not a retry loop or the deadline.
    expect(c.r.ms).toBeGreaterThanOrEqual(TIMEOUT_MS);
    expect(first!.at - put!.at).toBeLessThan(TIMEOUT_MS + 700);
    expect(c.requests.filter((q) => q.method === "PUT")).toHaveLength(1);
    expect(results(c)).toEqual(ALL_OK);
    expect(c.changes).toEqual(expected(RUN, HOSTNAME_CHANGE, KEYS_CHANGE, SCRIPT_RAN));
  });

  it("401 mid-run (each token good for 2 requests, tokens required): a fresh token, the same request again, every step succeeds", async () => {
    const c = await scenario(base(), ["--mode", "required", "--token-uses", "2"]);
    expect(c.r.code).toBe(0);
    expectConsole(c);
    const seq = c.requests.map((q) => `${q.method} ${q.path.replace("/latest/", "")} ${q.status}`);
    const refused = seq.flatMap((line, i) => (line.endsWith(" 401") ? [i] : []));
    expect(refused.length).toBeGreaterThanOrEqual(2);
    for (const i of refused) {
      expect(seq[i + 1]).toBe("PUT api/token 200");
      expect(seq[i + 2]).toBe(seq[i]!.replace(/ 401$/, " 200"));
    }
    expect(results(c)).toEqual(ALL_OK);
    expectHostnameSet(c);
    expectAliceInstalled(c);
    expect(c.changes).toEqual(expected(RUN, HOSTNAME_CHANGE, KEYS_CHANGE, SCRIPT_RAN));
  });

  it("401 mid-run (tokens expire after 1 s, slow service): a fresh token, every step succeeds", async () => {
    const c = await scenario(base(), ["--mode", "required", "--token-ttl-cap", "1", "--latency", "200"]);
    expect(c.r.code).toBe(0);
    expectConsole(c);
    const i = c.requests.findIndex((q) => q.status === 401);
    expect(i).toBeGreaterThan(0);
    expect(c.requests[i + 1]).toMatchObject({ method: "PUT", status: 200 });
    expect(c.requests[i + 2]).toMatchObject({ path: c.requests[i]!.path, status: 200 });
    expect(results(c)).toEqual(ALL_OK);
    expect(c.changes).toEqual(expected(RUN, HOSTNAME_CHANGE, KEYS_CHANGE, SCRIPT_RAN));
  });

  it("user-data cut off mid-body: 3 tries, the step fails, nothing of it runs or is written, the others run, exit 1; the next boot runs it once", async () => {
    const c = await scenario(base(), ["--cut", "user-data"]);
    expect(c.r.code).toBe(1);
    expectConsole(c);
    expect(c.r.stderr).toContain("imds-init: user-data: failed: user-data: no answer after 3 tries: connection closed before the answer was complete\n");
    expect(c.requests.filter((q) => q.path === "/latest/user-data").map((q) => q.fault)).toEqual(["cut", "cut", "cut"]);
    expect(results(c)).toEqual({ ...ALL_OK, "user-data": "failed" });
    expectHostnameSet(c);
    expectAliceInstalled(c);
    expect(c.changes).toEqual(expected(RUN, HOSTNAME_CHANGE, KEYS_CHANGE));

    // It never started, so it is still due: the next boot (a healthy
    // service) runs it, and only it; a third boot does nothing.
    const emu = await startEmulator(base());
    try {
      const args = ["run", "--root", c.s.root, "--config", c.s.config(CONFIG), "--metadata-url", emu.url];
      const r2 = await runAsync(args);
      expect(r2.code, r2.stderr).toBe(0);
      expect(r2.stderr).toMatch(/^imds-init: user-data: script exited 0 /m);
      expect(r2.stderr).toMatch(/^imds-init: hostname: already done for /m);
      const r3 = await runAsync(args);
      expect(r3.code, r3.stderr).toBe(0);
      expect(r3.stderr).toMatch(/^imds-init: user-data: already done for /m);
    } finally {
      await emu.stop();
    }
    expect(fs.readFileSync(join(c.s.root, RAN), "utf8")).toBe("ran\n");
    const log = fs.readFileSync(join(c.s.root, "var/log/imds-init-user-data.log"), "utf8");
    expect(log.match(/^=== imds-init user-data: /gm)).toHaveLength(1);
  });

  it("a key cut off mid-body: that key rejected by index, nothing half-written, exit 1", async () => {
    const data = aliceAndBob();
    const c = await scenario(data, ["--cut", "meta-data/public-keys/0/openssh-key"]);
    expect(c.r.code).toBe(1);
    expectConsole(c);
    expect(c.r.stderr).toContain('key 0 ("alice") rejected: meta-data/public-keys/0/openssh-key: no answer after 3 tries: connection closed before the answer was complete');
    expect(c.read("root/.ssh/authorized_keys")).toBe(`${c.s.adminLine}\nssh-ed25519 ${BOB} bob@ci\n`);
    expect(results(c)).toEqual({ ...ALL_OK, "ssh-keys": "failed" });
    expect(c.changes).toEqual(expected(RUN, HOSTNAME_CHANGE, KEYS_CHANGE, SCRIPT_RAN));
  });

  it("instance-id cut off mid-body: no step that needs metadata runs, fingerprints still printed, exit 1, nothing but the log (and the empty state directory) written", async () => {
    const c = await scenario(base(), ["--cut", "meta-data/instance-id"]);
    expect(c.r.code).toBe(1);
    expectConsole(c);
    expect(c.r.stderr).toContain("imds-init: meta-data/instance-id: no answer after 3 tries: connection closed before the answer was complete\n");
    for (const step of ["hostname", "ssh-keys", "user-data", "basesystem"]) expect(c.r.stderr).toContain(`imds-init: ${step}: not run: no instance-id\n`);
    expect(c.changes).toEqual(LOG_ONLY);
  });

  it("user-data over the size cap, with Content-Length: refused without reading it, not run, exit 1", async () => {
    const c = await scenario(base(), ["--huge", "user-data=2000000"]);
    expect(c.r.code).toBe(1);
    expectConsole(c);
    expect(c.r.stderr).toContain("imds-init: user-data: failed: user-data: unexpected answer: answer larger than 1048576 bytes (metadata.max_bytes)\n");
    // Not worth retrying: one request.
    expect(c.requests.filter((q) => q.path === "/latest/user-data")).toHaveLength(1);
    expect(results(c)).toEqual({ ...ALL_OK, "user-data": "failed" });
    expect(c.changes).toEqual(expected(RUN, HOSTNAME_CHANGE, KEYS_CHANGE));
  });

  it("a 16 GiB chunked host name over a smaller metadata.max_bytes: reading stops at the cap, the step fails, /etc/hostname untouched, exit 1", async () => {
    // 16 GiB cannot be read within a request timeout: "larger than" (not a
    // timeout) shows the reading stopped at the cap.
    const c = await scenario(base(), ["--huge-chunked", `meta-data/local-hostname=${2 ** 34}`], `${CONFIG}  max_bytes: 65536\n`);
    expect(c.r.code).toBe(1);
    expectConsole(c);
    expect(c.r.stderr).toContain("imds-init: hostname: failed: meta-data/local-hostname: unexpected answer: answer larger than 65536 bytes (metadata.max_bytes)\n");
    expect(c.read("etc/hostname")).toBe(TEMPLATE_HOSTNAME);
    expect(results(c)).toEqual({ ...ALL_OK, hostname: "failed" });
    expect(c.changes).toEqual(expected(RUN, KEYS_CHANGE, SCRIPT_RAN));
  });

  it("a stalled body (headers, then nothing): each try ends at the request timeout, the step fails, the others run, exit 1", async () => {
    const c = await scenario(base(), ["--stall", "meta-data/local-hostname"]);
    expect(c.r.code).toBe(1);
    expectConsole(c);
    expect(c.r.stderr).toContain(`imds-init: hostname: failed: meta-data/local-hostname: no answer after 3 tries: no complete answer within ${TIMEOUT_MS} ms\n`);
    const tries = c.requests.filter((q) => q.path === "/latest/meta-data/local-hostname");
    expect(tries).toHaveLength(3);
    // Three timeouts in a row, then on to the next step.
    expect(c.r.ms).toBeGreaterThanOrEqual(3 * TIMEOUT_MS);
    const next = c.requests[c.requests.indexOf(tries[2]!) + 1]!;
    expect(next.path).toBe("/latest/meta-data/public-keys/");
    expect(next.at - tries[0]!.at).toBeLessThan(3 * TIMEOUT_MS + 2000);
    expect(c.read("etc/hostname")).toBe(TEMPLATE_HOSTNAME);
    expect(results(c)).toEqual({ ...ALL_OK, hostname: "failed" });
    expect(c.changes).toEqual(expected(RUN, KEYS_CHANGE, SCRIPT_RAN));
  });

  it("a slow drip (one byte every 50 ms) of user-data: the request timeout covers the whole body, not each byte; not run, exit 1", async () => {
    const c = await scenario(base(), ["--drip", "user-data=50"]);
    expect(c.r.code).toBe(1);
    expectConsole(c);
    expect(c.r.stderr).toContain(`imds-init: user-data: failed: user-data: no answer after 3 tries: no complete answer within ${TIMEOUT_MS} ms\n`);
    const tries = c.requests.filter((q) => q.path === "/latest/user-data");
    expect(tries.map((q) => q.fault)).toEqual(["drip", "drip", "drip"]);
    expect(c.r.ms).toBeGreaterThanOrEqual(3 * TIMEOUT_MS);
    expect(tries[2]!.at - tries[0]!.at).toBeLessThan(2 * TIMEOUT_MS + 2000);
    expect(results(c)).toEqual({ ...ALL_OK, "user-data": "failed" });
    expect(c.changes).toEqual(expected(RUN, HOSTNAME_CHANGE, KEYS_CHANGE));
  });
});

// ---------------------------------------------------------------- hostile values

const PWNED = `/tmp/imds-pwned-${TAG}`;

describe.concurrent("hostile host names: refused, /etc/hostname untouched, no side effect, the other steps run, exit 1", () => {
  const cases: [string, string, string][] = [
    ["command substitution", `$(touch ${PWNED}-1)`, "it has characters other than letters, digits, '-' and '.'"],
    ["backticks", `\`touch ${PWNED}-2\`.example.com`, "it has characters other than letters, digits, '-' and '.'"],
    ["a command after ;", `node-1;touch ${PWNED}-3`, "it has characters other than letters, digits, '-' and '.'"],
    ["a pipe and &&", `node-1|touch ${PWNED}-4&&touch ${PWNED}-5`, "it has characters other than letters, digits, '-' and '.'"],
    ["spaces", "node 1.example.com", "it has characters other than letters, digits, '-' and '.'"],
    ["300 characters", "a".repeat(300), "it is 300 characters long, over 253"],
    ["a 64-character label", `${"b".repeat(64)}.example.com`, "it has a label of 64 characters, over 63"],
    ["non-ASCII", "hôte.example.com", "it has characters other than letters, digits, '-' and '.'"],
    ["an option for a hostname(1) that is not used", "--file=/etc/shadow", "it has characters other than letters, digits, '-' and '.'"],
    ["an empty label", "node..example.com", "it has an empty label"],
  ];
  for (const [what, value, why] of cases) {
    it(what, async () => {
      const c = await scenario(base({}, { "local-hostname": value }));
      expect(c.r.code).toBe(1);
      expectConsole(c);
      expect(c.r.stderr).toMatch(new RegExp(`^imds-init: hostname: failed: meta-data/local-hostname is not a valid host name \\(${why.replace(/[.()]/g, "\\$&")}\\): ".*"(\\.\\.\\. \\(\\d+ characters\\))?; nothing changed$`, "m"));
      expect(c.read("etc/hostname")).toBe(TEMPLATE_HOSTNAME);
      expect(results(c)).toEqual({ ...ALL_OK, hostname: "failed" });
      expect(c.changes).toEqual(expected(RUN, KEYS_CHANGE, SCRIPT_RAN));
      for (let i = 1; i <= 5; i++) {
        expect(fs.existsSync(`${PWNED}-${i}`)).toBe(false);
        expect(fs.existsSync(join(c.s.root, `${PWNED}-${i}`))).toBe(false);
      }
    });
  }

  const unreadable: [string, string, string][] = [
    ["two lines", `${HOST}\nevil.example.com`, "meta-data/local-hostname: more than one line where a single value is expected"],
    ["a terminal escape", `\x1b]0;owned\x07${HOST}`, "meta-data/local-hostname: control character 0x1b at offset 0"],
    ["a NUL", `${HOST}\0evil`, `meta-data/local-hostname: control character 0x00 at offset ${HOST.length}`],
  ];
  for (const [what, value, message] of unreadable) {
    it(what, async () => {
      const c = await scenario(base({}, { "local-hostname": value }));
      expect(c.r.code).toBe(1);
      expectConsole(c);
      expect(c.r.stderr).toContain(`imds-init: hostname: failed: ${message}\n`);
      expect(c.r.stderr).not.toContain("evil");
      expect(c.read("etc/hostname")).toBe(TEMPLATE_HOSTNAME);
      expect(results(c)).toEqual({ ...ALL_OK, hostname: "failed" });
      expect(c.changes).toEqual(expected(RUN, KEYS_CHANGE, SCRIPT_RAN));
    });
  }
});

describe.concurrent("hostile key lines", () => {
  it("each bad key is rejected by its index, the valid ones are installed after the admin's line, exit 1", async () => {
    const data = base({}, {
      "public-keys": [
        // 0: valid, under a hostile key-pair name (shown escaped, never run)
        { name: `alice$(touch ${PWNED}-k)`, "openssh-key": `ssh-ed25519 ${ALICE} alice@laptop\n` },
        // 1: two lines in one value: the second would be a key of its own
        { name: "two", "openssh-key": `ssh-ed25519 ${CAROL} carol\nssh-ed25519 ${MALLORY} mallory` },
        // 2: authorized_keys options from the network: a forced command
        { name: "opts", "openssh-key": `command="touch ${PWNED}-o",no-pty ssh-ed25519 ${MALLORY} mallory` },
        // 3: not base64
        { name: "b64", "openssh-key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI!!!!not+base64 mallory" },
        // 4: an Ed25519 blob under an RSA label
        { name: "mixed", "openssh-key": `ssh-rsa ${MALLORY} mallory` },
        // 5: valid, CRLF line end
        { name: "bob", "openssh-key": `ssh-ed25519 ${BOB} bob@ci\r\n` },
        // 6: a terminal escape in the comment
        { name: "esc", "openssh-key": `ssh-ed25519 ${CAROL} carol\x1b[2J` },
        // 7: alice again, another comment: installed once
        { name: "again", "openssh-key": `ssh-ed25519 ${ALICE} alice@desktop` },
        // 8: base64 of a truncated blob
        { name: "short", "openssh-key": `ssh-ed25519 ${Buffer.from(MALLORY, "base64").subarray(0, 40).toString("base64")} mallory` },
      ],
    });
    const c = await scenario(data);
    expect(c.r.code).toBe(1);
    expectConsole(c);
    const rejected: [number, string][] = [
      [1, "the line has a line break at offset"],
      [2, 'options or other text before the key type are not allowed (the line starts with "command=\\"touch'],
      [3, "the key data is not valid base64"],
      [4, 'the line says ssh-rsa but the key data is of type "ssh-ed25519"'],
      [6, "the line has a control character (U+001B)"],
      [8, "key data ends inside the Ed25519 public key"],
    ];
    const lines = c.r.stderr.split("\n");
    for (const [i, why] of rejected) {
      const line = lines.find((l) => l.startsWith(`imds-init: ssh-keys: key ${i} (`));
      expect(line).toMatch(/^imds-init: ssh-keys: key \d+ \("[a-z0-9]+"\) rejected: /);
      expect(line).toContain(why);
    }
    expect(c.r.stderr).toContain(`imds-init: ssh-keys: installed 2 keys for root; key 1 rejected`);
    expect(c.r.stderr).not.toMatch(/key (0|5|7) \(.*rejected/);
    // Exactly what was there, then the two good keys; nothing of mallory or carol.
    expect(c.read("root/.ssh/authorized_keys")).toBe(`${c.s.adminLine}\nssh-ed25519 ${ALICE} alice@laptop\nssh-ed25519 ${BOB} bob@ci\n`);
    expect(c.state!.steps["ssh-keys"]).toMatchObject({ result: "failed", data: { rejected: 6 } });
    expect(results(c)).toEqual({ ...ALL_OK, "ssh-keys": "failed" });
    expect(c.changes).toEqual(expected(RUN, HOSTNAME_CHANGE, KEYS_CHANGE, SCRIPT_RAN));
    expect(fs.existsSync(`${PWNED}-k`)).toBe(false);
    expect(fs.existsSync(`${PWNED}-o`)).toBe(false);
  });

  it("a malformed public-keys listing (an index twice): no key installed, authorized_keys untouched, exit 1", async () => {
    const data = base({ raw: { "meta-data/public-keys/": "0=alice\n0=mallory\n" } });
    const c = await scenario(data);
    expect(c.r.code).toBe(1);
    expectConsole(c);
    expect(c.r.stderr).toContain("imds-init: ssh-keys: failed: meta-data/public-keys/: malformed public-keys listing: index 0 appears twice\n");
    expect(c.read("root/.ssh/authorized_keys")).toBe(`${c.s.adminLine}\n`);
    expect(results(c)).toEqual({ ...ALL_OK, "ssh-keys": "failed" });
    expect(c.changes).toEqual(expected(RUN, HOSTNAME_CHANGE, SCRIPT_RAN));
  });
});

// ---------------------------------------------------------------- hostile user-data

/** gzip of `head` followed by `zeros` bytes of zeros, streamed (never held whole). */
async function gzipStream(head: string, zeros: number): Promise<Buffer> {
  const gz = createGzip({ level: 9 });
  const out: Buffer[] = [];
  gz.on("data", (b: Buffer) => out.push(b));
  const done = new Promise((resolve) => gz.once("end", resolve));
  gz.write(head);
  const chunk = Buffer.alloc(1 << 20);
  for (let left = zeros; left > 0; left -= chunk.length) {
    if (!gz.write(chunk.subarray(0, Math.min(left, chunk.length)))) await new Promise((resolve) => gz.once("drain", resolve));
  }
  gz.end();
  await done;
  return Buffer.concat(out);
}

const SECRET = `SECRET-${TAG}`;
const SCRIPT = `#!/bin/sh\n# ${SECRET}\necho ran >/${RAN}\n`;

describe.concurrent("hostile user-data: the right outcome each, never run unless #!, nothing written outside the expected files", () => {
  interface UdCase {
    what: string;
    body: () => Promise<Buffer> | Buffer;
    code: number;
    result: "ok" | "failed";
    /** In the step's console line. */
    summary: string | RegExp;
    /** The script ran (and so the user-data log exists). */
    ran?: boolean;
    /** The user-data log was written (a start was attempted). */
    logged?: boolean;
  }
  const udCases: UdCase[] = [
    {
      what: "a gzip bomb (128 MiB of zeros after a #! line, 128 KiB on the wire): refused at the cap, not run",
      body: () => gzipStream(SCRIPT, 128 << 20),
      code: 1,
      result: "failed",
      summary: "failed: user-data is gzip that expands past 1048576 bytes (metadata.max_bytes): refused, not run",
    },
    { what: "a gzipped #! script (the control): inflated and run", body: () => gzipSync(SCRIPT), code: 0, result: "ok", summary: "script exited 0 after", ran: true },
    {
      what: "gzip cut short: not run",
      body: () => gzipSync(SCRIPT).subarray(0, 20),
      code: 1,
      result: "failed",
      summary: "failed: user-data starts like gzip but does not decompress",
    },
    { what: "gzip inside gzip: ignored", body: () => gzipSync(gzipSync(SCRIPT)), code: 0, result: "ok", summary: "ignored user-data: gzip inside gzip is not supported (only #! scripts are run)" },
    {
      what: "binary junk: ignored",
      body: () => Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x00, 0x01]), randomBytes(4096), Buffer.from(SCRIPT)]),
      code: 0,
      result: "ok",
      summary: "ignored user-data: binary data (starts 0x7f 0x45 0x4c 0x46) is not supported (only #! scripts are run)",
    },
    {
      what: "#cloud-config: ignored",
      body: () => Buffer.from(`#cloud-config\nruncmd:\n  - [sh, -c, "echo ran >/${RAN}"]\npassword: ${SECRET}\n`),
      code: 0,
      result: "ok",
      summary: "ignored user-data: #cloud-config is not supported (only #! scripts are run)",
    },
    {
      what: "shell commands without #!: ignored, never run",
      body: () => Buffer.from(`echo ran >/${RAN}\n# ${SECRET}\n`),
      code: 0,
      result: "ok",
      summary: "ignored user-data: text without a #! line is not a script (only #! scripts are run)",
    },
    {
      what: "a #! after a blank line: ignored, never run",
      body: () => Buffer.from(`\n${SCRIPT}`),
      code: 0,
      result: "ok",
      summary: "ignored user-data: its #! is not at the very start (leading blank lines or spaces): not a script (only #! scripts are run)",
    },
    {
      what: "MIME multipart: ignored",
      body: () => Buffer.from(`Content-Type: multipart/mixed; boundary="b"\nMIME-Version: 1.0\n\n--b\nContent-Type: text/x-shellscript\n\n${SCRIPT}--b--\n`),
      code: 0,
      result: "ok",
      summary: "ignored user-data: MIME multipart is not supported (only #! scripts are run)",
    },
    {
      what: "a #! to a missing interpreter: fails, saying so",
      body: () => Buffer.from(`#!/usr/bin/no-such-interpreter-${TAG}\necho ran >/${RAN}\n`),
      code: 1,
      result: "failed",
      summary: new RegExp(`: script exited 127 after .* \\(chroot could not start it\\? check that /usr/bin/no-such-interpreter-${TAG} exists and is executable in `),
      logged: true,
    },
    {
      what: "a #! line with a CRLF end: fails, naming the carriage return",
      body: () => Buffer.from(SCRIPT.replace(/\n/g, "\r\n")),
      code: 1,
      result: "failed",
      summary: "its #! line ends in a carriage return (CRLF line endings)",
      logged: true,
    },
  ];

  for (const u of udCases) {
    it(u.what, async () => {
      const body = await u.body();
      const c = await scenario(base({ "user-data": null, "user-data-base64": body.toString("base64") }));
      expect(c.r.code).toBe(u.code);
      expectConsole(c);
      const line = c.r.stderr.split("\n").find((l) => l.startsWith("imds-init: user-data: "));
      if (typeof u.summary === "string") expect(line).toContain(u.summary);
      else expect(line).toMatch(u.summary);
      expect(results(c)).toEqual({ ...ALL_OK, "user-data": u.result });
      expect(fs.existsSync(join(c.s.root, RAN))).toBe(u.ran === true);
      const udLog = u.ran || u.logged ? ["+ var/log/imds-init-user-data.log"] : [];
      expect(c.changes).toEqual(expected(RUN, HOSTNAME_CHANGE, KEYS_CHANGE, u.ran ? [`+ ${RAN}`] : [], udLog));
      // user-data is never logged, whatever it is.
      for (const text of [c.r.stdout, c.r.stderr, c.log, c.read("var/lib/imds-init/state.json")]) expect(text).not.toContain(SECRET);
    });
  }
});

// ---------------------------------------------------------------- default endpoints, in namespaces

/** Run `script` (sh -eu, with args) in new UTS, network and mount namespaces; the mount namespace is private. */
function inNamespaces(script: string, args: string[]): Promise<Ran> {
  return runAsync(["--uts", "--net", "--mount", "--propagation", "private", "sh", "-euc", script, "sh", ...args], {
    binary: "/usr/bin/unshare",
    timeoutMs: 25_000,
  });
}

// Loopback up, 169.254.169.254 on it, a known UTS host name, the emulator on
// port 80 as on EC2; waits until it listens. $1: the scratch directory (out
// files), $2: node, $3: the emulator, $4: its data file.
const NS_SETUP = `
ip link set lo up
ip addr add 169.254.169.254/32 dev lo
hostname ns-before.invalid
"$2" "$3" --host 169.254.169.254 --port 80 --data "$4" >"$1/emu.out" 2>"$1/emu.err" &
emu=$!
n=0
until grep -qs '^listening on http://169.254.169.254:80' "$1/emu.out"; do
  n=$((n + 1)); [ "$n" -lt 200 ] || { echo "the emulator did not start" >&2; exit 90; }
  sleep 0.05
done
`;
const NS_FINISH = `
hostname >"$1/hostname.after"
"$2" -e 'fetch("http://169.254.169.254/_emulator/requests").then((r) => r.text()).then((t) => process.stdout.write(t))' >"$1/requests.json"
kill "$emu"
`;

describe.concurrent("default endpoints (169.254.169.254:80) in private namespaces", () => {
  it("--root SCRATCH without --metadata-url: every step succeeds and the namespace's live host name is not changed", async () => {
    const s = makeRoot();
    scratches.push(s);
    const dataFile = join(s.dir, "data.json");
    fs.writeFileSync(dataFile, JSON.stringify(base()));
    const before = snapshotTree(s.root);
    const ns = await inNamespaces(
      `${NS_SETUP}
rc=0; "$5" run --root "$6" >"$1/run.out" 2>"$1/run.err" || rc=$?
echo "$rc" >"$1/run.code"
${NS_FINISH}`,
      [s.dir, NODE, EMULATOR, dataFile, BINARY, s.root],
    );
    expect(ns.stderr).toBe("");
    expect(ns.code).toBe(0);
    const out = (f: string): string => fs.readFileSync(join(s.dir, f), "utf8");
    const c = finish(s, { code: Number(out("run.code")), signal: null, stdout: out("run.out"), stderr: out("run.err"), ms: ns.ms }, before, JSON.parse(out("requests.json")).requests);
    expect(c.r.code).toBe(0);
    expectConsole(c);
    expect(c.r.stderr).toContain(`imds-init: instance ${ID} via http://169.254.169.254 (IMDSv2 token)\n`);
    expect(c.requests[0]).toMatchObject({ method: "PUT", path: "/latest/api/token", status: 200 });
    expect(out("hostname.after")).toBe("ns-before.invalid\n");
    expect(c.r.stderr).toContain(`imds-init: hostname: set to ${HOST} (/etc/hostname)\n`);
    expectHostnameSet(c);
    expectAliceInstalled(c);
    expect(results(c)).toEqual(ALL_OK);
    expect(c.changes).toEqual(expected(RUN, HOSTNAME_CHANGE, KEYS_CHANGE, SCRIPT_RAN));
  });

  it('root "/" over private overlays of /etc, /root and /var: the namespace\'s live host name, /etc/hostname and root\'s keys change there, the machine\'s do not', async () => {
    const s = makeRoot();
    scratches.push(s);
    const dataFile = join(s.dir, "data.json");
    // Not chrooted with root "/": the script sees the namespace's /proc and /var.
    fs.writeFileSync(dataFile, JSON.stringify(base({ "user-data": "#!/bin/sh\ncat /proc/sys/kernel/hostname >/var/lib/ud-ran\n" })));
    // basesystem would run this machine's rpm against "/": not here.
    const cfg = s.config("basesystem:\n  enabled: false\n");
    fs.mkdirSync(join(s.dir, "ns"));
    const watched = ["/etc/hostname", "/etc/passwd", "/root/.ssh", "/var/lib/imds-init", "/var/log/imds-init.log", "/var/log/imds-init-user-data.log", "/var/lib/ud-ran", "/etc/ssh"];
    const look = (): string[] => watched.map((p) => {
      const st = fs.lstatSync(p, { throwIfNoEntry: false });
      return st ? `${p} ${st.ino} ${st.mtimeMs} ${st.size}` : `${p} missing`;
    });
    const machine = look();
    const ns = await inNamespaces(
      `# Private copies-on-write of everything a run on "/" may write; stop before running if any is not ours.
mount -t tmpfs imds-ns-scratch "$1/ns"
for d in etc root var; do
  mkdir "$1/ns/$d" "$1/ns/$d-work"
  mount -t overlay "imds-ns-$d" -o "lowerdir=/$d,upperdir=$1/ns/$d,workdir=$1/ns/$d-work" "/$d"
  [ "$(findmnt -n -o SOURCE --mountpoint "/$d")" = "imds-ns-$d" ] || { echo "/$d is not the private overlay" >&2; exit 91; }
done
mkdir -p /etc/ssh
cp "$6"/etc/ssh/ssh_host_*_key.pub /etc/ssh/
${NS_SETUP}
rc=0; "$5" run --config "$7" >"$1/run.out" 2>"$1/run.err" || rc=$?
echo "$rc" >"$1/run.code"
cat /etc/hostname >"$1/etc-hostname.after"
cat /root/.ssh/authorized_keys >"$1/authorized_keys.after"
cat /var/lib/ud-ran >"$1/ud-ran.after"
cat /var/lib/imds-init/state.json >"$1/state.after"
${NS_FINISH}`,
      [s.dir, NODE, EMULATOR, dataFile, BINARY, s.root, cfg],
    );
    expect(ns.stderr).toBe("");
    expect(ns.code).toBe(0);
    const out = (f: string): string => fs.readFileSync(join(s.dir, f), "utf8");
    const run = out("run.err");
    expect(out("run.code")).toBe("0\n");
    expect(run).toContain(`imds-init: instance ${ID} via http://169.254.169.254 (IMDSv2 token)\n`);
    expect(run).toContain(`imds-init: hostname: set to ${HOST} (/etc/hostname, kernel)\n`);
    expect(out("hostname.after")).toBe(`${HOST}\n`);
    expect(out("etc-hostname.after")).toBe(`${HOST}\n`);
    expect(out("ud-ran.after")).toBe(`${HOST}\n`);
    expect(out("authorized_keys.after")).toContain(`ssh-ed25519 ${ALICE} alice@laptop\n`);
    for (const line of templateHostKeys().values()) expect(out("run.out")).toContain(line + "\n");
    const state = JSON.parse(out("state.after")) as { steps: Record<string, { result: string }> };
    expect(Object.fromEntries(Object.entries(state.steps).map(([k, v]) => [k, v.result]))).toEqual({ hostname: "ok", "ssh-keys": "ok", "user-data": "ok", fingerprints: "ok" });
    // The machine: same files, same inodes, same times; same host name.
    expect(look()).toEqual(machine);
    expect(liveHostname()).toBe(machineHostname);
  });
});
