// The metadata client's protocol decisions, against a metadata service
// mocked with msw: which requests go out, in which order, with or without
// a token, and what comes back to the steps.
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { setupServer } from "msw/node";
import { http, HttpResponse, delay } from "msw";
import { connect } from "../src/imds/client.ts";
import { MetadataError, MetadataUnreachable, type Metadata } from "../src/imds/metadata.ts";
import { parseListing, parsePublicKeys, singleLine, badPath, displayText } from "../src/imds/values.ts";
import { backoffMs, BOOT, FAST_TRIES } from "../src/imds/backoff.ts";
import { Log } from "../src/log.ts";
import type { Config } from "../src/config.ts";

const BASE = "http://169.254.169.254";
const BASE6 = "http://[fd00:ec2::254]";

const server = setupServer();
/** Every request the client sent: "PUT api/token", "GET meta-data/x @tok-1" (token sent), with the origin when not BASE. */
let sent: string[] = [];
/** When each request started (ms, performance.now()). */
let sentAt: number[] = [];
let stderr: string[] = [];

beforeAll(() => {
  server.listen({ onUnhandledFrame: "error" });
  server.events.on("request:start", ({ request }) => {
    const u = new URL(request.url);
    const tok = request.headers.get("x-aws-ec2-metadata-token");
    const where = u.origin === BASE ? "" : u.origin + " ";
    sent.push(`${request.method} ${where}${u.pathname.replace(/^\/latest\//, "")}${tok ? ` @${tok}` : ""}`);
    sentAt.push(performance.now());
  });
});
afterEach(() => {
  server.resetHandlers();
  sent = [];
  sentAt = [];
  stderr = [];
});
afterAll(() => server.close());

function settings(over: Partial<Config["metadata"]> = {}): Config["metadata"] {
  return { urls: [BASE], imdsv2: "auto", timeout_ms: 300, deadline_s: 2, token_ttl_s: 21600, max_bytes: 1 << 20, ...over };
}
const log = () => new Log("debug", (line) => void stderr.push(line));

const VALUES: Record<string, string> = {
  "meta-data/instance-id": "i-0123456789abcdef0",
  "meta-data/local-hostname": "ip-10-0-0-1.ec2.internal\n",
  "meta-data/public-keys/": "0=alice\n1=bob",
  "meta-data/public-keys/0/openssh-key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOuZoArv alice\n",
};

/**
 * A metadata service: `put` decides the token request's fate, tokens
 * "tok-1", "tok-2"... are handed out, and a GET with a token that is not in
 * `valid` (or without one, when `required`) gets a 401.
 */
function service(opts: {
  origin?: string;
  put?: number | "hang" | "error";
  required?: boolean;
  values?: Record<string, string | Uint8Array>;
  valid?: Set<string>;
}) {
  const origin = opts.origin ?? BASE;
  const values = opts.values ?? VALUES;
  const valid = opts.valid ?? new Set<string>();
  let issued = 0;
  return [
    http.put(`${origin}/latest/api/token`, async ({ request }) => {
      if (opts.put === "hang") await delay("infinite");
      if (opts.put === "error") return HttpResponse.error();
      if (typeof opts.put === "number") return new HttpResponse(null, { status: opts.put });
      const ttl = Number(request.headers.get("x-aws-ec2-metadata-token-ttl-seconds"));
      if (!(ttl >= 1 && ttl <= 21600)) return new HttpResponse(null, { status: 400 });
      const token = `tok-${++issued}`;
      valid.add(token);
      return HttpResponse.text(token);
    }),
    http.get(`${origin}/latest/*`, ({ request }) => {
      const tok = request.headers.get("x-aws-ec2-metadata-token");
      if (tok !== null ? !valid.has(tok) : opts.required) return new HttpResponse(null, { status: 401 });
      const path = new URL(request.url).pathname.replace(/^\/latest\//, "");
      const v = values[path];
      return v === undefined ? new HttpResponse("Not Found", { status: 404 }) : new HttpResponse(v);
    }),
  ];
}

async function elapsed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await fn();
  return [r, performance.now() - t0];
}

