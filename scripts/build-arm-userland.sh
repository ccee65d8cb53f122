#!/usr/bin/env bash
# Build an aarch64 Debian userland (a stand-in Raspberry Pi OS) in ROOTFS_DIR, to run
# bnn-export's on-device worker under qemu user-mode emulation on an x86-64 host.
#
#   sudo bash scripts/build-arm-userland.sh .cache/arm-rootfs
#
# What it makes:
#   ROOTFS_DIR/                      Debian bookworm arm64 (minbase + python3, gcc, g++)
#   ROOTFS_DIR/opt/bnn-venv/         python3 -m venv --copies, with numpy<2, onnxruntime, onnx,
#                                    setuptools and wheel from PyPI (manylinux aarch64 wheels)
#   ROOTFS_DIR/proc/cpuinfo          an ARM-shaped cpuinfo for the emulated worker (see below)
#   ROOTFS_DIR/.bnn-userland/*.done  one stamp per finished step, timings.txt
#
# Idempotent: each step leaves a stamp and is skipped when its stamp is there, so a second
# run takes seconds. Delete the folder to start over (a failed step is simply retried).
#
# Needs root, debootstrap and qemu-user-static (apt-get install debootstrap
# qemu-user-static). The second stage and every later step run in a chroot, so aarch64
# programs must start through binfmt_misc: the script mounts binfmt_misc if needed and
# registers Debian's qemu-aarch64 entry (with the F flag, so the interpreter is found
# inside the chroot) when it is not registered yet.
#
# Environment: DEBIAN_MIRROR (default: the mirror in /etc/apt, else deb.debian.org),
# SUITE (default bookworm, whose python3 is 3.11 like bnn-export's requires-python).
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 ROOTFS_DIR" >&2
  exit 2
fi
ROOTFS="$(mkdir -p "$1" && cd "$1" && pwd)"
SUITE="${SUITE:-bookworm}"
VENV=/opt/bnn-venv
STAMPS="$ROOTFS/.bnn-userland"
QEMU=qemu-aarch64-static
log() { echo "build-arm-userland: $*" >&2; }
die() { log "error: $*"; exit 1; }
done_() { [[ -f "$STAMPS/$1.done" ]]; }
mark() { mkdir -p "$STAMPS"; date -u +%FT%TZ > "$STAMPS/$1.done"; }
# Seconds per step, appended to $STAMPS/timings.txt (measured facts for the docs).
timed() {
  local name="$1"; shift
  local t0=$SECONDS
  "$@"
  mkdir -p "$STAMPS"
  echo "$name $((SECONDS - t0))s" >> "$STAMPS/timings.txt"
  log "$name took $((SECONDS - t0)) s"
}

[[ $EUID -eq 0 ]] || die "run as root (debootstrap and chroot need it)"
command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install debootstrap"
command -v "$QEMU" >/dev/null || die "$QEMU missing: apt-get install qemu-user-static"

# ---------------------------------------------------------------- binfmt_misc
BINFMT=/proc/sys/fs/binfmt_misc
ensure_binfmt() {
  if [[ ! -f "$BINFMT/register" ]]; then
    mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null \
      || die "binfmt_misc is not mounted and cannot be mounted here; aarch64 programs cannot start in the chroot"
  fi
  if [[ -f "$BINFMT/qemu-aarch64" ]]; then
    grep -q '^enabled' "$BINFMT/qemu-aarch64" || echo 1 > "$BINFMT/qemu-aarch64"
    grep -q '^flags:.*F' "$BINFMT/qemu-aarch64" \
      || die "binfmt entry qemu-aarch64 lacks the F flag (interpreter not usable in a chroot); remove it: echo -1 > $BINFMT/qemu-aarch64"
    return
  fi
  local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  [[ -f "$conf" ]] || die "$conf missing (it comes with qemu-user-static)"
  log "registering $conf with binfmt_misc"
  cat "$conf" > "$BINFMT/register"
  [[ -f "$BINFMT/qemu-aarch64" ]] || die "registering qemu-aarch64 with binfmt_misc failed"
}
ensure_binfmt

# ---------------------------------------------------------------- debootstrap
mirror="${DEBIAN_MIRROR:-}"
if [[ -z "$mirror" && -f /etc/apt/sources.list.d/debian.sources ]]; then
  mirror="$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/debian.sources \
            | grep -v -- '-security' | head -n1 || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"
PACKAGES=python3,python3-venv,gcc,g++,libc6-dev,ca-certificates

first_stage() {
  # --foreign: only download and unpack; the package scripts run in the second stage.
  debootstrap --foreign --arch=arm64 --variant=minbase --include="$PACKAGES" \
    "$SUITE" "$ROOTFS" "$mirror"
}
if ! done_ first-stage; then
  [[ -z "$(ls -A "$ROOTFS" | grep -v '^\.bnn-userland$' || true)" ]] \
    || die "$ROOTFS is not empty and has no finished first stage; remove it and rerun"
  log "debootstrap first stage ($SUITE arm64 from $mirror)"
  timed first-stage first_stage
  mark first-stage
