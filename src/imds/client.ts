// The metadata client: waits for the service at boot, settles on one
// endpoint and one protocol (IMDSv2 session token, or plain v1 where the
// service or the network does not allow tokens), then answers the steps'
// questions with a few fast retries each.
import type { Config } from "../config.ts";
import type { Log } from "../log.ts";
import { MetadataError, MetadataUnreachable, type Metadata } from "./metadata.ts";
import { Transport, type Reply } from "./http.ts";
import { BOOT, FAST, FAST_TRIES, backoffMs, sleep } from "./backoff.ts";
import { badPath, parseListing, singleLine } from "./values.ts";

type Settings = Config["metadata"];

const TOKEN_PATH = "api/token";
const TOKEN_MAX_BYTES = 4096;
// Probed when no token is used: every EC2-style service has it, and the
// boot steps ask for it first anyway, so the answer is kept, not wasted.
const PROBE_PATH = "meta-data/instance-id";
// Answers to a token request that mean "no tokens here": EC2 with
// X-Forwarded-For or tokens disabled (403), OpenStack and other v1-only
// services (404, 405).
const NO_TOKENS = [403, 404, 405];

function retryable(r: Reply): boolean {
  return r.kind === "failed" || (r.kind === "answer" && (r.status >= 500 || r.status === 429));
}

function show(r: Reply): string {
  if (r.kind === "failed") return r.error;
  if (r.kind === "too-large") return `answer larger than ${r.limit} bytes (metadata.max_bytes)`;
  if (r.status >= 300 && r.status < 400)
    return `HTTP ${r.status} redirect${r.location ? ` to ${JSON.stringify(r.location.slice(0, 100))}` : ""}, not followed`;
  return `HTTP ${r.status}`;
}

const statusOf = (r: Reply): number | null => (r.kind === "failed" ? null : r.status);

/** One endpoint of the service, and how to talk to it. */
class Session implements Metadata {
  readonly endpoint: string;
  private proto: "v2" | "v1" = "v1";
  private token: { value: string; renewAt: number } | null = null;
  // Every path is fetched at most once per run: the service's answers do
  // not change under a boot, and the probe's answer is reused this way.
  private readonly answers = new Map<string, Buffer | null>();
  private readonly origin: string;
  private readonly transport: Transport;
  private readonly settings: Settings;
  private readonly log: Log;

  constructor(endpoint: string, transport: Transport, settings: Settings, log: Log) {
    this.endpoint = endpoint.replace(/\/+$/, "");
    this.origin = new URL(endpoint).origin;
    this.transport = transport;
    this.settings = settings;
    this.log = log;
  }

  get protocol(): "v2" | "v1" {
    return this.proto;
  }

  get requests(): number {
    return this.transport.requests;
  }

  async value(path: string): Promise<string | null> {
    const body = await this.get(path);
    return body === null ? null : singleLine(path, body);
  }

  async list(path: string): Promise<string[] | null> {
    const body = await this.get(path);
    return body === null ? null : parseListing(path, body);
  }

  bytes(path: string): Promise<Buffer | null> {
    return this.get(path);
  }

  /**
   * Find out whether this endpoint answers and which protocol to use.
   * null: settled. A string: no usable answer yet, worth waiting for (why).
   * Throws MetadataError for an answer that waiting will not change.
   */
  async probe(): Promise<string | null> {
    const mode = this.settings.imdsv2;
    if (mode === "off") return this.probeV1("");
    const put = await this.requestToken();
    if (put.kind === "answer" && put.status === 200) {
      this.keepToken(put.body);
      this.proto = "v2";
      return null;
    }
    const timedOut = put.kind === "failed" && put.timedOut;
    if (mode === "required") {
      if (retryable(put)) return `token request: ${show(put)}`;
      throw new MetadataError(TOKEN_PATH, `token request refused (${show(put)}) and metadata.imdsv2 is required`);
    }
    if (put.kind === "answer" && NO_TOKENS.includes(put.status)) {
      this.log.info(`${this.endpoint}: token request refused (HTTP ${put.status}); using IMDSv1`);
      return null;
    }
    // A token request that connects but gets no answer is what EC2 does when
    // the answer would need more hops than the instance's hop limit: try v1
    // right away, so the fallback costs one request timeout, not the deadline.
    if (timedOut) {
      const why = await this.probeV1(`token request: ${show(put)}; `);
      if (why === null) this.log.info(`${this.endpoint}: token request got no answer within ${this.settings.timeout_ms} ms (hop limit?); using IMDSv1`);
      return why;
    }
    if (retryable(put)) return `token request: ${show(put)}`;
    throw new MetadataError(TOKEN_PATH, `unexpected answer to the token request: ${show(put)}`);
  }

  private async probeV1(before: string): Promise<string | null> {
    const r = await this.send("GET", PROBE_PATH);
    if (retryable(r)) return `${before}${PROBE_PATH}: ${show(r)}`;
    if (statusOf(r) === 401) {
      // The service wants tokens, so the token request was only slow: wait.
      if (this.settings.imdsv2 === "auto") return `${before}${PROBE_PATH}: HTTP 401 (tokens required)`;
      throw new MetadataError(PROBE_PATH, "HTTP 401: the service requires IMDSv2 tokens and metadata.imdsv2 is off");
    }
    this.keep(PROBE_PATH, r);
    this.proto = "v1";
    return null;
  }

