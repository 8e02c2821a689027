// The SSH wire format of a public key blob (RFC 4251 section 5): uint32
// length-prefixed strings and mpints, read strictly. Every malformation is
// a KeyError with a reason fit for a log line.

/** A public key (line or blob) that is not acceptable; the message says why. */
export class KeyError extends Error {}

// OpenSSH's own cap on a bignum (SSHBUF_MAX_BIGNUM): 16384 bits.
export const MAX_MPINT_BITS = 16384;

export class WireReader {
  private off = 0;
  private readonly buf: Buffer;

  constructor(buf: Buffer) {
    this.buf = buf;
  }

  /** A length-prefixed string; `what` names the field in messages. */
  bytes(what: string): Buffer {
    if (this.buf.length - this.off < 4) throw new KeyError(`key data ends before the ${what}`);
    const n = this.buf.readUInt32BE(this.off);
    if (n > this.buf.length - this.off - 4) throw new KeyError(`key data ends inside the ${what}`);
    const out = this.buf.subarray(this.off + 4, this.off + 4 + n);
    this.off += 4 + n;
    return out;
  }

  /**
   * An mpint: two's complement, big-endian, minimal length. Negative values
   * and unneeded leading zero bytes are malformed (RFC 4251 says MUST NOT),
   * and refusing them keeps the blob equal to what OpenSSH would serialise,
   * which is what its fingerprint hashes.
   */
  mpint(what: string): bigint {
    const b = this.bytes(what);
    if (b.length === 0) return 0n;
    if (b[0]! & 0x80) throw new KeyError(`the ${what} is negative`);
    if (b[0] === 0 && (b.length === 1 || !(b[1]! & 0x80))) throw new KeyError(`the ${what} has a needless leading zero byte`);
    if (b.length > MAX_MPINT_BITS / 8 + 1) throw new KeyError(`the ${what} is over ${MAX_MPINT_BITS} bits`);
    return BigInt("0x" + b.toString("hex"));
  }

  /** Refuse anything after the last field. */
  end(): void {
    const left = this.buf.length - this.off;
    if (left !== 0) throw new KeyError(`${left} byte${left === 1 ? "" : "s"} of trailing data after the key`);
  }
}

export function bitLength(n: bigint): number {
  return n === 0n ? 0 : n.toString(2).length;
}
