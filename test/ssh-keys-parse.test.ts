// Key parsing and fingerprints, checked against the real ssh-keygen on keys
// generated now, plus every way a key line is refused.
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { execFileSync } from "node:child_process";
import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parsePublicKey, parsePublicKeyBytes, fingerprintLine, authorizedKeyLine, keyIdentity, KeyError } from "../src/ssh/keys.ts";
import { authorizedLineKey, presentKeys, appendLines } from "../src/ssh/authorized-keys.ts";

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "imds-init-keys-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// --- helpers: the SSH wire format, written independently of src/ssh/wire.ts

function str(b: Buffer | string): Buffer {
  const x = Buffer.from(b);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(x.length);
  return Buffer.concat([len, x]);
}
function mpint(n: bigint): Buffer {
  if (n === 0n) return str(Buffer.alloc(0));
  let hex = n.toString(16);
  if (hex.length % 2) hex = "0" + hex;
  let b = Buffer.from(hex, "hex");
  if (b[0]! & 0x80) b = Buffer.concat([Buffer.from([0]), b]);
  return str(b);
}
function fields(blob: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let o = 0; o < blob.length; ) {
    const n = blob.readUInt32BE(o);
    out.push(blob.subarray(o + 4, o + 4 + n));
    o += 4 + n;
  }
  return out;
}
const big = (b: Buffer): bigint => BigInt("0x" + (b.toString("hex") || "0"));
const line = (type: string, blob: Buffer, comment?: string): string => `${type} ${blob.toString("base64")}${comment === undefined ? "" : " " + comment}`;

let n = 0;
/** What `ssh-keygen -lf` prints for a file holding `text`, or null when it refuses the file. */
function keygenL(text: string): string | null {
  const f = join(dir, `probe-${n++}.pub`);
  writeFileSync(f, text);
  try {
    return execFileSync("ssh-keygen", ["-l", "-f", f], { stdio: ["ignore", "pipe", "pipe"] }).toString().replace(/\n$/, "");
  } catch {
    return null;
  }
}

function generate(type: string, bits: number | null, comment: string): string {
  const f = join(dir, `${type}-${bits ?? "x"}-${n++}`);
  execFileSync("ssh-keygen", ["-q", "-t", type, ...(bits ? ["-b", String(bits)] : []), "-N", "", "-C", comment, "-f", f], { stdio: ["ignore", "pipe", "pipe"] });
  return readFileSync(f + ".pub", "utf8");
}

function rsaBlob(e: bigint, nn: bigint): Buffer {
  return Buffer.concat([str("ssh-rsa"), mpint(e), mpint(nn)]);
}
/** A random odd number of exactly `bits` bits: ssh-keygen -l does not check primality, so it fingerprints these. */
function oddOfBits(bits: number): bigint {
  const r = big(randomBytes(Math.ceil(bits / 8) + 1)) & ((1n << BigInt(bits)) - 1n);
  return r | (1n << BigInt(bits - 1)) | 1n;
}
function ecPoint(curve: "P-256" | "P-384" | "P-521"): Buffer {
  const jwk = generateKeyPairSync("ec", { namedCurve: curve }).publicKey.export({ format: "jwk" });
  return Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, "base64url"), Buffer.from(jwk.y!, "base64url")]);
}

// --- keys made by ssh-keygen now, of every type and size it makes here