  private async get(path: string): Promise<Buffer | null> {
    const bad = badPath(path);
    if (bad) throw new MetadataError(path, bad);
    const known = this.answers.get(path);
    if (known !== undefined) return known;
    let renewed = false;
    let last = "";
    for (let tries = 0; tries < FAST_TRIES; ) {
      let r: Reply;
      if (this.proto === "v2" && (!this.token || performance.now() >= this.token.renewAt)) {
        r = await this.requestToken();
        if (r.kind === "answer" && r.status === 200) {
          this.keepToken(r.body);
          continue;
        }
        if (!retryable(r)) throw new MetadataError(path, `token request refused: ${show(r)}`);
        last = `token request: ${show(r)}`;
      } else {
        r = await this.send("GET", path);
        if (statusOf(r) === 401 && !renewed && this.settings.imdsv2 !== "off") {
          // An expired token, or (after a v1 fallback) a service that now
          // wants one: get a fresh token and ask once more.
          renewed = true;
          if (this.proto === "v1") this.log.info(`${this.endpoint}: ${path}: HTTP 401 without a token; switching to IMDSv2`);
          this.proto = "v2";
          this.token = null;
          continue;
        }
        if (!retryable(r)) return this.keep(path, r);
        last = show(r);
      }
      if (++tries < FAST_TRIES) await sleep(backoffMs(tries - 1, FAST));
    }
    throw new MetadataError(path, `no answer after ${FAST_TRIES} tries: ${last}`);
  }

  /** A final answer for `path`: the body, null for 404, or a MetadataError. */
  private keep(path: string, r: Reply): Buffer | null {
    if (r.kind === "answer" && (r.status === 200 || r.status === 404)) {
      const body = r.status === 200 ? r.body : null;
      this.answers.set(path, body);
      return body;
    }
    if (statusOf(r) === 401) throw new MetadataError(path, `HTTP 401: the service requires IMDSv2 tokens${this.settings.imdsv2 === "off" ? " and metadata.imdsv2 is off" : ""}`);
    throw new MetadataError(path, `unexpected answer: ${show(r)}`);
  }

  private requestToken(): Promise<Reply> {
    return this.send("PUT", TOKEN_PATH, TOKEN_MAX_BYTES);
  }

  private keepToken(body: Buffer): void {
    const value = body.toString("latin1").replace(/\r?\n$/, "");
    // It goes back out as a header value: printable ASCII only.
    if (!/^[\x21-\x7e]{1,1024}$/.test(value)) throw new MetadataError(TOKEN_PATH, "the service sent a malformed token");
    const ttlMs = this.settings.token_ttl_s * 1000;
    this.token = { value, renewAt: performance.now() + ttlMs - Math.min(30_000, ttlMs / 10) };
  }

  private async send(method: "GET" | "PUT", path: string, maxBytes?: number): Promise<Reply> {
    const url = `${this.origin}/latest/${path}`;
    // Belt and braces: whatever the path, the request goes nowhere but here.
    const u = new URL(url);
    if (u.origin !== this.origin || u.pathname !== `/latest/${path}` || u.search || u.hash) throw new MetadataError(path, "not a metadata path");
    const headers: Record<string, string> =
      method === "PUT"
        ? { "x-aws-ec2-metadata-token-ttl-seconds": String(this.settings.token_ttl_s) }
        : this.proto === "v2" && this.token
          ? { "x-aws-ec2-metadata-token": this.token.value }
          : {};
    const r = await this.transport.send(method, url, headers, maxBytes);
    if (this.log.enabled("debug")) this.log.debug(`${method} ${this.endpoint}/latest/${path}: ${r.kind === "answer" ? `HTTP ${r.status}` : show(r)}`);
    return r;
  }
}

/**
 * Wait for the metadata service: try each endpoint in order, again and
 * again with backoff, until one answers or metadata.deadline_s passes
 * (MetadataUnreachable, naming each endpoint's last error). The endpoint
 * that answers first is used for the whole run.
 */
export async function connect(settings: Settings, log: Log): Promise<Metadata> {
  const transport = new Transport(settings.timeout_ms, settings.max_bytes);
  const started = performance.now();
  const deadline = started + settings.deadline_s * 1000;
  const last = new Map<string, string>();
  for (let attempt = 0; ; attempt++) {
    for (const endpoint of settings.urls) {
      // The first round tries every endpoint, whatever the deadline.
      if (attempt > 0 && performance.now() >= deadline) break;
      const session = new Session(endpoint, transport, settings, log);
      const why = await session.probe();
      if (why === null) {
        if (attempt > 0) log.info(`${session.endpoint} answered after ${((performance.now() - started) / 1000).toFixed(1)} s`);
        return session;
      }
      last.set(session.endpoint, why);
    }
    const left = deadline - performance.now();
    if (left <= 0) {
      throw new MetadataUnreachable(
        [...last].map(([endpoint, error]) => ({ endpoint, error })),
        performance.now() - started,
      );
    }
    if (attempt === 0) log.info(`waiting up to ${settings.deadline_s} s for the metadata service (${[...last.values()][0]})`);
    await sleep(Math.min(left, backoffMs(attempt, BOOT)));
  }
}
