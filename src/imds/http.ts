// One HTTP request to the metadata service, bounded in time and size. The
// global fetch (so tests can intercept it) over an undici Agent of our own:
// keep-alive for the handful of requests of a run, a connect timeout, and
// no proxy from the environment. Never follows a redirect.
//
// The Agent alone, not undici's index: the index loads all of undici
// (its own fetch, WebSocket, caches, mocks), and that was a third of the
// bundle and about 35 ms and 4 MiB of every boot (see scripts/bench). The
// version is pinned exactly; a moved file fails the build, not a boot.
import Agent from "undici/lib/dispatcher/agent.js";

/** What one request came to. Never throws. */
export type Reply =
  /** The service answered, with a body of at most the size cap. */
  | { kind: "answer"; status: number; body: Buffer; location: string | null }
  /** No complete answer: connection error, timeout, body cut off. */
  | { kind: "failed"; error: string; timedOut: boolean }
  /** The answer was bigger than the cap; reading stopped there. */
  | { kind: "too-large"; status: number; limit: number };

// Node's fetch takes undici's dispatcher option; its RequestInit type does not say so.
type FetchInit = RequestInit & { dispatcher: Agent };

const NET_ERRORS: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset",
  ENETUNREACH: "network unreachable",
  EHOSTUNREACH: "host unreachable",
  EADDRNOTAVAIL: "address not available",
  UND_ERR_CONNECT_TIMEOUT: "connect timed out",
  UND_ERR_SOCKET: "connection closed before the answer was complete",
};

function describe(e: unknown): string {
  const cause = (e as { cause?: { code?: string; message?: string } })?.cause;
  const code = cause?.code;
  if (code && NET_ERRORS[code]) return NET_ERRORS[code]!;
  const msg = cause?.message || (e instanceof Error ? e.message : String(e));
  return code ? `${msg} (${code})` : msg;
}

export class Transport {
  /** Requests sent so far, answered or not. */
  requests = 0;
  readonly timeoutMs: number;
  readonly maxBytes: number;
  private readonly agent: Agent;

  constructor(timeoutMs: number, maxBytes: number) {
    this.timeoutMs = timeoutMs;
    this.maxBytes = maxBytes;
    this.agent = new Agent({
      connect: { timeout: timeoutMs },
      keepAliveTimeout: 10_000,
      // Backstops only: the abort timer in send() covers the whole request.
      headersTimeout: 2 * timeoutMs,
      bodyTimeout: 2 * timeoutMs,
    });
  }

  /**
   * Send one request. The timeout covers connecting, the headers and the
   * whole body; a body over `maxBytes` is not read past the cap.
   */
  async send(method: "GET" | "PUT", url: string, headers: Record<string, string>, maxBytes = this.maxBytes): Promise<Reply> {
    this.requests++;
    const abort = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      abort.abort();
    }, this.timeoutMs);
    try {
      const init: FetchInit = {
        method,
        // identity: the bytes as the service has them (user-data may itself be gzip).
        headers: { "user-agent": "imds-init", "accept-encoding": "identity", ...headers },
        redirect: "manual",
        signal: abort.signal,
        dispatcher: this.agent,
      };
      const res = await fetch(url, init);
      const declared = Number(res.headers.get("content-length") ?? NaN);
      if (declared > maxBytes) {
        await res.body?.cancel().catch(() => {});
        return { kind: "too-large", status: res.status, limit: maxBytes };
      }
      const chunks: Uint8Array[] = [];
      let size = 0;
      if (res.body) {
        const reader = res.body.getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          size += value.byteLength;
          if (size > maxBytes) {
            await reader.cancel().catch(() => {});
            return { kind: "too-large", status: res.status, limit: maxBytes };
          }
          chunks.push(value);
        }
      }
      return { kind: "answer", status: res.status, body: Buffer.concat(chunks, size), location: res.headers.get("location") };
    } catch (e) {
      if (timedOut) return { kind: "failed", error: `no complete answer within ${this.timeoutMs} ms`, timedOut: true };
      return { kind: "failed", error: describe(e), timedOut: false };
    } finally {
      clearTimeout(timer);
    }
  }
}
