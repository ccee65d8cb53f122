#!/usr/bin/env bash
# Fetch onnxruntime C/C++ headers (Debian trixie `libonnxruntime-dev`, ORT 1.21 API) into
# build/ort-headers/ without touching the system apt configuration: a private sources
# list, lists dir and cache dir are used. Idempotent: exits at once when present.
#
# Output: build/ort-headers/include/onnxruntime_cxx_api.h (and friends), and
# build/ort-headers/COPYRIGHT (the package's copyright file: onnxruntime is MIT licensed;
# `setup.py sdist` ships the headers and this file so an sdist builds on a device).
# Override: set ORT_INCLUDE_DIR to a directory with onnxruntime_c_api.h and this script
# is not needed (setup.py uses that directly).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/build/ort-headers"
INC="$OUT/include"
if [[ -f "$INC/onnxruntime_lite_custom_op.h" && -f "$INC/onnxruntime_c_api.h" \
      && -f "$OUT/COPYRIGHT" ]]; then
  echo "fetch_ort_headers: headers already present in $INC"
  exit 0
fi

# Reuse the Debian mirror the machine already uses (first non-security deb URI).
mirror=""
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
  mirror="$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/debian.sources \
            | grep -v -- '-security' | head -n1 || true)"
fi
if [[ -z "$mirror" && -f /etc/apt/sources.list ]]; then
  mirror="$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++)
            if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list || true)"
fi
if [[ -z "$mirror" ]]; then
  echo "fetch_ort_headers: no Debian mirror found in /etc/apt sources;" \
       "set ORT_INCLUDE_DIR to an onnxruntime include dir instead" >&2
  exit 1
fi
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if [[ ! -f "$keyring" ]]; then
  echo "fetch_ort_headers: $keyring missing (apt-get install debian-archive-keyring)" >&2
  exit 1
fi

WORK="$OUT/apt"
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/deb"
cat > "$WORK/sources.list" <<SRC
deb [signed-by=$keyring] $mirror trixie main
SRC
APT_OPTS=(
  -o "Dir::Etc::SourceList=$WORK/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$WORK/lists"
  -o "Dir::Cache=$WORK/cache"
  -o "Dir::State::Status=/var/lib/dpkg/status"
  -o "APT::Architecture=amd64"
  -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=root"
)
echo "fetch_ort_headers: updating private package list (trixie)"
apt-get "${APT_OPTS[@]}" -qq update
echo "fetch_ort_headers: downloading libonnxruntime-dev"
(cd "$WORK/deb" && rm -f ./*.deb && apt-get "${APT_OPTS[@]}" -qq download libonnxruntime-dev)
deb="$(ls "$WORK"/deb/libonnxruntime-dev_*.deb | head -n1)"
rm -rf "$WORK/x"
dpkg-deb -x "$deb" "$WORK/x"
hdr="$(dirname "$(find "$WORK/x" -name onnxruntime_c_api.h | head -n1)")"
if [[ ! -f "$hdr/onnxruntime_lite_custom_op.h" ]]; then
  echo "fetch_ort_headers: $deb has no onnxruntime_lite_custom_op.h" >&2
  exit 1
fi
rm -rf "$INC"
mkdir -p "$INC"
cp -r "$hdr"/. "$INC"/
copyright="$WORK/x/usr/share/doc/libonnxruntime-dev/copyright"
if [[ ! -f "$copyright" ]]; then
  echo "fetch_ort_headers: $deb has no copyright file" >&2
  exit 1
fi
cp "$copyright" "$OUT/COPYRIGHT"
basename "$deb" > "$OUT/SOURCE"
rm -rf "$WORK/x" "$WORK/cache"
echo "fetch_ort_headers: headers in $INC ($(cat "$OUT/SOURCE"))"
