#!/usr/bin/env bash
# Install imds-init into a system or an image tree, or take it out again.
#
# usage: scripts/install.sh [--root DIR] [--init auto|systemd|sysv]
#                           [--binary FILE] [--basesystem-rpm FILE]
#        scripts/install.sh [--root DIR] --uninstall
#
# Installs, under DIR (default /):
#   /usr/sbin/imds-init                 the binary (--binary, default dist/imds-init;
#                                       dist/imds-init-linux-arm64 for arm64 images)
#   systemd: imds-init.service and imds-init-user-data.service in
#            /usr/lib/systemd/system (or /lib/systemd/system), enabled with
#            links in /etc/systemd/system/multi-user.target.wants/
#   sysv:    the rc script in /etc/rc.d/init.d (EL) or /etc/init.d (Debian),
#            enabled with S links in rc2.d..rc5.d (S11 on EL, as chkconfig
#            would; S01 on Debian: run `update-rc.d imds-init defaults` in the
#            image where insserv orders the boot)
#   /usr/share/man/man8/imds-init.8     the manual
#   /etc/imds-init.yaml                 a commented default config, only if
#                                       there is none: an admin's is never touched
#   /var/lib/imds-init/basesystem.rpm   with --basesystem-rpm
# --init auto (the default) picks systemd when DIR's /sbin/init is systemd
# (or, with no /sbin/init, when systemd is installed), else sysv.
#
# What was installed is recorded, with checksums, in
# DIR/var/lib/imds-init/install.manifest. --uninstall removes exactly that:
# files still as installed, links still pointing where they did, and the
# directories it created once they are empty. Anything changed since (an
# edited config, a replaced binary) is kept and named. Installing again over
# an install replaces it. Nothing is ever written through a symbolic link,
# and nothing that was not installed by this script is replaced.
# No running systemd, chroot or package manager is needed.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd -P)
root=/
init=auto
binary=$src/dist/imds-init
basesystem_rpm=
uninstall=false

die() {
  echo "install: $*" >&2
  exit 1
}
usage() {
  sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case $1 in
  --root) [ $# -ge 2 ] || usage; root=$2; shift 2 ;;
  --root=*) root=${1#*=}; shift ;;
  --init) [ $# -ge 2 ] || usage; init=$2; shift 2 ;;
  --init=*) init=${1#*=}; shift ;;
  --binary) [ $# -ge 2 ] || usage; binary=$2; shift 2 ;;
  --binary=*) binary=${1#*=}; shift ;;
  --basesystem-rpm) [ $# -ge 2 ] || usage; basesystem_rpm=$2; shift 2 ;;
  --basesystem-rpm=*) basesystem_rpm=${1#*=}; shift ;;
  --uninstall) uninstall=true; shift ;;
  -h | --help) usage ;;
  *) echo "install: unknown argument: $1" >&2; usage ;;
  esac
done
case $init in auto | systemd | sysv) ;; *) die "--init must be auto, systemd or sysv, not \"$init\"" ;; esac
[ -d "$root" ] || die "$root: not a directory"
root=$(cd "$root" && pwd -P)
prefix=${root%/} # "" for /
manifest=/var/lib/imds-init/install.manifest