describe("IMDSv2 session tokens", () => {
  it("asks for one token with the configured TTL and sends it on every GET", async () => {
    let ttl: string | null = null;
    server.use(http.put(`${BASE}/latest/api/token`, ({ request }) => void (ttl = request.headers.get("x-aws-ec2-metadata-token-ttl-seconds"))), ...service({}));
    const md = await connect(settings({ token_ttl_s: 120 }), log());
    expect(md.protocol).toBe("v2");
    expect(md.endpoint).toBe(BASE);
    expect(await md.value("meta-data/instance-id")).toBe("i-0123456789abcdef0");
    expect(await md.value("meta-data/local-hostname")).toBe("ip-10-0-0-1.ec2.internal");
    expect(await md.list("meta-data/public-keys/")).toEqual(["0=alice", "1=bob"]);
    expect(ttl).toBe("120");
    expect(sent).toEqual([
      "PUT api/token",
      "GET meta-data/instance-id @tok-1",
      "GET meta-data/local-hostname @tok-1",
      "GET meta-data/public-keys/ @tok-1",
    ]);
    expect(md.requests).toBe(4);
  });

  it("fetches each path once per run", async () => {
    server.use(...service({}));
    const md = await connect(settings(), log());
    await md.value("meta-data/instance-id");
    await md.value("meta-data/instance-id");
    await md.bytes("meta-data/instance-id");
    expect(await md.value("meta-data/nothing")).toBeNull();
    expect(await md.value("meta-data/nothing")).toBeNull();
    expect(sent).toEqual(["PUT api/token", "GET meta-data/instance-id @tok-1", "GET meta-data/nothing @tok-1"]);
  });

  it("gets a fresh token on a 401 and retries once", async () => {
    const valid = new Set<string>();
    server.use(...service({ valid }));
    const md = await connect(settings(), log());
    expect(await md.value("meta-data/instance-id")).toBe("i-0123456789abcdef0");
    valid.delete("tok-1"); // expired on the service's side
    expect(await md.value("meta-data/local-hostname")).toBe("ip-10-0-0-1.ec2.internal");
    expect(await md.list("meta-data/public-keys/")).toEqual(["0=alice", "1=bob"]);
    expect(sent).toEqual([
      "PUT api/token",
      "GET meta-data/instance-id @tok-1",
      "GET meta-data/local-hostname @tok-1",
      "PUT api/token",
      "GET meta-data/local-hostname @tok-2",
      "GET meta-data/public-keys/ @tok-2",
    ]);
  });

  it("does not loop when the fresh token is refused too", async () => {
    server.use(
      http.get(`${BASE}/latest/meta-data/instance-id`, () => new HttpResponse(null, { status: 401 })),
      ...service({}),
    );
    const md = await connect(settings(), log());
    await expect(md.value("meta-data/instance-id")).rejects.toThrow(/meta-data\/instance-id: HTTP 401/);
    expect(sent).toEqual(["PUT api/token", "GET meta-data/instance-id @tok-1", "PUT api/token", "GET meta-data/instance-id @tok-2"]);
  });

  it("renews a token before its TTL runs out", async () => {
    server.use(...service({}));
    const md = await connect(settings({ token_ttl_s: 1 }), log());
    await md.value("meta-data/instance-id");
    await new Promise((r) => setTimeout(r, 950)); // past the renewal point (TTL less a tenth)
    await md.value("meta-data/local-hostname");
    expect(sent).toEqual(["PUT api/token", "GET meta-data/instance-id @tok-1", "PUT api/token", "GET meta-data/local-hostname @tok-2"]);
  });

  it("refuses a malformed token instead of sending it as a header", async () => {
    server.use(http.put(`${BASE}/latest/api/token`, () => HttpResponse.text("tok with space\r\nX-Evil: 1")));
    await expect(connect(settings(), log())).rejects.toThrow(/api\/token: the service sent a malformed token/);
    expect(sent).toEqual(["PUT api/token"]);
  });
});