describe("fingerprints agree with ssh-keygen -l", () => {
  const made: { name: string; text: string }[] = [];
  beforeAll(() => {
    for (const bits of [1024, 2048, 2049, 3072, 4096]) made.push({ name: `rsa ${bits}`, text: generate("rsa", bits, `rsa-${bits}@test`) });
    made.push({ name: "dsa", text: generate("dsa", 1024, "dsa@test") });
    for (const bits of [256, 384, 521]) made.push({ name: `ecdsa ${bits}`, text: generate("ecdsa", bits, `ecdsa-${bits}@test`) });
    made.push({ name: "ed25519", text: generate("ed25519", null, "ed25519@test") });
    made.push({ name: "ed25519, no comment", text: generate("ed25519", null, "") });
  });

  it("covers every type ssh-keygen makes, with the labels and sizes ssh-keygen prints", () => {
    const printed = made.map((m) => keygenL(m.text)!);
    const summary = printed.map((p) => { const f = p.split(" "); return `${f[0]} ${f[f.length - 1]}`; });
    expect(summary).toEqual(expect.arrayContaining(["1024 (RSA)", "3072 (RSA)", "4096 (RSA)", "1024 (DSA)", "256 (ECDSA)", "384 (ECDSA)", "521 (ECDSA)", "256 (ED25519)"]));
  });

  it("prints byte-identical lines for every generated key", () => {
    for (const m of made) {
      const expected = keygenL(m.text);
      expect(expected, m.name).not.toBeNull();
      expect(fingerprintLine(parsePublicKeyBytes(Buffer.from(m.text))), m.name).toBe(expected);
    }
  });

  it("says 'no comment' exactly when ssh-keygen does, and keeps comments as it does", () => {
    const base = made.find((m) => m.name === "ed25519")!.text.split(" ").slice(0, 2).join(" ");
    for (const tail of ["", " ", " c", "  two  spaces  ", "\tTAB\tinside", " #hash", " é ü unicode", " a#b"]) {
      const text = base + tail + "\n";
      expect(fingerprintLine(parsePublicKeyBytes(Buffer.from(text))), JSON.stringify(tail)).toBe(keygenL(text));
    }
    // A CRLF line end: ssh-keygen keeps the CR in the comment and prints it;
    // we take CRLF for a line end, so that no CR reaches the console.
    expect(keygenL(base + " crlf\r\n")).toContain(" crlf\r (ED25519)");
    expect(fingerprintLine(parsePublicKeyBytes(Buffer.from(base + " crlf\r\n")))).toBe(keygenL(base + " crlf\r\n")!.replace("\r", ""));
    expect(fingerprintLine(parsePublicKeyBytes(Buffer.from(base + "\r\n")))).toBe(keygenL(base + "\r\n"));
  });

  it("agrees on RSA moduli of odd bit lengths, made by node:crypto", () => {
    const sizes: number[] = [];
    for (const modulusLength of [1025, 1537]) {
      const jwk = generateKeyPairSync("rsa", { modulusLength }).publicKey.export({ format: "jwk" });
      const text = line("ssh-rsa", rsaBlob(big(Buffer.from(jwk.e!, "base64url")), big(Buffer.from(jwk.n!, "base64url"))), `node-${modulusLength}`);
      const ours = fingerprintLine(parsePublicKey(text));
      expect(ours).toBe(keygenL(text));
      sizes.push(Number(ours.split(" ")[0]));
    }
    expect(sizes.some((b) => b % 2 === 1)).toBe(true); // an odd size really was tested
  });

  it("agrees on RSA sizes from 1024 to 16384 bits, odd ones included", () => {
    for (const bits of [1024, 1025, 2047, 2049, 4097, 8191, 16384]) {
      const text = line("ssh-rsa", rsaBlob(65537n, oddOfBits(bits)), `synthetic-${bits}`);
      const ours = fingerprintLine(parsePublicKey(text));
      expect(ours.startsWith(`${bits} SHA256:`)).toBe(true);
      expect(ours).toBe(keygenL(text));
    }
  });

  it("agrees on sk-ssh-ed25519@openssh.com keys built by hand", () => {
    for (const app of ["ssh:", "ssh:imds-init-test"]) {
      const blob = Buffer.concat([str("sk-ssh-ed25519@openssh.com"), str(randomBytes(32)), str(app)]);
      for (const text of [line("sk-ssh-ed25519@openssh.com", blob, "fido@test"), line("sk-ssh-ed25519@openssh.com", blob)]) {
        const expected = keygenL(text);
        expect(expected).toMatch(/^256 SHA256:\S+ .* \(ED25519-SK\)$/);
        expect(fingerprintLine(parsePublicKey(text))).toBe(expected);
      }
    }
  });

  it("agrees on sk-ecdsa-sha2-nistp256@openssh.com keys built by hand", () => {
    const blob = Buffer.concat([str("sk-ecdsa-sha2-nistp256@openssh.com"), str("nistp256"), str(ecPoint("P-256")), str("ssh:")]);
    const text = line("sk-ecdsa-sha2-nistp256@openssh.com", blob, "fido-ec@test");
    const expected = keygenL(text);
    expect(expected).toMatch(/^256 SHA256:\S+ fido-ec@test \(ECDSA-SK\)$/);
    expect(fingerprintLine(parsePublicKey(text))).toBe(expected);
  });

  it("agrees on DSA keys with p over 1024 bits", () => {
    // q must divide p-1: p = 2kq + 1 for a 160-bit q; p need not be prime for ssh-keygen -l.
    const q = oddOfBits(160);
    for (const bits of [2048, 3072]) {
      let p = 0n;
      while (p.toString(2).length !== bits) p = 2n * oddOfBits(bits - 160) * q + 1n;
      const blob = Buffer.concat([str("ssh-dss"), mpint(p), mpint(q), mpint(2n), mpint(p - 2n)]);
      const text = line("ssh-dss", blob, "dsa-big");
      const ours = fingerprintLine(parsePublicKey(text));
      expect(ours).toBe(keygenL(text));
      expect(ours.startsWith(`${bits} `)).toBe(true);
    }
  });

  it("computes the fingerprint as unpadded base64 of SHA-256 over the blob", () => {
    const text = made.find((m) => m.name === "ecdsa 521")!.text;
    const k = parsePublicKeyBytes(Buffer.from(text));
    const digest = createHash("sha256").update(Buffer.from(text.split(" ")[1]!, "base64")).digest("base64");
    expect(fingerprintLine(k)).toContain(` SHA256:${digest.replace(/=+$/, "")} `);
    expect(fingerprintLine(k)).not.toContain("=");
  });
});

