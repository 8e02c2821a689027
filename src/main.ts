// imds-init: the entry point. Parses the command line, loads the config,
// opens the log and hands over to the command.
import { parseArgs, UsageError, type Options } from "./cli.ts";
import { loadConfig, ConfigError, type Config } from "./config.ts";
import { Log } from "./log.ts";
import { paths, under } from "./os.ts";
import { HELP } from "./help.ts";
import { EXIT } from "./exit.ts";

declare const IMDS_INIT_VERSION: string;
const version = typeof IMDS_INIT_VERSION === "string" ? IMDS_INIT_VERSION : "dev";

const stdout = (text: string): void => void process.stdout.write(text);

async function main(argv: string[]): Promise<number> {
  let opts: Options;
  let config: Config;
  try {
    opts = parseArgs(argv);
    if (opts.command === "help") {
      stdout(HELP);
      return EXIT.ok;
    }
    if (opts.command === "version") {
      stdout(`imds-init ${version} (node ${process.version})\n`);
      return EXIT.ok;
    }
    config = loadConfig(opts.config ?? under(opts.root, paths.config), opts.config !== undefined);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`imds-init: ${e.message}; see imds-init --help\n`);
      return EXIT.usage;
    }
    if (e instanceof ConfigError) {
      process.stderr.write(`imds-init: ${e.message}\n`);
      return EXIT.usage;
    }
    throw e;
  }
  if (opts.metadataUrls.length > 0) config.metadata.urls = opts.metadataUrls;
  const log = new Log(opts.logLevel ?? config.log.level);
  try {
    switch (opts.command) {
      case "run": {
        if (!opts.dryRun) log.openFile(under(opts.root, paths.log));
        const { runSteps } = await import("./run.ts");
        return await runSteps(opts, config, log, stdout);
      }
      case "fingerprints": {
        const { printFingerprints } = await import("./commands/fingerprints.ts");
        return printFingerprints(opts, config, log, stdout);
      }
      case "status": {
        const { status } = await import("./commands/status.ts");
        return status(opts, config, stdout);
      }
      case "metadata": {
        const { metadata } = await import("./commands/metadata.ts");
        return await metadata(opts, config, log);
      }
    }
  } finally {
    log.close();
  }
  return EXIT.usage;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    // A bug, not an expected failure: say so plainly and exit 1.
    process.stderr.write(`imds-init: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = EXIT.failed;
  },
);
