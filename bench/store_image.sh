#!/usr/bin/env bash
# The store as a share against the store as an image (store.image): wall
# time of `vmlaunch -- true` (start-up, the image already cached) and of a
# `find` over the whole store in the guest, for virtio-fs, 9p (fsd), erofs
# and squashfs, on a synthetic store of many small files. Runs each N times,
# alternating, and prints every time and the medians. Also prints how long
# each image took to make the first time. Prints numbers; never fails on them.
#   bench/store_image.sh [N]      (N runs each, default 5; ACCEL=tcg|kvm, default tcg;
#                                  FILES=number of store files, default 20000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n="${1:-5}"
accel="${ACCEL:-tcg}"
files="${FILES:-20000}"
cache="${FSD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fsd}"
kdir="$(ls -d "$cache"/kernel/*/ | head -1)"; kdir="${kdir%/}"
vmlaunch=build/launcher/vmlaunch
[[ -x "$vmlaunch" && -f "$kdir/vmlinuz" ]] || { echo "run scripts/setup and build first" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/store-image-bench-XXXXXX")"
trap 'rm -rf "$work"' EXIT
# A store: packages of 100 files each, a few KiB apiece, in nested directories.
for p in $(seq 1 $((files / 100))); do
  d="$work/store/$(printf '%032d' "$p")-pkg-$p"
  mkdir -p "$d/bin" "$d/share/doc" "$d/lib"
  for f in $(seq 1 100); do
    case $((f % 3)) in 0) sub=bin ;; 1) sub=share/doc ;; *) sub=lib ;; esac
    head -c $((1024 + (f * 37) % 4096)) /dev/zero > "$d/$sub/f$f"
  done
done
export FSD_CACHE="$work/cache"  # images (and the initramfs) go with the run

spec() {  # spec KIND -> a spec file
  local kind="$1" store
  case "$kind" in
    virtiofs) store="{\"path\": \"$work/store\"}" ;;
    9p) store="{\"path\": \"$work/store\", \"proto\": \"9p\"}" ;;
    *) store="{\"path\": \"$work/store\", \"image\": \"$kind\"}" ;;
  esac
  echo "{\"kernel\": \"$kdir/vmlinuz\", \"memory\": 512, \"accel\": \"$accel\", \"console\": \"quiet\", \"store\": $store}" \
    > "$work/$kind.json"
  echo "$work/$kind.json"
}
time_ms() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(((e - s) / 1000000)); }
median() { tr ' ' '\n' | sort -n | awk 'NF {a[++n]=$1} END {print a[int((n+1)/2)]}'; }
# find's own time in the guest, in ms (busybox date has no %N: /proc/uptime).
find_ms() {
  "$vmlaunch" "$(spec "$1")" -- 'a=$(cut -d" " -f1 /proc/uptime); find /nix/store | wc -l > /dev/null; b=$(cut -d" " -f1 /proc/uptime); echo "find-ms $(echo "$a $b" | awk "{printf \"%d\", (\$2 - \$1) * 1000}")"' \
    2>/dev/null | tr -d '\r' | awk '$1 == "find-ms" {print $2}'
}

kinds=(virtiofs 9p erofs squashfs)
declare -A start finds made
for k in "${kinds[@]}"; do made[$k]="$(time_ms "$vmlaunch" "$(spec "$k")" -- true)"; done  # first run: makes the image
for i in $(seq "$n"); do
  for k in "${kinds[@]}"; do
    start[$k]+="$(time_ms "$vmlaunch" "$(spec "$k")" -- true) "
    finds[$k]+="$(find_ms "$k") "
  done
done
echo "store: $files files in $((files / 100)) packages; accel $accel; $n runs each"
printf '%-9s %12s %14s %14s   %s\n' kind "first run ms" "start-up ms" "find ms" "(start-up runs | find runs)"
for k in "${kinds[@]}"; do
  printf '%-9s %12s %14s %14s   (%s| %s)\n' "$k" "${made[$k]}" "$(echo "${start[$k]}" | median)" "$(echo "${finds[$k]}" | median)" \
    "${start[$k]}" "${finds[$k]}"
done