describe("imdsv2: auto falls back to v1", () => {
  for (const status of [403, 404, 405]) {
    it(`when the token request answers ${status}, with no extra request`, async () => {
      server.use(...service({ put: status }));
      const md = await connect(settings(), log());
      expect(md.protocol).toBe("v1");
      expect(await md.value("meta-data/instance-id")).toBe("i-0123456789abcdef0");
      expect(await md.value("meta-data/local-hostname")).toBe("ip-10-0-0-1.ec2.internal");
      expect(sent).toEqual(["PUT api/token", "GET meta-data/instance-id", "GET meta-data/local-hostname"]);
      expect(stderr.join("\n")).toMatch(new RegExp(`token request refused \\(HTTP ${status}\\); using IMDSv1`));
    });
  }

  it("when the token request gets no answer: costs one request timeout, and the probe's answer is reused", async () => {
    server.use(...service({ put: "hang" }));
    const [md, ms] = await elapsed(() => connect(settings({ timeout_ms: 300 }), log()));
    expect(md.protocol).toBe("v1");
    expect(ms).toBeGreaterThanOrEqual(290);
    expect(ms).toBeLessThan(300 + 250);
    expect(await md.value("meta-data/instance-id")).toBe("i-0123456789abcdef0");
    expect(sent).toEqual(["PUT api/token", "GET meta-data/instance-id"]);
    expect(stderr.join("\n")).toMatch(/no answer within 300 ms \(hop limit\?\); using IMDSv1/);
  });

  it("keeps waiting when the token request hangs but the service wants tokens (401 without one)", async () => {
    let puts = 0;
    server.use(
      http.put(`${BASE}/latest/api/token`, async () => {
        if (++puts === 1) await delay("infinite");
        return HttpResponse.text("tok-late");
      }),
      http.get(`${BASE}/latest/*`, ({ request }) =>
        request.headers.get("x-aws-ec2-metadata-token") === "tok-late" ? HttpResponse.text("i-1") : new HttpResponse(null, { status: 401 }),
      ),
    );
    const md = await connect(settings({ timeout_ms: 200 }), log());
    expect(md.protocol).toBe("v2");
    expect(await md.value("meta-data/instance-id")).toBe("i-1");
    expect(sent).toEqual(["PUT api/token", "GET meta-data/instance-id", "PUT api/token", "GET meta-data/instance-id @tok-late"]);
  });

  it("switches to tokens when a v1 GET is answered 401 later on", async () => {
    let putAnswers = [405, 200];
    const valid = new Set(["tok-x"]);
    server.use(
      http.put(`${BASE}/latest/api/token`, () => {
        const s = putAnswers.shift()!;
        return s === 200 ? HttpResponse.text("tok-x") : new HttpResponse(null, { status: s });
      }),
      http.get(`${BASE}/latest/*`, ({ request }) =>
        valid.has(request.headers.get("x-aws-ec2-metadata-token") ?? "") ? HttpResponse.text("v") : new HttpResponse(null, { status: 401 }),
      ),
    );
    const md = await connect(settings(), log());
    expect(md.protocol).toBe("v1");
    expect(await md.value("meta-data/instance-id")).toBe("v");
    expect(md.protocol).toBe("v2");
    expect(sent).toEqual(["PUT api/token", "GET meta-data/instance-id", "PUT api/token", "GET meta-data/instance-id @tok-x"]);
    putAnswers = [];
  });

  it("does not fall back on a connection error: that is a service not up yet", async () => {
    let puts = 0;
    server.use(
      http.put(`${BASE}/latest/api/token`, () => (++puts < 3 ? HttpResponse.error() : HttpResponse.text("tok-1"))),
      ...service({}),
    );
    const md = await connect(settings(), log());
    expect(md.protocol).toBe("v2");
    expect(sent).toEqual(["PUT api/token", "PUT api/token", "PUT api/token"]);
  });

  it("fails on an answer to the token request that means neither yes nor no", async () => {
    server.use(...service({ put: 400 }));
    await expect(connect(settings(), log())).rejects.toThrow(/api\/token: unexpected answer to the token request: HTTP 400/);
    expect(sent).toEqual(["PUT api/token"]);
  });
});

