#!/usr/bin/env bash
# Debian packages the test suite and the ARM/ssh paths need: a cross compiler and
# qemu-user for the aarch64 kernel tests, an ssh server/client for the loopback
# device tests, debootstrap for the aarch64 userland of `make test-arm`, and LLVM 19's
# llvm-mca for the modeled section of `make bench` (benchmarks/bench_modeled.py).
# Installs only what is missing; a no-op when everything is present.
set -euo pipefail
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
[ -d /usr/aarch64-linux-gnu/lib ] || need+=(libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null || need+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
[ -d /usr/arm-linux-gnueabihf/lib ] || need+=(libc6-dev-armhf-cross)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
command -v g++ >/dev/null || need+=(g++)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
[ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v ssh >/dev/null || need+=(openssh-client)
command -v llvm-mca-19 >/dev/null || [ -x /usr/lib/llvm-19/bin/llvm-mca ] || need+=(llvm-19)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "warning: missing system packages (${need[*]}); run as root or install them: apt-get install ${need[*]}" >&2
  exit 0
fi
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
