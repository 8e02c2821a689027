// Facts about the operating system imds-init works on: every path and
// command it touches, in one place. Paths are absolute inside the target
// root; join them with the root via `under()`.
import { join, resolve } from "node:path";

export const paths = {
  config: "/etc/imds-init.yaml",
  stateDir: "/var/lib/imds-init",
  log: "/var/log/imds-init.log",
  userDataLog: "/var/log/imds-init-user-data.log",
  hostname: "/etc/hostname",
  sysconfigNetwork: "/etc/sysconfig/network",
  passwd: "/etc/passwd",
  sshHostKeyDir: "/etc/ssh",
  // Where dnf and yum keep downloaded packages; searched for basesystem-*.rpm.
  packageCaches: ["/var/cache/dnf", "/var/cache/yum"],
  // The running kernel's host name (of this UTS namespace): writing it is
  // sethostname(2), with no helper binary that an image might lack.
  procHostname: "/proc/sys/kernel/hostname",
  devNull: "/dev/null",
  // This boot's id: a run lock from another boot is stale.
  bootId: "/proc/sys/kernel/random/boot_id",
  // The run lock, in stateDir.
  lockName: "lock",
} as const;

// Linux's limit on the kernel host name (HOST_NAME_MAX, __NEW_UTS_LEN);
// systemd applies the same limit to /etc/hostname.
export const hostNameMax = 64;

// chroot(8): runs user-data inside --root DIR (node cannot chroot itself).
// Looked up on the host, in commandPath order, not in DIR.
export const chrootCommand = "chroot";

// The directories searched, in ROOT, for the commands imds-init runs
// (rpm for the basesystem step). A clean, fixed PATH: never the caller's.
export const commandPath = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

// A system's own rpm macro files, in the order rpm reads them (upstream's
// default macro path without the build-only entries). `rpm --root` reads
// the macros of the machine it runs on, not ROOT's, so for another root the
// basesystem step loads these from ROOT to let ROOT's configuration choose
// its database (%_dbpath, %_db_backend).
export const rpmMacroFiles = ["/usr/lib/rpm/macros", "/usr/lib/rpm/macros.d/macros.*", "/etc/rpm/macros.*", "/etc/rpm/macros"];

// One of these in %_dbpath means an rpm database is there: sqlite (EL9,
// Fedora), Berkeley DB (EL7/8, Amazon Linux 2), ndb (SUSE). Checked first
// because rpm creates an empty database where it finds none.
export const rpmDbFiles = ["rpmdb.sqlite", "Packages", "Packages.db"];

// The environment user-data scripts run with.
export const scriptEnv = {
  PATH: commandPath.join(":"),
  HOME: "/root",
  LANG: "C",
  SHELL: "/bin/sh",
  USER: "root",
  LOGNAME: "root",
} as const;

/** `path` (absolute, as seen inside the root) joined under `root`. */
export function under(root: string, path: string): string {
  return root === "/" ? path : join(resolve(root), path);
}