// --- what a parsed key looks like

describe("parsePublicKey", () => {
  let ed: string;
  let edBlob: Buffer;
  beforeAll(() => {
    ed = generate("ed25519", null, "me@host");
    edBlob = Buffer.from(ed.split(" ")[1]!, "base64");
  });

  it("returns type, blob, comment and size", () => {
    const k = parsePublicKeyBytes(Buffer.from(ed));
    expect(k.type).toBe("ssh-ed25519");
    expect(k.blob.equals(edBlob)).toBe(true);
    expect(k.comment).toBe("me@host");
    expect(k.bits).toBe(256);
    expect(k.text).toBe(ed.trimEnd());
  });

  it("accepts blanks around and between fields, and writes a tidy authorized_keys line", () => {
    const k = parsePublicKey(`  ssh-ed25519\t${edBlob.toString("base64")}   my key  `);
    expect(k.comment).toBe("my key  ");
    expect(authorizedKeyLine(k)).toBe(`ssh-ed25519 ${edBlob.toString("base64")} my key`);
    expect(authorizedKeyLine(parsePublicKey(`ssh-ed25519 ${edBlob.toString("base64")}`))).toBe(`ssh-ed25519 ${edBlob.toString("base64")}`);
  });

  // Each case: the line, and the reason the refusal must give (so the test
  // proves the right check fired, not an earlier one by accident).
  const b64 = () => edBlob.toString("base64");
  // 74 bytes: base64 ending in "o=", whose last character carries 2 unused bits.
  const padded = () => {
    const s = Buffer.concat([str("sk-ssh-ed25519@openssh.com"), str(Buffer.alloc(32, 7)), str("ssh:")]).toString("base64");
    expect(s.endsWith("o=")).toBe(true);
    expect(parsePublicKey(`sk-ssh-ed25519@openssh.com ${s}`).bits).toBe(256); // valid as it is
    return s;
  };
  const refusals: [string, () => string, RegExp][] = [
    ["empty line", () => "", /empty/],
    ["type only", () => "ssh-ed25519", /no key data/],
    ["unknown type", () => `ssh-foo ${b64()}`, /unknown key type "ssh-foo"/],
    ["certificate type", () => `ssh-ed25519-cert-v01@openssh.com ${b64()}`, /unknown key type/],
    ["options before the key", () => `no-pty ${ed}`.trimEnd(), /options .* not allowed/],
    ["quoted options with spaces", () => `command="echo hi there",no-pty ${ed}`.trimEnd(), /options .* not allowed/],
    ["bad base64 characters", () => `ssh-ed25519 ${b64().slice(0, -4)}!!!!`, /not valid base64/],
    ["base64 without padding", () => `sk-ssh-ed25519@openssh.com ${padded().replace(/=$/, "")}`, /not valid base64/],
    ["base64 with stray bits", () => `sk-ssh-ed25519@openssh.com ${padded().replace(/o=$/, "p=")}`, /not canonical base64/],
    ["inner type differs", () => `ssh-rsa ${b64()}`, /says ssh-rsa but the key data is of type "ssh-ed25519"/],
    ["inner type differs (ecdsa curve)", () => line("ecdsa-sha2-nistp384", Buffer.concat([str("ecdsa-sha2-nistp256"), str("nistp256"), str(ecPoint("P-256"))])), /is of type "ecdsa-sha2-nistp256"/],
    ["truncated blob", () => line("ssh-ed25519", edBlob.subarray(0, edBlob.length - 1)), /ends inside the Ed25519 public key/],
    ["blob cut before a field", () => line("ssh-ed25519", str("ssh-ed25519")), /ends before the Ed25519 public key/],
    ["trailing byte in the blob", () => line("ssh-ed25519", Buffer.concat([edBlob, Buffer.from([0])])), /1 byte of trailing data/],
    ["trailing string in the blob", () => line("ssh-ed25519", Buffer.concat([edBlob, str("x")])), /5 bytes of trailing data/],
    ["Ed25519 key of 33 bytes", () => line("ssh-ed25519", Buffer.concat([str("ssh-ed25519"), str(Buffer.alloc(33, 1))])), /33 bytes, not 32/],
    ["embedded newline", () => `${ed.trimEnd()}\nssh-ed25519 ${b64()}`, /a line break at offset \d+ \(one line expected\)/],
    ["embedded carriage return", () => `ssh-ed25519 ${b64()} a\rb`, /a line break at offset \d+ \(one line expected\)/],
    ["NUL in comment", () => `ssh-ed25519 ${b64()} a\0b`, /control character \(U\+0000\)/],
    ["escape sequence in comment", () => `ssh-ed25519 ${b64()} \x1b[2Jx`, /control character \(U\+001B\)/],
    ["C1 control in comment", () => `ssh-ed25519 ${b64()} a\u009bb`, /control character \(U\+009B\)/],
    ["bidi override in comment", () => `ssh-ed25519 ${b64()} a\u202eb`, /control character \(U\+202E\)/],
    ["line separator", () => `ssh-ed25519 ${b64()} a\u2028b`, /a line break at offset \d+ \(one line expected\)/],
    ["overlong line", () => `ssh-ed25519 ${b64()} ${"x".repeat(16384)}`, /over 16384/],
    ["overlong comment", () => `ssh-ed25519 ${b64()} ${"x".repeat(1025)}`, /comment is 1025 characters long/],
    ["RSA modulus of 1023 bits", () => line("ssh-rsa", rsaBlob(65537n, oddOfBits(1023))), /1023 bits, outside 1024-16384/],
    ["RSA modulus of 16385 bits", () => line("ssh-rsa", rsaBlob(65537n, oddOfBits(16385))), /16385 bits, outside/],
    ["RSA modulus over the bignum cap", () => line("ssh-rsa", rsaBlob(65537n, oddOfBits(16400))), /over 16384 bits/],
    ["RSA even exponent", () => line("ssh-rsa", rsaBlob(65536n, oddOfBits(2048))), /exponent/],
    ["RSA exponent 1", () => line("ssh-rsa", rsaBlob(1n, oddOfBits(2048))), /exponent/],
    ["RSA exponent 0", () => line("ssh-rsa", rsaBlob(0n, oddOfBits(2048))), /exponent/],
    ["RSA needless leading zero", () => line("ssh-rsa", Buffer.concat([str("ssh-rsa"), str(Buffer.from([0, 1, 0, 1])), mpint(oddOfBits(2048))])), /needless leading zero/],
    ["RSA negative modulus", () => { const m = mpint(oddOfBits(2048)); return line("ssh-rsa", Buffer.concat([str("ssh-rsa"), mpint(65537n), str(m.subarray(5))])); }, /negative/],
    ["DSA q of 256 bits", () => line("ssh-dss", Buffer.concat([str("ssh-dss"), mpint(oddOfBits(1024)), mpint(oddOfBits(256)), mpint(2n), mpint(3n)])), /q has 256 bits/],
    ["DSA p of 1023 bits", () => line("ssh-dss", Buffer.concat([str("ssh-dss"), mpint(oddOfBits(1023)), mpint(oddOfBits(160)), mpint(2n), mpint(3n)])), /p has 1023 bits/],
    ["DSA q not dividing p-1", () => line("ssh-dss", Buffer.concat([str("ssh-dss"), mpint(oddOfBits(1024)), mpint(oddOfBits(160)), mpint(2n), mpint(3n)])), /does not divide/],
    ["ECDSA wrong curve name", () => line("ecdsa-sha2-nistp256", Buffer.concat([str("ecdsa-sha2-nistp256"), str("nistp384"), str(ecPoint("P-256"))])), /names curve "nistp384", not nistp256/],
    ["ECDSA compressed point", () => { const p = ecPoint("P-256"); return line("ecdsa-sha2-nistp256", Buffer.concat([str("ecdsa-sha2-nistp256"), str("nistp256"), str(Buffer.concat([Buffer.from([2 + (p[64]! & 1)]), p.subarray(1, 33)]))])); }, /not an uncompressed nistp256 point/],
    ["ECDSA point off the curve", () => { const p = Buffer.from(ecPoint("P-384")); p[p.length - 1]! ^= 1; return line("ecdsa-sha2-nistp384", Buffer.concat([str("ecdsa-sha2-nistp384"), str("nistp384"), str(p)])); }, /not on curve nistp384/],
    ["sk key without application", () => line("sk-ssh-ed25519@openssh.com", Buffer.concat([str("sk-ssh-ed25519@openssh.com"), str(randomBytes(32))])), /ends before the application string/],
    ["sk key with empty application", () => line("sk-ssh-ed25519@openssh.com", Buffer.concat([str("sk-ssh-ed25519@openssh.com"), str(randomBytes(32)), str("")])), /application string/],
    ["sk key with control character in application", () => line("sk-ssh-ed25519@openssh.com", Buffer.concat([str("sk-ssh-ed25519@openssh.com"), str(randomBytes(32)), str("ssh:\n")])), /application string/],
    ["sk-ecdsa on nistp384", () => line("sk-ecdsa-sha2-nistp256@openssh.com", Buffer.concat([str("sk-ecdsa-sha2-nistp256@openssh.com"), str("nistp384"), str(ecPoint("P-384")), str("ssh:")])), /names curve "nistp384"/],
  ];
  for (const [name, make, reason] of refusals) {
    it(`refuses: ${name}`, () => {
      const text = make();
      expect(() => parsePublicKey(text)).toThrow(KeyError);
      expect(() => parsePublicKey(text)).toThrow(reason);
    });
  }

  it("refuses an ECDSA point with a tiny coordinate, as OpenSSH does", () => {
    // A real P-256 point with x < 2^8: on the curve, but far below OpenSSH's bound.
    const p = 2n ** 256n - 2n ** 224n + 2n ** 192n + 2n ** 96n - 1n;
    const b = 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn;
    const pow = (x: bigint, e: bigint): bigint => { let r = 1n; x %= p; for (; e > 0n; e >>= 1n, x = (x * x) % p) if (e & 1n) r = (r * x) % p; return r; };
    let point: Buffer | null = null;
    for (let x = 1n; x < 256n && !point; x++) {
      const rhs = (((x * x * x - 3n * x + b) % p) + p) % p;
      const y = pow(rhs, (p + 1n) / 4n);
      if ((y * y) % p === rhs) point = Buffer.concat([Buffer.from([4]), Buffer.from(x.toString(16).padStart(64, "0"), "hex"), Buffer.from(y.toString(16).padStart(64, "0"), "hex")]);
    }
    const text = line("ecdsa-sha2-nistp256", Buffer.concat([str("ecdsa-sha2-nistp256"), str("nistp256"), str(point!)]));
    expect(() => parsePublicKey(text)).toThrow(/implausibly small coordinate/);
    expect(keygenL(text)).toBeNull(); // and OpenSSH refuses it too
  });

  it("refuses bytes that are not UTF-8, or more than one line", () => {
    expect(() => parsePublicKeyBytes(Buffer.concat([Buffer.from(ed.trimEnd() + " "), Buffer.from([0xff, 0xfe])]))).toThrow(/not valid UTF-8/);
    expect(() => parsePublicKeyBytes(Buffer.from(ed + ed))).toThrow(/a line break at offset \d+ \(one line expected\)/);
    expect(() => parsePublicKeyBytes(Buffer.from(ed + "\n"))).toThrow(/a line break at offset \d+ \(one line expected\)/);
  });
});

