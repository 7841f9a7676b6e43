#!/usr/bin/env bash
# Wall time of `vmlaunch --store S -- true` against a hand-written QEMU
# command line that shares the same store with QEMU's built-in 9p
# (-virtfs), on the same kernel: the "vm-exec by hand" baseline. Runs each N
# times, alternating, and prints every time and the medians. Prints numbers;
# never fails on them.
#   bench/boot_vs_9p.sh [N]        (N runs each, default 5; ACCEL=tcg|kvm, default tcg)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n="${1:-5}"
accel="${ACCEL:-tcg}"
cache="${FSD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fsd}"
kdir="$(ls -d "$cache"/kernel/*/ | head -1)"; kdir="${kdir%/}"
version="$(ls "$kdir/lib/modules")"
store="$cache/demo-store"
vmlaunch=build/launcher/vmlaunch
[[ -x "$vmlaunch" && -f "$kdir/vmlinuz" && -d "$store" ]] || { echo "run scripts/setup and build first" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/boot-bench-XXXXXX")"
trap 'rm -rf "$work"' EXIT

# The baseline's initramfs: busybox, the 9p modules, and an init script that
# mounts the store over 9p and runs `true`, then powers off.
mkdir -p "$work/root/bin" "$work/root/m" "$work/root/nix/store" "$work/root/proc" "$work/root/dev"
cp /bin/busybox "$work/root/bin/"
ln -s busybox "$work/root/bin/sh"
for ko in $(modprobe -d "$kdir" -S "$version" --show-depends virtio_pci 9pnet_virtio 9p | awk '$1 == "insmod" {print $2}' | awk '!seen[$0]++'); do
  cp "$ko" "$work/root/m/"
  echo "/bin/busybox insmod /m/$(basename "$ko")" >> "$work/root/mods"
done
cat > "$work/root/init" <<'INIT'
#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox sh /mods
/bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=loose,ro store /nix/store
true
/bin/busybox poweroff -f
INIT
chmod +x "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc 2>/dev/null | gzip > "$work/initrd-9p.gz")

by_hand() {
  qemu-system-x86_64 -accel "$accel" -m 512 -kernel "$kdir/vmlinuz" -initrd "$work/initrd-9p.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=1" -nographic -nodefaults -no-reboot -serial null \
    -virtfs "local,path=$store,security_model=none,mount_tag=store,readonly=on" >/dev/null 2>&1
}
with_vmlaunch() {
  "$vmlaunch" --accel "$accel" --store "$store" -- /bin/true >/dev/null 2>&1
}
with_vmlaunch  # warm the initramfs cache once; not timed

time_ms() { local s e; s=$(date +%s%N); "$@"; e=$(date +%s%N); echo $(((e - s) / 1000000)); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
hand=() ; vml=()
for i in $(seq "$n"); do
  hand+=("$(time_ms by_hand)")
  vml+=("$(time_ms with_vmlaunch)")
done
printf 'run   %s\n' "$(seq -s ' ' "$n")"
printf 'qemu -virtfs by hand (ms):  %s\n' "${hand[*]}"
printf 'vmlaunch -- true (ms):      %s\n' "${vml[*]}"
mh=$(printf '%s\n' "${hand[@]}" | median); mv=$(printf '%s\n' "${vml[@]}" | median)
printf 'median: by hand %d ms, vmlaunch %d ms (vmlaunch/by-hand = %s), accel %s, kernel %s\n' \
  "$mh" "$mv" "$(awk -v a="$mv" -v b="$mh" 'BEGIN {printf "%.2f", a / b}')" "$accel" "$version"
