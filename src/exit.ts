// Exit codes: the contract with systemd, rc scripts and admins.
export const EXIT = {
  ok: 0,
  /** At least one step failed; the others still ran. */
  failed: 1,
  /** Usage or configuration error. */
  usage: 2,
  /** The metadata service did not answer before the deadline. */
  unreachable: 3,
} as const;
