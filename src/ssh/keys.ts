// OpenSSH public keys: a line "TYPE BASE64 [COMMENT]" parsed strictly, and
// the fingerprint line `ssh-keygen -l` prints for it, computed natively.
//
// Decisions:
// - Only the key types of the list below. Certificates, webauthn keys and
//   anything else are refused: imds-init installs plain keys.
// - Strict where OpenSSH is lenient, so that hostile or damaged keys never
//   reach authorized_keys: canonical base64 (padding, no stray bits),
//   minimal mpints, no trailing data in the blob, ECDSA points on their
//   curve, RSA moduli of 1024-16384 bits with an odd exponent, DSA with a
//   160-bit q (the only size ssh-dss signatures can carry) and p of
//   1024-3072 bits, security-key application strings of printable ASCII.
//   Every key ssh-keygen makes passes; because the blob is then exactly
//   what OpenSSH would serialise, its SHA-256 is OpenSSH's fingerprint.
// - The comment is everything after the blanks that follow the base64, as
//   ssh-keygen sees it (trailing blanks and inner tabs kept). Control
//   characters, line breaks and bidi overrides are refused anywhere in the
//   line, since comments end up on consoles and in logs. One difference
//   from ssh-keygen follows: a CRLF line end is a line end here, while
//   ssh-keygen keeps the CR in the comment and prints it.
import { createHash, createPublicKey } from "node:crypto";
import { shown } from "../steps/step.ts";
import { KeyError, WireReader, bitLength } from "./wire.ts";

export { KeyError } from "./wire.ts";

/** Key types and the label ssh-keygen -l prints for each. */
const LABELS = {
  "ssh-ed25519": "ED25519",
  "ssh-rsa": "RSA",
  "ecdsa-sha2-nistp256": "ECDSA",
  "ecdsa-sha2-nistp384": "ECDSA",
  "ecdsa-sha2-nistp521": "ECDSA",
  "sk-ssh-ed25519@openssh.com": "ED25519-SK",
  "sk-ecdsa-sha2-nistp256@openssh.com": "ECDSA-SK",
  "ssh-dss": "DSA",
} as const;

export type KeyType = keyof typeof LABELS;
export const KEY_TYPES = Object.keys(LABELS) as KeyType[];

export function isKeyType(s: string): s is KeyType {
  return Object.hasOwn(LABELS, s);
}

const CURVES = {
  nistp256: { jwk: "P-256", bytes: 32, bits: 256 },
  nistp384: { jwk: "P-384", bytes: 48, bits: 384 },
  nistp521: { jwk: "P-521", bytes: 66, bits: 521 },
} as const;

// A whole key line: an RSA-16384 key with a long comment is under 4 KiB.
export const MAX_LINE_CHARS = 16384;
export const MAX_COMMENT_CHARS = 1024;
const MAX_APPLICATION_BYTES = 256;