describe("imdsv2: required and off", () => {
  it("required: never sends a GET without a token, and fails when tokens are refused", async () => {
    server.use(...service({ put: 404 }));
    const err = await connect(settings({ imdsv2: "required" }), log()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MetadataError);
    expect((err as Error).message).toMatch(/token request refused \(HTTP 404\) and metadata.imdsv2 is required/);
    expect(sent).toEqual(["PUT api/token"]);
  });

  it("required: a token request that never answers is waited for until the deadline, without a v1 GET", async () => {
    server.use(...service({ put: "hang" }));
    const err = await connect(settings({ imdsv2: "required", timeout_ms: 200, deadline_s: 0.6 }), log()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MetadataUnreachable);
    expect((err as Error).message).toMatch(/http:\/\/169\.254\.169\.254 \(token request: no complete answer within 200 ms\)/);
    expect(sent.length).toBeGreaterThanOrEqual(2);
    expect(sent.every((s) => s === "PUT api/token")).toBe(true);
  });

  it("required: works with tokens", async () => {
    server.use(...service({ required: true }));
    const md = await connect(settings({ imdsv2: "required" }), log());
    expect(await md.value("meta-data/instance-id")).toBe("i-0123456789abcdef0");
    expect(sent).toEqual(["PUT api/token", "GET meta-data/instance-id @tok-1"]);
  });

  it("off: never asks for a token; the probe answers the first question", async () => {
    server.use(...service({}));
    const md = await connect(settings({ imdsv2: "off" }), log());
    expect(md.protocol).toBe("v1");
    expect(await md.value("meta-data/instance-id")).toBe("i-0123456789abcdef0");
    expect(await md.value("meta-data/local-hostname")).toBe("ip-10-0-0-1.ec2.internal");
    expect(sent).toEqual(["GET meta-data/instance-id", "GET meta-data/local-hostname"]);
  });

  it("off: a service that requires tokens is a clear error, not a wait", async () => {
    server.use(...service({ required: true }));
    await expect(connect(settings({ imdsv2: "off" }), log())).rejects.toThrow(/requires IMDSv2 tokens and metadata.imdsv2 is off/);
    expect(sent).toEqual(["GET meta-data/instance-id"]);
  });
});

