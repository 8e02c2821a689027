import { describe, expect, it } from "vitest";
import { parseArgs, UsageError } from "../src/cli.ts";

const bad = (argv: string[], msg: RegExp) => {
  expect(() => parseArgs(argv)).toThrow(UsageError);
  expect(() => parseArgs(argv)).toThrow(msg);
};

describe("parseArgs", () => {
  it("defaults to run on / with nothing else", () => {
    expect(parseArgs([])).toEqual({
      command: "run",
      root: "/",
      metadataUrls: [],
      only: [],
      skip: [],
      force: false,
      dryRun: false,
      json: false,
    });
  });

  it("takes the command first and options in either form", () => {
    const o = parseArgs(["run", "--root", "/mnt/img", "--config=/tmp/c.yaml", "--only", "hostname,ssh-keys", "--force", "--dry-run", "--log-level=debug"]);
    expect(o).toMatchObject({ command: "run", root: "/mnt/img", config: "/tmp/c.yaml", only: ["hostname", "ssh-keys"], force: true, dryRun: true, logLevel: "debug" });
  });

  it("accepts options before the command", () => {
    expect(parseArgs(["--root", "/x", "status", "--json"])).toMatchObject({ command: "status", root: "/x", json: true });
  });

  it("resolves a relative --root and --config against the working directory", () => {
    const o = parseArgs(["--root", "scratch", "--config", "c.yaml"]);
    expect(o.root).toBe(`${process.cwd()}/scratch`);
    expect(o.config).toBe(`${process.cwd()}/c.yaml`);
  });

  it("accumulates repeated --skip and --metadata-url, dropping a trailing slash", () => {
    const o = parseArgs(["--skip", "hostname", "--skip", "basesystem", "--metadata-url", "http://127.0.0.1:8080/", "--metadata-url", "http://[fd00:ec2::254]"]);
    expect(o.skip).toEqual(["hostname", "basesystem"]);
    expect(o.metadataUrls).toEqual(["http://127.0.0.1:8080", "http://[fd00:ec2::254]"]);
  });

  it("takes one PATH for metadata", () => {
    expect(parseArgs(["metadata", "meta-data/instance-id"]).path).toBe("meta-data/instance-id");
    expect(parseArgs(["metadata"]).path).toBeUndefined();
    bad(["metadata", "a", "b"], /one PATH/);
  });

  it("answers --help and --version without checking what follows", () => {
    expect(parseArgs(["--help", "--bogus"]).command).toBe("help");
    expect(parseArgs(["-h"]).command).toBe("help");
    expect(parseArgs(["--version"]).command).toBe("version");
    expect(parseArgs(["-V"]).command).toBe("version");
  });

  it("names an unknown option", () => bad(["--frobnicate"], /unknown option --frobnicate/));
  it("names an unknown command", () => bad(["launch"], /unknown command "launch"/));
  it("names an unknown step", () => bad(["--only", "hostname,sshkeys"], /unknown step "sshkeys" in --only/));
  it("names an unknown log level", () => bad(["--log-level", "loud"], /unknown log level "loud"/));
  it("wants a value where one is needed", () => {
    bad(["--root"], /--root needs a value/);
    bad(["--only="], /--only needs a value/);
  });
  it("refuses a value on a flag", () => bad(["--force=yes"], /--force takes no value/));
  it("refuses options that do not apply to the command", () => {
    bad(["status", "--force"], /--force does not apply to "status"/);
    bad(["fingerprints", "--metadata-url", "http://127.0.0.1"], /does not apply to "fingerprints"/);
    bad(["run", "--json"], /--json does not apply to "run"/);
  });
  it("refuses --only with --skip", () => bad(["--only", "hostname", "--skip", "basesystem"], /cannot be used together/));
  it("refuses stray arguments", () => bad(["run", "extra"], /unexpected argument "extra"/));
  it("refuses metadata URLs that are not plain http origins", () => {
    bad(["--metadata-url", "file:///etc/passwd"], /--metadata-url/);
    bad(["--metadata-url", "http://169.254.169.254/latest"], /--metadata-url/);
    bad(["--metadata-url", "http://u:p@169.254.169.254"], /--metadata-url/);
    bad(["--metadata-url", "not a url"], /--metadata-url/);
  });
});