# Every directory on the way to PATH (inside the root) must be a real
# directory or not exist yet: never write through a symbolic link, which in
# an image tree may point anywhere on this machine.
check_parents() {
  local path=$1 acc='' part
  local IFS=/
  for part in ${path%/*}; do
    [ -n "$part" ] || continue
    acc=$acc/$part
    if [ -L "$prefix$acc" ]; then die "refusing: $prefix$acc is a symbolic link (on the way to $path)"; fi
    if [ -e "$prefix$acc" ] && [ ! -d "$prefix$acc" ]; then die "refusing: $prefix$acc is not a directory"; fi
  done
}

# A real directory (not a link) inside the root?
is_dir() {
  [ -d "$prefix$1" ] && [ ! -L "$prefix$1" ]
}

sha() {
  sha256sum <"$1" | cut -d' ' -f1
}

# ---- uninstall ---------------------------------------------------------

# Lines of the manifest: "dir PATH", "file SHA256 PATH", "link TARGET PATH".
# Processed last to first, so files go before the directories holding them.
# With "check", only report what would be kept.
remove_recorded() {
  local mode=$1 line kind a b i
  local -a lines=()
  mapfile -t lines < <(grep -v '^#' "$prefix$manifest")
  [ "$mode" = check ] || rm -f "$prefix$manifest"
  for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
    line=${lines[i]}
    read -r kind a b <<<"$line"
    case $kind in
    file)
      if [ -f "$prefix$b" ] && [ ! -L "$prefix$b" ] && [ "$(sha "$prefix$b")" = "$a" ]; then
        [ "$mode" = check ] || rm -f "$prefix$b"
      elif [ -e "$prefix$b" ] || [ -L "$prefix$b" ]; then
        echo "$b"
        [ "$mode" = check ] || echo "install: kept $prefix$b: changed since it was installed" >&2
      fi
      ;;
    link)
      if [ -L "$prefix$b" ] && [ "$(readlink "$prefix$b")" = "$a" ]; then
        [ "$mode" = check ] || rm -f "$prefix$b"
      elif [ -e "$prefix$b" ] || [ -L "$prefix$b" ]; then
        echo "$b"
        [ "$mode" = check ] || echo "install: kept $prefix$b: changed since it was installed" >&2
      fi
      ;;
    dir)
      if [ "$mode" != check ] && is_dir "$a"; then
        rmdir "$prefix$a" 2>/dev/null || echo "install: kept $prefix$a: not empty" >&2
      fi
      ;;
    *) die "$prefix$manifest: unreadable line: $line" ;;
    esac
  done
}

if $uninstall; then
  [ -f "$prefix$manifest" ] || die "$prefix$manifest: not found: nothing was installed here by this script"
  check_parents "$manifest"
  remove_recorded remove >/dev/null
  echo "install: removed imds-init from $root"
  exit 0
fi

# ---- install -----------------------------------------------------------

[ -f "$binary" ] || die "$binary: not found (build it with scripts/build.sh)"
[ -z "$basesystem_rpm" ] || [ -f "$basesystem_rpm" ] || die "$basesystem_rpm: not found"

if [ "$init" = auto ]; then
  init=sysv
  found=false
  for f in /usr/sbin/init /sbin/init; do
    if [ -L "$prefix$f" ]; then
      case $(readlink "$prefix$f") in *systemd*) init=systemd ;; esac
      found=true
      break
    elif [ -e "$prefix$f" ]; then
      found=true
      break
    fi
  done
  if ! $found && { [ -x "$prefix/usr/lib/systemd/systemd" ] || [ -x "$prefix/lib/systemd/systemd" ]; }; then
    init=systemd
  fi
fi

# The official Node.js binary inside imds-init links libatomic.so.1, which
# minimal systems lack: without it imds-init cannot start at boot.
libatomic=false
for d in /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /lib/aarch64-linux-gnu /usr/lib64 /lib64 /usr/lib /lib; do
  if [ -e "$prefix$d/libatomic.so.1" ]; then libatomic=true; fi
done
$libatomic || echo "install: warning: $root has no libatomic.so.1, which imds-init needs to run: install it (Debian: libatomic1; EL, Amazon Linux: libatomic)" >&2

# What to install: "file MODE SOURCE PATH", "config MODE SOURCE PATH" (only
# if absent) and "link TARGET PATH", in order.
plan=("file 0755 $binary /usr/sbin/imds-init"
  "file 0644 $src/src/imds-init.8 /usr/share/man/man8/imds-init.8"
  "config 0644 $src/src/imds-init.yaml /etc/imds-init.yaml")
note=
if [ "$init" = systemd ]; then
  unitdir=/usr/lib/systemd/system
  if ! is_dir "$unitdir" && is_dir /lib/systemd/system; then unitdir=/lib/systemd/system; fi
  for u in imds-init.service imds-init-user-data.service; do
    plan+=("file 0644 $src/systemd/$u $unitdir/$u"
      "link $unitdir/$u /etc/systemd/system/multi-user.target.wants/$u")
  done
  if [ -z "$prefix" ] && [ -d /run/systemd/system ]; then
    note="systemd is running: run 'systemctl daemon-reload' so it sees the new units"
  fi
else
  if is_dir /etc/rc.d/init.d; then
    rc=/etc/rc.d
    seq=S11
  else
    rc=/etc
    seq=S01
    if [ -e "$prefix/etc/init.d/.depend.start" ]; then
      note="insserv orders this system's boot: run 'update-rc.d imds-init defaults' in it to add imds-init to that order"
    fi
  fi
  plan+=("file 0755 $src/rc/imds-init $rc/init.d/imds-init")
  for n in 2 3 4 5; do
    plan+=("link ../init.d/imds-init $rc/rc$n.d/${seq}imds-init")
  done
fi
if [ -n "$basesystem_rpm" ]; then
  plan+=("file 0644 $basesystem_rpm /var/lib/imds-init/basesystem.rpm")
fi

# Check everything before changing anything.
for p in "${plan[@]}" "file 0600 - $manifest"; do
  read -r kind _ _ path <<<"$p"
  [ "$kind" = link ] && read -r kind _ path <<<"$p"
  check_parents "$path"
done
declare -A ours=()
if [ -f "$prefix$manifest" ]; then
  while read -r kind a b; do
    case $kind in file | link) ours[$b]=1 ;; esac
  done < <(grep -v '^#' "$prefix$manifest")
  # A file of ours that was changed since is kept by the uninstall below:
  # then it would be in the way.
  while read -r kept; do
    [ "$kept" = /etc/imds-init.yaml ] && continue
    die "$prefix$kept was changed since it was installed; move it away first"
  done < <(remove_recorded check)
fi
for p in "${plan[@]}"; do
  read -r kind _ _ path <<<"$p"
  [ "$kind" = link ] && read -r kind _ path <<<"$p"
  [ "$kind" = config ] && continue
  if [ -e "$prefix$path" ] || [ -L "$prefix$path" ]; then
    [ -n "${ours[$path]:-}" ] || die "$prefix$path exists and was not installed by this script; refusing to replace it"
  fi
done

# Installing again: take the old install out first (keeping what changed).
if [ -f "$prefix$manifest" ]; then
  remove_recorded remove >/dev/null
fi

records=()
mkdirs() {
  local path=$1 mode=$2 acc='' part
  local IFS=/
  for part in ${path%/*}; do
    [ -n "$part" ] || continue
    acc=$acc/$part
    if [ ! -d "$prefix$acc" ]; then
      if [ "$acc" = /var/lib/imds-init ]; then mkdir -m 0700 "$prefix$acc"; else mkdir -m "$mode" "$prefix$acc"; fi
      records+=("dir $acc")
    fi
  done
}
put() { # MODE SOURCE PATH
  local tmp=$prefix$3.imds-init-new
  rm -f "$tmp"
  cp "$2" "$tmp"
  chmod "$1" "$tmp"
  [ "$(id -u)" != 0 ] || chown 0:0 "$tmp"
  mv -f "$tmp" "$prefix$3"
  records+=("file $(sha "$prefix$3") $3")
}

for p in "${plan[@]}"; do
  read -r kind a b path <<<"$p"
  case $kind in
  file)
    mkdirs "$path" 0755
    put "$a" "$b" "$path"
    ;;
  config)
    if [ -e "$prefix$path" ] || [ -L "$prefix$path" ]; then
      echo "install: kept the existing $prefix$path"
    else
      mkdirs "$path" 0755
      put "$a" "$b" "$path"
    fi
    ;;
  link)
    path=$b
    mkdirs "$path" 0755
    ln -sfn "$a" "$prefix$path"
    records+=("link $a $path")
    ;;
  esac
done

mkdirs "$manifest" 0755
tmp=$prefix$manifest.new
{
  echo "# imds-init install manifest: scripts/install.sh --uninstall removes these"
  printf '%s\n' "${records[@]}"
} >"$tmp"
chmod 0600 "$tmp"
mv -f "$tmp" "$prefix$manifest"

echo "install: installed imds-init ($init) into $root"
[ -z "$note" ] || echo "install: note: $note"
