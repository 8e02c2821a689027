// What the boot steps and commands see of the metadata service. The client
// (client.ts) implements it; steps depend only on this.

export interface Metadata {
  /**
   * A single-line value under /latest/ (e.g. "meta-data/instance-id"): one
   * trailing newline stripped; NUL, other control characters and overlong
   * values rejected with a MetadataError naming the path. null on 404.
   */
  value(path: string): Promise<string | null>;
  /** A directory listing (entries; a trailing "/" marks a directory). null on 404. */
  list(path: string): Promise<string[] | null>;
  /** Raw bytes, at most metadata.max_bytes. null on 404. */
  bytes(path: string): Promise<Buffer | null>;
  /** Which endpoint answered and how: for logs and the metadata command. */
  readonly endpoint: string;
  readonly protocol: "v2" | "v1";
  /** HTTP requests made so far, token requests included. */
  readonly requests: number;
}

/** An answer that could not be used: bad value, malformed listing, HTTP error. */
export class MetadataError extends Error {
  readonly path: string;
  constructor(path: string, message: string) {
    super(`${path}: ${message}`);
    this.path = path;
  }
}

/** No endpoint answered before the deadline: exit code 3. */
export class MetadataUnreachable extends Error {
  readonly tried: { endpoint: string; error: string }[];
  readonly waitedMs: number;
  constructor(tried: { endpoint: string; error: string }[], waitedMs: number) {
    super(
      `metadata service unreachable after ${(waitedMs / 1000).toFixed(1)} s; tried ` +
        tried.map((t) => `${t.endpoint} (${t.error})`).join(", "),
    );
    this.tried = tried;
    this.waitedMs = waitedMs;
  }
}