fi

# A chroot with /proc, /sys and /dev, unmounted again on exit (also mounts left behind by
# a killed earlier run: never delete ROOTFS while ROOTFS/dev is a bind mount of /dev).
CHROOT_MOUNTS=(dev/pts dev sys proc)
mount_chroot() {
  local d
  for d in proc sys dev dev/pts; do
    mkdir -p "$ROOTFS/$d"
    mountpoint -q "$ROOTFS/$d" && continue
    case "$d" in
      proc) mount -t proc proc "$ROOTFS/proc" ;;
      sys) mount -t sysfs sysfs "$ROOTFS/sys" ;;
      dev) mount --bind /dev "$ROOTFS/dev" ;;
      dev/pts) mount --bind /dev/pts "$ROOTFS/dev/pts" ;;
    esac
  done
}
unmount_chroot() {
  local d
  for d in "${CHROOT_MOUNTS[@]}"; do
    if mountpoint -q "$ROOTFS/$d"; then
      umount "$ROOTFS/$d" 2>/dev/null || umount -l "$ROOTFS/$d" || true
    fi
  done
}
trap unmount_chroot EXIT
in_chroot() { chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

mount_chroot
if ! done_ second-stage; then
  log "debootstrap second stage (package scripts under qemu; the slow part)"
  timed second-stage chroot "$ROOTFS" /debootstrap/debootstrap --second-stage
  mark second-stage
fi

# ---------------------------------------------------------------- venv with wheels from PyPI
# The host's resolver and CA bundle, so pip in the chroot reaches PyPI the way the host does.
cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
HOST_CA=/etc/ssl/certs/ca-certificates.crt
if [[ -f "$HOST_CA" ]]; then
  cp "$HOST_CA" "$ROOTFS/etc/ssl/certs/bnn-host-ca.crt"
fi
PIP_ENV=(PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/etc/ssl/certs/bnn-host-ca.crt PIP_DEFAULT_TIMEOUT=180)

# The device side of bnn-export (what `pip install bnn-export[device]` pulls: numpy, onnx to
# read the model file, onnxruntime) plus the build backend, so that the sdist can be built
# without build isolation (no network then). The stamp holds this list: change it and the
# step runs again.
VENV_REQS=("numpy>=1.26,<2" "onnxruntime>=1.20" "onnx>=1.17" "setuptools>=68" "wheel")
make_venv() {
  [[ -x "$ROOTFS$VENV/bin/python" ]] || in_chroot python3 -m venv --copies "$VENV"
  in_chroot "${PIP_ENV[@]}" "$VENV/bin/python" -m pip install -q --upgrade pip
  in_chroot "${PIP_ENV[@]}" "$VENV/bin/python" -m pip install -q "${VENV_REQS[@]}"
}
if [[ "$(cat "$STAMPS/venv.reqs" 2>/dev/null)" != "${VENV_REQS[*]}" ]]; then
  log "venv $VENV: ${VENV_REQS[*]} (aarch64 wheels from PyPI)"
  timed venv make_venv
  echo "${VENV_REQS[*]}" > "$STAMPS/venv.reqs"
fi

unmount_chroot

# ---------------------------------------------------------------- the emulated device's view
# The worker runs as `qemu-aarch64-static -L ROOTFS ROOTFS/opt/bnn-venv/bin/python ...`
# (no chroot, so it can work in a host temp dir): qemu looks every absolute path up in
# ROOTFS first. qemu 7.2 passes the host's x86 /proc/cpuinfo through to aarch64 programs,
# and onnxruntime's cpuinfo library crashes on it (SIGSEGV on import) once the host's /sys
# is visible too. An ARM-shaped /proc/cpuinfo in ROOTFS (2 cores, Cortex-A72 part id,
# like a Raspberry Pi 4) is read instead; ROOTFS/proc is an empty mount point otherwise.
# It only keeps the import alive: nothing measured under qemu is ARM latency.
write_cpuinfo() {
  local i
  for i in 0 1; do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n'
    printf 'CPU part\t: 0xd08\nCPU revision\t: 3\n\n'
  done
}
if ! mountpoint -q "$ROOTFS/proc"; then
  write_cpuinfo > "$ROOTFS/proc/cpuinfo"
fi

# The check runs the way the worker will: under qemu -L, outside the chroot.
(cd / && "$QEMU" -L "$ROOTFS" "$ROOTFS$VENV/bin/python" -c '
import platform, numpy, onnx, onnxruntime
assert platform.machine() == "aarch64", platform.machine()
print(f"build-arm-userland: ready: python {platform.python_version()} {platform.machine()}, "
      f"numpy {numpy.__version__}, onnx {onnx.__version__}, "
      f"onnxruntime {onnxruntime.__version__}")
') >&2
log "userland in $ROOTFS (venv $VENV); step times in $STAMPS/timings.txt"