describe("waiting for the service", () => {
  it("retries 5xx and 429 at boot, then uses the answer", async () => {
    const answers = [500, 503, 429];
    server.use(
      http.put(`${BASE}/latest/api/token`, () => {
        const s = answers.shift();
        return s ? new HttpResponse(null, { status: s }) : HttpResponse.text("tok-1");
      }),
      ...service({}),
    );
    const md = await connect(settings(), log());
    expect(md.protocol).toBe("v2");
    expect(sent).toEqual(["PUT api/token", "PUT api/token", "PUT api/token", "PUT api/token"]);
  });

  it("stops at the deadline and names each endpoint with its last error", async () => {
    server.use(
      http.put(`${BASE}/latest/api/token`, () => new HttpResponse(null, { status: 503 })),
      http.put(`${BASE6}/latest/api/token`, () => HttpResponse.error()),
    );
    const [err, ms] = await elapsed(() => connect(settings({ urls: [BASE, BASE6], deadline_s: 1 }), log()).catch((e: unknown) => e));
    expect(err).toBeInstanceOf(MetadataUnreachable);
    const e = err as MetadataUnreachable;
    expect(e.tried.map((t) => t.endpoint)).toEqual([BASE, BASE6]);
    expect(e.tried[0]!.error).toBe("token request: HTTP 503");
    expect(e.tried[1]!.error).toMatch(/^token request: /);
    expect(e.message).toMatch(/^metadata service unreachable after 1\.\d s; tried http:\/\/169\.254\.169\.254 \(token request: HTTP 503\), http:\/\/\[fd00:ec2::254\] \(token request: /);
    expect(ms).toBeGreaterThanOrEqual(1000);
    expect(ms).toBeLessThan(1000 + 300);
    // Exponential backoff: a handful of rounds in a second, not hundreds.
    const rounds = sent.filter((s) => s === "PUT api/token").length;
    expect(rounds).toBeGreaterThanOrEqual(4);
    expect(rounds).toBeLessThanOrEqual(9);
    // Both endpoints, in order, every round (the last round may end at the deadline after the first).
    expect(sent).toEqual(sent.map((_, i) => (i % 2 === 0 ? "PUT api/token" : `PUT ${BASE6} api/token`)));
    expect(sent.length).toBeGreaterThanOrEqual(2 * rounds - 1);
  });

  it("caps the wait between tries near one second", async () => {
    server.use(http.put(`${BASE}/latest/api/token`, () => new HttpResponse(null, { status: 503 })));
    await expect(connect(settings({ deadline_s: 3.5 }), log())).rejects.toBeInstanceOf(MetadataUnreachable);
    const gaps = sentAt.slice(1).map((t, i) => t - sentAt[i]!);
    expect(Math.max(...gaps)).toBeLessThan(1000 + 100);
    expect(Math.max(...gaps)).toBeGreaterThan(450); // it did back off
  });

  it("deadline 0 still tries every endpoint once", async () => {
    server.use(http.put(`${BASE}/latest/api/token`, () => new HttpResponse(null, { status: 503 })), http.put(`${BASE6}/latest/api/token`, () => new HttpResponse(null, { status: 503 })));
    await expect(connect(settings({ urls: [BASE, BASE6], deadline_s: 0 }), log())).rejects.toBeInstanceOf(MetadataUnreachable);
    expect(sent).toEqual(["PUT api/token", `PUT ${BASE6} api/token`]);
  });

  it("uses the first endpoint that answers for the whole run", async () => {
    server.use(http.put(`${BASE}/latest/api/token`, () => HttpResponse.error()), ...service({ origin: BASE6 }), ...service({}));
    const md = await connect(settings({ urls: [BASE, BASE6] }), log());
    expect(md.endpoint).toBe(BASE6);
    expect(await md.value("meta-data/instance-id")).toBe("i-0123456789abcdef0");
    expect(await md.value("meta-data/local-hostname")).toBe("ip-10-0-0-1.ec2.internal");
    expect(sent).toEqual(["PUT api/token", `PUT ${BASE6} api/token`, `GET ${BASE6} meta-data/instance-id @tok-1`, `GET ${BASE6} meta-data/local-hostname @tok-1`]);
  });

  it("after the service answered, a failing request gets a few fast retries, not the deadline", async () => {
    server.use(
      http.get(`${BASE}/latest/meta-data/local-hostname`, () => new HttpResponse(null, { status: 503 })),
      http.get(`${BASE}/latest/meta-data/public-keys/`, () => HttpResponse.error()),
      ...service({}),
    );
    const md = await connect(settings({ deadline_s: 60 }), log());
    const [err, ms] = await elapsed(() => md.value("meta-data/local-hostname").catch((e: unknown) => e));
    expect(err).toBeInstanceOf(MetadataError);
    expect((err as Error).message).toBe(`meta-data/local-hostname: no answer after ${FAST_TRIES} tries: HTTP 503`);
    expect(ms).toBeLessThan(1000);
    await expect(md.list("meta-data/public-keys/")).rejects.toThrow(/meta-data\/public-keys\/: no answer after 3 tries/);
    expect(sent).toEqual(["PUT api/token", ...Array(3).fill("GET meta-data/local-hostname @tok-1"), ...Array(3).fill("GET meta-data/public-keys/ @tok-1")]);
  });

  it("a 5xx after the service answered is retried and can succeed", async () => {
    let n = 0;
    server.use(
      http.get(`${BASE}/latest/meta-data/instance-id`, () => (++n === 1 ? new HttpResponse(null, { status: 429 }) : undefined)),
      ...service({}),
    );
    const md = await connect(settings(), log());
    expect(await md.value("meta-data/instance-id")).toBe("i-0123456789abcdef0");
    expect(sent).toEqual(["PUT api/token", "GET meta-data/instance-id @tok-1", "GET meta-data/instance-id @tok-1"]);
  });

  it("a stalled body is a timeout, retried, then an error", async () => {
    server.use(
      http.get(`${BASE}/latest/user-data`, () => {
        const body = new ReadableStream<Uint8Array>({
          start(c) {
            c.enqueue(new TextEncoder().encode("#!/bin/sh\n"));
          }, // and never more
        });
        return new HttpResponse(body, { headers: { "content-length": "1000" } });
      }),
      ...service({}),
    );
    const md = await connect(settings({ timeout_ms: 150 }), log());
    const [err, ms] = await elapsed(() => md.bytes("user-data").catch((e: unknown) => e));
    expect((err as Error).message).toBe("user-data: no answer after 3 tries: no complete answer within 150 ms");
    expect(ms).toBeGreaterThanOrEqual(3 * 150);
    expect(ms).toBeLessThan(3 * 150 + 600);
  });

  it("backoff: exponential from 50 ms, jittered between half and all of the step, capped at 1 s", () => {
    expect(backoffMs(0, BOOT, () => 1)).toBe(50);
    expect(backoffMs(0, BOOT, () => 0)).toBe(25);
    expect(backoffMs(3, BOOT, () => 1)).toBe(400);
    expect(backoffMs(10, BOOT, () => 1)).toBe(1000);
    expect(backoffMs(1000, BOOT, () => 0)).toBe(500);
  });
});

describe("answers", () => {
  it("404 is an answer: null, not retried; no user-data and no public keys are not errors", async () => {
    server.use(...service({}));
    const md = await connect(settings(), log());
    expect(await md.bytes("user-data")).toBeNull();
    expect(await md.list("meta-data/nothing/")).toBeNull();
    expect(sent).toEqual(["PUT api/token", "GET user-data @tok-1", "GET meta-data/nothing/ @tok-1"]);
  });

  it("user-data comes back as raw bytes", async () => {
    const raw = Uint8Array.from([0x1f, 0x8b, 0x08, 0x00, 0xff, 0x00, 0x0a]);
    server.use(...service({ values: { "meta-data/instance-id": "i-1", "user-data": raw } }));
    const md = await connect(settings(), log());
    expect([...(await md.bytes("user-data"))!]).toEqual([...raw]);
  });

  it("refuses redirects and sends nothing to where they point", async () => {
    let evil = 0;
    server.use(
      http.get("http://evil.example/*", () => void evil++),
      http.get(`${BASE}/latest/meta-data/instance-id`, () => new HttpResponse(null, { status: 301, headers: { location: "http://evil.example/x" } })),
      http.put(`${BASE}/latest/api/token`, () => new HttpResponse(null, { status: 307, headers: { location: "http://evil.example/token" } })),
    );
    await expect(connect(settings(), log())).rejects.toThrow(/api\/token: unexpected answer to the token request: HTTP 307 redirect to "http:\/\/evil.example\/token", not followed/);
    const md = await connect(settings({ imdsv2: "off" }), log()).catch((e: unknown) => e);
    expect((md as Error).message).toMatch(/meta-data\/instance-id: unexpected answer: HTTP 301 redirect/);
    expect(evil).toBe(0);
    expect(sent).toEqual(["PUT api/token", "GET meta-data/instance-id"]);
  });

  it("refuses paths that could leave /latest/ without sending anything", async () => {
    server.use(...service({}));
    const md = await connect(settings(), log());
    for (const p of ["../x", "meta-data/../../x", "/meta-data/x", "meta-data//x", "meta-data/%2e%2e/x", "meta-data/x?y=1", "meta-data/x#y", "http://evil/", "meta-data/\nx", "meta-data/ x"]) {
      await expect(md.value(p), p).rejects.toBeInstanceOf(MetadataError);
    }
    expect(sent).toEqual(["PUT api/token"]);
  });

  it("enforces max_bytes: a declared Content-Length over the cap is not read", async () => {
    server.use(http.get(`${BASE}/latest/user-data`, () => new HttpResponse("x".repeat(5000), { headers: { "content-length": "5000" } })), ...service({}));
    const md = await connect(settings({ max_bytes: 4096 }), log());
    await expect(md.bytes("user-data")).rejects.toThrow("user-data: unexpected answer: answer larger than 4096 bytes (metadata.max_bytes)");
    expect(sent.filter((s) => s.startsWith("GET user-data"))).toHaveLength(1); // not retried
  });

  it("enforces max_bytes while streaming: reading stops just past the cap", async () => {
    let pulled = 0;
    server.use(
      http.get(`${BASE}/latest/user-data`, () => {
        const body = new ReadableStream<Uint8Array>({
          pull(c) {
            pulled += 1024;
            c.enqueue(new Uint8Array(1024));
            if (pulled >= 10 << 20) c.close();
          },
        });
        return new HttpResponse(body);
      }),
      ...service({}),
    );
    const md = await connect(settings({ max_bytes: 4096 }), log());
    await expect(md.bytes("user-data")).rejects.toThrow(/larger than 4096 bytes/);
    // The mock's stream pipeline reads a little ahead; the client itself stops at the cap.
    expect(pulled).toBeLessThan(256 * 1024);
  });

  it("an exactly max_bytes answer is fine", async () => {
    server.use(http.get(`${BASE}/latest/user-data`, () => new HttpResponse("y".repeat(4096))), ...service({}));
    const md = await connect(settings({ max_bytes: 4096 }), log());
    expect((await md.bytes("user-data"))!.length).toBe(4096);
  });

  it("rejects hostile single-line values, naming the path", async () => {
    const values: Record<string, string | Uint8Array> = {
      "meta-data/instance-id": "i-1",
      "meta-data/a": "host\nname",
      "meta-data/b": "host\x00name",
      "meta-data/c": "x\n\n",
      "meta-data/d": "\x1b]0;pwned\x07",
      "meta-data/e": "a".repeat(9000),
      "meta-data/f": Uint8Array.from([0x68, 0xff, 0x69]),
      "meta-data/g": "ok\r\n",
    };
    server.use(...service({ values }));
    const md = await connect(settings(), log());
    await expect(md.value("meta-data/a")).rejects.toThrow("meta-data/a: more than one line where a single value is expected");
    await expect(md.value("meta-data/b")).rejects.toThrow("meta-data/b: control character 0x00 at offset 4");
    await expect(md.value("meta-data/c")).rejects.toThrow("meta-data/c: more than one line");
    await expect(md.value("meta-data/d")).rejects.toThrow("meta-data/d: control character 0x1b at offset 0");
    await expect(md.value("meta-data/e")).rejects.toThrow("meta-data/e: value longer than 8192 characters");
    await expect(md.value("meta-data/f")).rejects.toThrow("meta-data/f: not valid UTF-8");
    expect(await md.value("meta-data/g")).toBe("ok");
  });

  it("rejects a malformed listing as an error for that path", async () => {
    server.use(...service({ values: { "meta-data/instance-id": "i-1", "meta-data/x/": "a\n\nb", "meta-data/public-keys/": "0=alice\nbob" } }));
    const md = await connect(settings(), log());
    await expect(md.list("meta-data/x/")).rejects.toThrow("meta-data/x/: malformed listing: line 2: empty entry");
    const keys = await md.list("meta-data/public-keys/");
    expect(() => parsePublicKeys(keys!)).toThrow('meta-data/public-keys/: malformed public-keys listing: line 2: expected "N=name", got "bob"');
  });
});

describe("values", () => {
  const b = (s: string) => Buffer.from(s);

  it("singleLine strips exactly one trailing newline", () => {
    expect(singleLine("p", b("v\n"))).toBe("v");
    expect(singleLine("p", b("v"))).toBe("v");
    expect(singleLine("p", b(""))).toBe("");
    expect(() => singleLine("p", b("v\n\n"))).toThrow(MetadataError);
    expect(() => singleLine("p", b("a\u2028b"))).toThrow(/more than one line/);
    expect(() => singleLine("p", b("a\u0085b"))).toThrow(/control character 0x85/);
    expect(singleLine("p", b("a".repeat(8192)))).toHaveLength(8192);
  });

  it("parseListing: entries, '/' marks a directory, strict otherwise", () => {
    expect(parseListing("d/", b("ami-id\nplacement/\npublic-keys/\n"))).toEqual(["ami-id", "placement/", "public-keys/"]);
    expect(parseListing("d/", b(""))).toEqual([]);
    expect(parseListing("d/", b("\n"))).toEqual([]);
    expect(() => parseListing("d/", b("a\nb\n\n"))).toThrow("d/: malformed listing: line 3: empty entry");
    expect(() => parseListing("d/", b("a\na"))).toThrow("d/: malformed listing: line 2: duplicate entry");
    expect(() => parseListing("d/", b("a\tb"))).toThrow(/line 1: control character 0x09/);
    expect(() => parseListing("d/", b("x\n".repeat(1001).replace(/x/g, () => Math.random().toString(36))))).toThrow(/more than 1000 entries/);
    expect(() => parseListing("d/", b("a".repeat(600)))).toThrow(/longer than 512/);
  });

  it("parsePublicKeys: 'N=name' lines to index and name, sorted", () => {
    expect(parsePublicKeys(["1=bob key", "0=alice"])).toEqual([
      { index: 0, name: "alice" },
      { index: 1, name: "bob key" },
    ]);
    expect(parsePublicKeys([])).toEqual([]);
    for (const bad of [["alice"], ["=alice"], ["01=alice"], ["0="], ["x=alice"], ["0=a", "0=b"], ["0=a\u0000b"], ["99999=a"], [`0=${"n".repeat(256)}`]]) {
      expect(() => parsePublicKeys(bad), JSON.stringify(bad)).toThrow(MetadataError);
    }
  });

  it("badPath accepts EC2 paths and refuses anything else", () => {
    for (const ok of ["", "meta-data/", "meta-data/instance-id", "meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/local-ipv4s", "meta-data/iam/security-credentials/role+name@x=1,2", "user-data"])
      expect(badPath(ok), ok).toBeNull();
    for (const bad of ["/x", "a//b", "a/./b", "..", "a/%41", "a?b", "a#b", "a b", "a\\b", "x".repeat(1025)]) expect(badPath(bad), bad).not.toBeNull();
  });

  it("displayText lets tabs and newlines through and nothing else", () => {
    expect(displayText("p", b('{\n\t"a": 1\n}\n'))).toBe('{\n\t"a": 1\n}\n');
    expect(() => displayText("p", b("a\x1b[2Jb"))).toThrow(/control character 0x1b/);
  });
});

// The type of what connect returns is the steps' whole view of the service.
const _typecheck: (md: Metadata) => [string, "v1" | "v2", number] = (md) => [md.endpoint, md.protocol, md.requests];
void _typecheck;
