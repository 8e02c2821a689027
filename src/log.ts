// Logging: one JSON line per event to ROOT/var/log/imds-init.log (pino, a
// plain synchronous file destination: transports need worker threads and
// files on disk, which a single binary does not have), and a short plain
// line per event on stderr for the human at the console.
import pino from "pino";
import { openAppend } from "./files.ts";
import type { LogLevel } from "./config.ts";

const rank: Record<LogLevel, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 };

export type Fields = Record<string, unknown> & { step?: string };

export class Log {
  private file: pino.Logger | null = null;
  private instanceId: string | null = null;
  private fd: number | null = null;

  private readonly level: LogLevel;
  private readonly stderr: (line: string) => void;

  constructor(level: LogLevel, stderr: (line: string) => void = (line) => void process.stderr.write(line + "\n")) {
    this.level = level;
    this.stderr = stderr;
  }

  /** Start writing JSON lines to `path` (created 0600). Failure is a warning: logging never stops a boot. */
  openFile(path: string): void {
    try {
      this.fd = openAppend(path, 0o600);
      this.file = pino(
        {
          level: this.level,
          base: { pid: process.pid },
          timestamp: pino.stdTimeFunctions.isoTime,
          mixin: () => (this.instanceId ? { instance_id: this.instanceId } : {}),
        },
        pino.destination({ fd: this.fd, sync: true }),
      );
    } catch (e) {
      this.warn(`cannot write log file ${path}: ${(e as Error).message}`);
    }
  }

  setInstanceId(id: string): void {
    this.instanceId = id;
  }

  enabled(level: LogLevel): boolean {
    return rank[level] >= rank[this.level];
  }

  private emit(level: LogLevel, msg: string, fields: Fields = {}): void {
    if (!this.enabled(level)) return;
    try {
      this.file?.[level](fields, msg);
    } catch (e) {
      // A full or read-only disk must not turn a log line into a failed
      // boot: the file log stops, the console keeps every line.
      this.file = null;
      this.stderr(`imds-init: cannot write the log file any more (${(e as Error).message}); logging to the console only`);
    }
    this.stderr(`imds-init: ${fields.step ? fields.step + ": " : ""}${msg}`);
  }

  trace(msg: string, fields?: Fields): void {
    this.emit("trace", msg, fields);
  }
  debug(msg: string, fields?: Fields): void {
    this.emit("debug", msg, fields);
  }
  info(msg: string, fields?: Fields): void {
    this.emit("info", msg, fields);
  }
  warn(msg: string, fields?: Fields): void {
    this.emit("warn", msg, fields);
  }
  error(msg: string, fields?: Fields): void {
    this.emit("error", msg, fields);
  }

  close(): void {
    this.file?.flush();
    this.file = null;
  }
}