// C0 controls but tab, DEL, C1 controls, Unicode line breaks and the bidi
// controls that can make a console show something other than the bytes.
const BAD_CHAR = /[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/;

export interface PublicKey {
  type: KeyType;
  /** The blob, decoded; its first field is `type`. */
  blob: Buffer;
  /** The blob as written in the line (canonical base64). */
  base64: string;
  /** As ssh-keygen sees it: the rest of the line after the blanks that follow the base64; null when empty. */
  comment: string | null;
  /** What ssh-keygen -l prints as the size: modulus, p, curve or 256. */
  bits: number;
  /** The line as given (without its line terminator). */
  text: string;
}

function uncompressedPoint(r: WireReader, curve: keyof typeof CURVES): void {
  const c = CURVES[curve];
  const name = r.bytes("curve name").toString("latin1");
  if (name !== curve) throw new KeyError(`the key data names curve ${shown(name, 20)}, not ${curve}`);
  const point = r.bytes("public point");
  if (point.length !== 1 + 2 * c.bytes || point[0] !== 0x04) throw new KeyError(`the public point is not an uncompressed ${curve} point`);
  const x = point.subarray(1, 1 + c.bytes);
  const y = point.subarray(1 + c.bytes);
  try {
    createPublicKey({ key: { kty: "EC", crv: c.jwk, x: x.toString("base64url"), y: y.toString("base64url") }, format: "jwk" });
  } catch {
    throw new KeyError(`the public point is not on curve ${curve}`);
  }
  // OpenSSH's own check (sshkey_ec_validate_public): coordinates far below
  // the group order's size are a sign of a crafted key, and it refuses them.
  const half = Math.floor(c.bits / 2);
  if (bitLength(BigInt("0x" + x.toString("hex"))) <= half || bitLength(BigInt("0x" + y.toString("hex"))) <= half)
    throw new KeyError("the public point has an implausibly small coordinate");
}

function application(r: WireReader): void {
  const app = r.bytes("application string");
  if (app.length === 0 || app.length > MAX_APPLICATION_BYTES || !/^[\x20-\x7e]+$/.test(app.toString("latin1")))
    throw new KeyError(`the application string is not 1-${MAX_APPLICATION_BYTES} printable ASCII characters`);
}

/** Check a blob against its declared type; returns the size ssh-keygen -l prints. */
export function checkBlob(type: KeyType, blob: Buffer): number {
  const r = new WireReader(blob);
  const inner = r.bytes("key type").toString("latin1");
  if (inner !== type) throw new KeyError(`the line says ${type} but the key data is of type ${shown(inner, 40)}`);
  let bits: number;
  switch (type) {
    case "ssh-rsa": {
      const e = r.mpint("RSA exponent");
      const n = r.mpint("RSA modulus");
      bits = bitLength(n);
      if (bits < 1024 || bits > 16384) throw new KeyError(`the RSA modulus has ${bits} bits, outside 1024-16384`);
      if (e < 3n || e % 2n === 0n || e >= n) throw new KeyError("the RSA exponent is not an odd number from 3 to the modulus");
      break;
    }
    case "ssh-dss": {
      const p = r.mpint("DSA p");
      const q = r.mpint("DSA q");
      const g = r.mpint("DSA g");
      const y = r.mpint("DSA y");
      bits = bitLength(p);
      if (bits < 1024 || bits > 3072) throw new KeyError(`the DSA p has ${bits} bits, outside 1024-3072`);
      if (bitLength(q) !== 160) throw new KeyError(`the DSA q has ${bitLength(q)} bits, not 160`);
      if ((p - 1n) % q !== 0n) throw new KeyError("the DSA q does not divide p-1");
      if (g <= 1n || g >= p || y <= 1n || y >= p) throw new KeyError("the DSA g or y is out of range");
      break;
    }
    case "ecdsa-sha2-nistp256":
    case "ecdsa-sha2-nistp384":
    case "ecdsa-sha2-nistp521": {
      const curve = type.slice("ecdsa-sha2-".length) as keyof typeof CURVES;
      uncompressedPoint(r, curve);
      bits = CURVES[curve].bits;
      break;
    }
    case "sk-ecdsa-sha2-nistp256@openssh.com":
      uncompressedPoint(r, "nistp256");
      application(r);
      bits = 256;
      break;
    case "ssh-ed25519":
    case "sk-ssh-ed25519@openssh.com": {
      const pk = r.bytes("Ed25519 public key");
      if (pk.length !== 32) throw new KeyError(`the Ed25519 public key is ${pk.length} bytes, not 32`);
      if (type === "sk-ssh-ed25519@openssh.com") application(r);
      bits = 256;
      break;
    }
  }
  r.end();
  return bits;
}

function badCharMessage(line: string, at: number): string {
  const c = line.charCodeAt(at);
  if (c === 0x0a || c === 0x0d || c === 0x2028 || c === 0x2029) return `a line break at offset ${at} (one line expected)`;
  return `a control character (U+${c.toString(16).toUpperCase().padStart(4, "0")}) at offset ${at}`;
}

/**
 * Parse one public key line (no options, no line terminator): known type,
 * canonical base64 of a well-formed blob of that type, optional comment.
 * Throws KeyError saying what is wrong.
 */
export function parsePublicKey(line: string): PublicKey {
  if (line.length > MAX_LINE_CHARS) throw new KeyError(`the line is ${line.length} characters long, over ${MAX_LINE_CHARS}`);
  const bad = line.search(BAD_CHAR);
  if (bad >= 0) throw new KeyError(`the line has ${badCharMessage(line, bad)}`);
  const m = /^[ \t]*([^ \t]+)(?:[ \t]+([^ \t]+))?(?:[ \t]+(.*))?$/s.exec(line);
  if (!m) throw new KeyError("the line is empty");
  const type = m[1]!;
  if (!isKeyType(type)) {
    const tokens = line.trim().split(/[ \t]+/);
    if (tokens.slice(1).some(isKeyType)) throw new KeyError(`options or other text before the key type are not allowed (the line starts with ${shown(type, 40)})`);
    throw new KeyError(`unknown key type ${shown(type, 40)} (known: ${KEY_TYPES.join(", ")})`);
  }
  const base64 = m[2];
  if (base64 === undefined) throw new KeyError(`no key data after ${type}`);
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(base64) || base64.length % 4 !== 0) throw new KeyError("the key data is not valid base64");
  const blob = Buffer.from(base64, "base64");
  if (blob.toString("base64") !== base64) throw new KeyError("the key data is not canonical base64");
  const bits = checkBlob(type, blob);
  const comment = m[3] ? m[3] : null;
  if (comment !== null && comment.length > MAX_COMMENT_CHARS)
    throw new KeyError(`the comment is ${comment.length} characters long, over ${MAX_COMMENT_CHARS}`);
  return { type, blob, base64, comment, bits, text: line };
}

/**
 * Parse the bytes of a file or metadata value holding one key line: UTF-8,
 * one line, one final newline (LF or CRLF) allowed.
 */
export function parsePublicKeyBytes(buf: Buffer): PublicKey {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(buf);
  } catch {
    throw new KeyError("not valid UTF-8");
  }
  if (text.endsWith("\r\n")) text = text.slice(0, -2);
  else if (text.endsWith("\n")) text = text.slice(0, -1);
  return parsePublicKey(text);
}

/** The line to write into authorized_keys: type, base64 and the comment without trailing blanks. */
export function authorizedKeyLine(k: PublicKey): string {
  const comment = k.comment?.replace(/[ \t]+$/, "");
  return comment ? `${k.type} ${k.base64} ${comment}` : `${k.type} ${k.base64}`;
}

/** What identifies a key in a merge: same type and same blob. */
export function keyIdentity(type: string, blob: Buffer): string {
  return `${type} ${blob.toString("base64")}`;
}

/** SHA256:BASE64 (unpadded), as OpenSSH shows fingerprints. */
export function sha256Fingerprint(blob: Buffer): string {
  return "SHA256:" + createHash("sha256").update(blob).digest("base64").replace(/=+$/, "");
}

/**
 * The line `ssh-keygen -l` prints, without its newline:
 * "BITS SHA256:... COMMENT (LABEL)", "no comment" when there is none (or
 * when it starts with "#", which ssh-keygen takes for no comment).
 */
export function fingerprintLine(k: PublicKey): string {
  const comment = k.comment !== null && !k.comment.startsWith("#") ? k.comment : "no comment";
  return `${k.bits} ${sha256Fingerprint(k.blob)} ${comment} (${LABELS[k.type]})`;
}
