#!/usr/bin/env bash
# The guest layer of the benchmark suite: real workloads in a guest booted
# by vmlaunch, one boot per sharing configuration, each workload 3 times.
#
#   bench/guest.sh [--quick] OUT.csv
#
# The share under test holds `big` (a large file) and `tree/` (a copy of
# /usr/include, ~20k real files); the guest mounts it read-write at /mnt/b.
# Workloads (wall seconds in the guest; "cold" drops the guest's caches
# first, "warm" runs again straight after, so the cache mode shows):
#   seqread       dd of `big` with 1 MiB reads (cold; MiB/s)
#   find          find tree | wc -l (cold, then warm)
#   tar           tar cf - tree | wc -c (cold, then warm)
#   create1000    1,000 small files written, then sync
#   untar         tar xf of tree/ (a tarball in the guest's tmpfs) into the share, then sync
#   append2000    2,000 short lines appended to one file, one write each, then sync
#   write4k       32 MiB written with 4 KiB writes (dd), then sync
#   true          vmlaunch -- true with this share mounted, end to end (host wall time)
# Configurations: fsd's virtio-fs (cache never/auto/always, and auto with the
# writeback cache, "auto+writeback"); fsd's 9p over virtio-vsock
# (msize x cache none/mmap/loose); QEMU's built-in 9p (msize 8K/128K/512K x
# none/loose); the C virtiofsd (QEMU's) and the Rust one (Debian 13's,
# scripts/fetch-rust-virtiofsd), each attached with extraArgs.
# ACCEL=tcg|kvm|auto picks the accelerator (default tcg: nested KVM is not
# everywhere); TREE="DIR..." copies those directories into tree/ instead of
# /usr/include (/usr/include/linux with --quick); ONLY=REGEX runs only the
# configurations whose LABEL@MSIZE matches (e.g. 'fsd-9p:loose@524288');
# FSD=PATH is the fsd binary vmlaunch starts; BIG_MIB=N sizes `big` (256 MiB,
# 32 with --quick).
# Rows (appended to OUT.csv): layer,server,workload,msize,conns,median,min,max,unit,reps
set -euo pipefail
usage() { sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
quick="" csv=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "bench/guest.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) [[ -z "$csv" ]] || { echo "bench/guest.sh: one OUT.csv only (see --help)" >&2; exit 2; }; csv="$1"; shift ;;
  esac
done
[[ -n "$csv" ]] || { echo "usage: bench/guest.sh [--quick] OUT.csv (see --help)" >&2; exit 2; }
csv="$(realpath -m "$csv")"  # before the cd below
cd "$(dirname "${BASH_SOURCE[0]}")/.."
accel="${ACCEL:-tcg}"
vmlaunch=build/launcher/vmlaunch
virtiofsd=/usr/lib/qemu/virtiofsd
cache="${FSD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fsd}"
kdir="$(ls -d "$cache"/kernel/*/ 2>/dev/null | head -1)"; kdir="${kdir%/}"
store="$cache/demo-store"
[[ -x "$vmlaunch" && -n "$kdir" && -f "$kdir/vmlinuz" && -d "$store" ]] \
  || { echo "bench/guest.sh: run scripts/setup and build vmlaunch first (bench/run does)" >&2; exit 1; }
modules="$(ls -d "$kdir"/lib/modules/* | head -1)"

work="$(mktemp -d "${TMPDIR:-/tmp}/fsd-guest-bench-XXXXXX")"
vfs_pid=""
cleanup() {
  if [[ -n "$vfs_pid" ]]; then kill "$vfs_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The share: `big` and a tree of real files.
share="$work/share"
mkdir -p "$share"
big_mib="${BIG_MIB:-$([[ -n "$quick" ]] && echo 32 || echo 256)}"
head -c $((big_mib << 20)) /dev/urandom > "$share/big"
# TREE="DIR..." picks the directories copied into tree/ instead.
tree_dirs="${TREE:-$([[ -n "$quick" ]] && echo /usr/include/linux || echo /usr/include)}"
mkdir -p "$share/tree"
for d in $tree_dirs; do cp -r "$d" "$share/tree/"; done
files=$(find "$share/tree" -type f | wc -l)
echo "guest: share with a ${big_mib} MiB file and $files files in tree/ ($(du -sh --apparent-size "$share/tree" | cut -f1)); accel $accel" \
  | tee "${csv%.csv}.txt"

# The guest side: each workload 3 times, one line per run: "@@ workload seconds".
read -r -d '' guest_script <<'GUEST' || true
set -e
t() { awk '{print $1}' /proc/uptime; }
run() {  # NAME COLD(1|0) COMMAND...
  name=$1; cold=$2; shift 2
  for rep in 1 2 3; do
    sync; [ "$cold" = 1 ] && echo 3 > /proc/sys/vm/drop_caches
    a=$(t); "$@" > /dev/null; b=$(t)
    echo "@@ $name $(awk "BEGIN {print $b - $a}")"
  done
}
cd /mnt/b
run seqread 1 dd if=big of=/dev/null bs=1M
run find 1 sh -c 'find tree | wc -l'
run find-warm 0 sh -c 'find tree | wc -l'
run tar 1 sh -c 'tar cf - tree | wc -c'
run tar-warm 0 sh -c 'tar cf - tree | wc -c'
mk() { mkdir -p w; i=0; while [ $i -lt 1000 ]; do echo small > w/f$i; i=$((i + 1)); done; sync; rm -rf w; }
run create1000 0 mk
tar cf /tmp/tree.tar tree
untar() { mkdir -p x; tar xf /tmp/tree.tar -C x; sync; rm -rf x; }
run untar 0 untar
rm -f /tmp/tree.tar
appends() { i=0; while [ $i -lt 2000 ]; do echo "line $i" >> log; i=$((i + 1)); done; sync; rm -f log; }
run append2000 0 appends
w4k() { dd if=/dev/zero of=w4k bs=4k count=8192 2> /dev/null; sync; rm -f w4k; }
run write4k 0 w4k
GUEST

# spec SHARE_JSON EXTRA_ARGS_JSON MOUNT_COMMAND SCRIPT -> a spec file path
spec() {
  local f="$work/spec.json"
  python3 - "$@" "$kdir/vmlinuz" "$modules" > "$f" <<'PY'
import json, sys
share, extra, mount, script, kernel, modules = sys.argv[1:7]
spec = {"memory": 1024, "cpus": 2, "timeout": 1800, "kernel": kernel, "modules": modules, "shares": json.loads(share),
        "qemu": {"extraArgs": json.loads(extra)},
        "command": (mount + "\n" if mount else "") + script}
print(json.dumps(spec))
PY
  echo "$f"
}

median3() { sort -g | awk '{a[NR]=$1} END {printf "%.3f,%.3f,%.3f", a[2], a[1], a[3]}'; }

# Run before every boot (the C virtiofsd needs a fresh process per front-end).
pre_boot=:

# One configuration: LABEL MSIZE SHARE_JSON EXTRA_ARGS_JSON MOUNT_COMMAND
run_config() {
  local label="$1" msize="$2" shares="$3" extra="$4" mount="$5"
  [[ "$label@$msize" =~ ${ONLY:-.} ]] || return 0
  echo "== guest: $label"
  local log="$work/run.log"
  $pre_boot
  if ! "$vmlaunch" --accel "$accel" --store "$store" ${FSD:+--fsd "$FSD"} "$(spec "$shares" "$extra" "$mount" "$guest_script")" > "$log" 2>&1; then
    echo "bench/guest.sh: $label failed; its rows are missing. The end of its log:" >&2
    tail -20 "$log" >&2
    return 0
  fi
  for w in $(tr -d '\r' < "$log" | awk '$1 == "@@" {print $2}' | awk '!seen[$0]++'); do
    local stats unit=s
    # seqread in MiB/s; the rest in seconds.
    [[ $w == seqread ]] && unit=MiB/s
    stats="$(tr -d '\r' < "$log" | awk -v w="$w" -v mib="$big_mib" -v u="$unit" \
      '$1 == "@@" && $2 == w {print (u == "s" ? $3 : mib / ($3 > 0.005 ? $3 : 0.005))}' | median3)"
    echo "guest,$label,$w,$msize,1,$stats,$unit,3" | tee -a "$csv"
  done
  # `true` end to end: the host's wall time for a whole run with this share mounted.
  local times=() t0 t1
  for _ in 1 2 3; do
    $pre_boot
    t0=$(date +%s%N)
    "$vmlaunch" --accel "$accel" --store "$store" ${FSD:+--fsd "$FSD"} "$(spec "$shares" "$extra" "$mount" true)" > "$log" 2>&1 \
      || { echo "bench/guest.sh: $label: the run of true failed" >&2; tail -5 "$log" >&2; return 0; }
    t1=$(date +%s%N)
    times+=("$(awk "BEGIN {print ($t1 - $t0) / 1e9}")")
  done
  echo "guest,$label,true,$msize,1,$(printf '%s\n' "${times[@]}" | median3),s,3" | tee -a "$csv"
}

start_virtiofsd() {  # uses $vmode and $vfsd_kind (c or rust)
  if [[ -n "$vfs_pid" ]]; then kill "$vfs_pid" 2>/dev/null || true; wait "$vfs_pid" 2>/dev/null || true; fi
  rm -f "$work/vfsd.sock"
  if [[ $vfsd_kind == rust ]]; then
    "$rust_virtiofsd" --socket-path="$work/vfsd.sock" --shared-dir="$share" --cache="$rmode" --sandbox=namespace \
      2>> "$work/virtiofsd-rust.log" &
  else
    "$virtiofsd" --socket-path="$work/vfsd.sock" -o source="$share" -o cache="$vmode" -o sandbox=chroot \
      2>> "$work/virtiofsd.log" &
  fi
  vfs_pid=$!
  for _ in $(seq 50); do [[ -S "$work/vfsd.sock" ]] && return; sleep 0.1; done
  echo "bench/guest.sh: virtiofsd did not start" >&2
}

share_json() {  # PROTO CACHE [MSIZE | writeback]
  python3 -c 'import json, sys
s = {"tag": "bench", "source": sys.argv[1], "target": "/mnt/b", "proto": sys.argv[2], "cache": sys.argv[3]}
if len(sys.argv) > 4 and sys.argv[4] == "writeback": s["writeback"] = True
elif len(sys.argv) > 4: s["msize"] = int(sys.argv[4])
print(json.dumps([s]))' "$share" "$@"
}

# Spec caches map to 9p's cache= as never->none, auto->mmap, always->loose.
declare -A p9cache=([none]=never [mmap]=auto [loose]=always)

if [[ -n "$quick" ]]; then
  vf_modes=(auto); vfsd_modes=(auto); fsd9p=("524288 loose"); qemu9p=("524288 loose")
else
  vf_modes=(never auto always); vfsd_modes=(never auto always)
  fsd9p=("131072 none" "131072 loose" "524288 none" "524288 mmap" "524288 loose")
  qemu9p=("8192 none" "8192 loose" "131072 none" "131072 loose" "524288 none" "524288 loose")
fi

for m in "${vf_modes[@]}"; do
  run_config "fsd-virtiofs:$m" 0 "$(share_json virtiofs "$m")" '[]' ""
done
run_config "fsd-virtiofs:auto+writeback" 0 "$(share_json virtiofs auto writeback)" '[]' ""
# Both virtiofsds: the C one (QEMU 7.2's) and the Rust one users run today
# (fetched by scripts/fetch-rust-virtiofsd; left out when it cannot be).
rust_virtiofsd="$(scripts/fetch-rust-virtiofsd 2>/dev/null)" || rust_virtiofsd=""
for vfsd_kind in c ${rust_virtiofsd:+rust}; do
  for m in "${vfsd_modes[@]}"; do
    vmode=$([[ $m == never ]] && echo none || echo "$m"); rmode="$m"
    extra="$(python3 -c 'import json, sys; print(json.dumps(["-chardev", "socket,id=vfsd,path=" + sys.argv[1],
      "-device", "vhost-user-fs-pci,chardev=vfsd,tag=bench"]))' "$work/vfsd.sock")"
    pre_boot=start_virtiofsd
    run_config "virtiofsd$([[ $vfsd_kind == rust ]] && echo -rust):$m" 0 '[]' "$extra" \
      "mkdir -p /mnt/b && mount -t virtiofs bench /mnt/b"
    pre_boot=:
    kill "$vfs_pid" 2>/dev/null || true; wait "$vfs_pid" 2>/dev/null || true; vfs_pid=""
  done
done
for c in "${fsd9p[@]}"; do
  read -r ms cache <<< "$c"
  run_config "fsd-9p:$cache" "$ms" "$(share_json 9p "${p9cache[$cache]}" "$ms")" '[]' ""
done
for c in "${qemu9p[@]}"; do
  read -r ms cache <<< "$c"
  run_config "qemu-9p:$cache" "$ms" "$(share_json 9p-qemu "${p9cache[$cache]}" "$ms")" '[]' ""
done