// --- recognising keys in authorized_keys lines

describe("authorized_keys lines", () => {
  let keys: string[];
  beforeAll(() => {
    keys = [generate("ed25519", null, "a"), generate("ecdsa", 256, "b"), generate("rsa", 1024, "c")].map((t) => t.trimEnd());
  });
  const idOf = (text: string) => { const [t, b] = text.split(" "); return keyIdentity(t!, Buffer.from(b!, "base64")); };

  it("finds the key with or without options, as ssh-keygen -l does", () => {
    const [a, b, c] = keys as [string, string, string];
    const lines = [
      a,
      `   ${b}`,
      `no-pty ${c}`,
      `command="echo hello world",no-port-forwarding ${a}`,
      `command="echo \\"quoted spaces\\" here",no-pty ${b}`,
      `environment="A=b c" ${c} trailing comment`,
      `restrict,from="10.0.0.0/8"\t${a}`,
      `${a}\r`,
    ];
    for (const l of lines) {
      const id = authorizedLineKey(l);
      expect(id, l).not.toBeNull();
      // the same key ssh-keygen finds on that line
      const printed = keygenL(l + "\n")!;
      const blob = Buffer.from(id!.split(" ")[1]!, "base64");
      expect(printed.split(" ")[1], l).toBe("SHA256:" + createHash("sha256").update(blob).digest("base64").replace(/=+$/, ""));
    }
    expect(authorizedLineKey(`command="echo hello world",no-port-forwarding ${a}`)).toBe(idOf(a));
  });

  it("finds no key on blank, comment, junk and unterminated-quote lines", () => {
    const [a] = keys as [string];
    for (const l of ["", "   ", "# a comment", `# ${a}`, `#${a}`, "junk", `command="never closed ${a}`, `ssh-ed25519 notbase64! x`, `ssh-rsa ${a.split(" ")[1]}`]) {
      expect(authorizedLineKey(l), l).toBeNull();
    }
  });

  it("collects every key of a file, options, CRLF and odd bytes included", () => {
    const [a, b, c] = keys as [string, string, string];
    const file = Buffer.concat([Buffer.from(`# keys\n\nno-pty ${a}\r\n`), Buffer.from([0xff, 0x0a]), Buffer.from(`${b}`)]);
    const present = presentKeys(file);
    expect(present).toEqual(new Set([idOf(a), idOf(b)]));
    expect(present.has(idOf(c))).toBe(false);
  });

  it("appends after the existing bytes, adding a final newline only when missing", () => {
    expect(appendLines(Buffer.from("x"), ["k1", "k2"]).toString()).toBe("x\nk1\nk2\n");
    expect(appendLines(Buffer.from("x\n"), ["k1"]).toString()).toBe("x\nk1\n");
    expect(appendLines(Buffer.alloc(0), ["k1"]).toString()).toBe("k1\n");
    const odd = Buffer.from([0xff, 0x0d]);
    expect(appendLines(odd, ["k"]).equals(Buffer.concat([odd, Buffer.from("\nk\n")]))).toBe(true);
  });
});
