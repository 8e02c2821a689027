// How long to wait before trying again. Exponential, so a service that is
// down costs few requests; capped near one second, so a service that comes
// up late is noticed at most about a second after it does; jittered, so a
// fleet booting at once does not knock in step.

export interface Backoff {
  /** First delay, before jitter. */
  baseMs: number;
  /** Largest delay, before jitter. */
  capMs: number;
}

/** Waiting for the service at boot. */
export const BOOT: Backoff = { baseMs: 50, capMs: 1000 };
/** Retrying one request once the service has answered. */
export const FAST: Backoff = { baseMs: 50, capMs: 200 };
/** Tries per request once the service has answered (the first included). */
export const FAST_TRIES = 3;

/** The delay before retry number `attempt` (0 for the first retry): between half and all of the step. */
export function backoffMs(attempt: number, b: Backoff, random: () => number = Math.random): number {
  const step = Math.min(b.capMs, b.baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(step / 2 + (random() * step) / 2);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}
