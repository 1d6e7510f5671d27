#!/usr/bin/env bash
# Builds the Debian test guest for LunarVMM's Linux boot: the installed cloud kernel
# (linux-image-cloud-amd64) and a busybox-static initramfs whose /init loads the virtio
# modules, prints marker lines on the serial console, lists /dev/vd* and powers off.
#
#   Tools/guest/build-debian-guest.sh --out DIR [--kernel /boot/vmlinuz-VERSION] [--busybox PATH]
#
# Writes DIR/vmlinuz (the bzImage, copied) and DIR/initramfs.cpio.gz (cpio newc, gzip).
# Needs: cpio, gzip, and xz or zstd only if the kernel ships compressed modules. No root.
set -euo pipefail

usage() { echo "usage: $0 --out DIR [--kernel /boot/vmlinuz-VERSION] [--busybox PATH]" >&2; exit 2; }
out="" kernel="" busybox="/bin/busybox"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="${2:-}"; shift 2 ;;
        --kernel) kernel="${2:-}"; shift 2 ;;
        --busybox) busybox="${2:-}"; shift 2 ;;
        *) usage ;;
    esac
done
[ -n "$out" ] || usage

if [ -z "$kernel" ]; then
    # The newest cloud kernel installed.
    kernel="$(ls -1 /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1 || true)"
    [ -n "$kernel" ] || { echo "no /boot/vmlinuz-*-cloud-amd64: apt-get install linux-image-cloud-amd64" >&2; exit 1; }
fi
[ -r "$kernel" ] || { echo "cannot read $kernel" >&2; exit 1; }
version="${kernel##*/vmlinuz-}"
moddir="/lib/modules/$version"
[ -r "$moddir/modules.dep" ] || { echo "no $moddir/modules.dep for kernel $version" >&2; exit 1; }
! command -v file >/dev/null || file -L "$busybox" | grep -q "statically linked" || {
    echo "$busybox is not a static busybox: apt-get install busybox-static" >&2; exit 1; }
for tool in cpio gzip; do command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }; done

# Load order. On Debian's 6.1 kernels virtio.ko itself needs virtio_ring.ko (it calls
# virtio_break_device), so the ring comes first; the check below holds every listed module to
# its dependencies in modules.dep, so a kernel that orders them differently fails here, not in
# the guest.
modules=(virtio_ring virtio virtio_mmio virtio_blk)

path_of() { # module name -> path relative to $moddir, from modules.dep
    awk -F: -v m="$1" '{ n = $1; sub(/.*\//, "", n); sub(/\.ko(\.(xz|zst|gz))?$/, "", n); if (n == m) { print $1; exit } }' "$moddir/modules.dep"
}
loaded=()
for m in "${modules[@]}"; do
    p="$(path_of "$m")"
    [ -n "$p" ] || { echo "kernel $version has no module $m (built in? then this guest is not the one the tests expect)" >&2; exit 1; }
    deps="$(awk -F': *' -v p="$p" '$1 == p { print $2; exit }' "$moddir/modules.dep")"
    for d in $deps; do
        dn="${d##*/}"; dn="${dn%%.ko*}"
        printf '%s\n' "${loaded[@]:-}" | grep -qx "$dn" || {
            echo "module $m needs $dn loaded before it; fix the order in $0" >&2; exit 1; }
    done
    loaded+=("$m")
done

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,lib/modules}
cp "$busybox" "$stage/bin/busybox"
for applet in sh mount insmod ls echo cat sleep poweroff; do ln -s busybox "$stage/bin/$applet"; done

for m in "${modules[@]}"; do
    src="$moddir/$(path_of "$m")"
    case "$src" in
        *.ko) cp "$src" "$stage/lib/modules/$m.ko" ;;
        *.ko.xz) xz -dc "$src" > "$stage/lib/modules/$m.ko" ;;
        *.ko.zst) zstd -qdc "$src" > "$stage/lib/modules/$m.ko" ;;
        *.ko.gz) gzip -dc "$src" > "$stage/lib/modules/$m.ko" ;;
        *) echo "unexpected module file $src" >&2; exit 1 ;;
    esac
done

cat > "$stage/init" <<INIT
#!/bin/sh
# LunarVMM test guest. The kernel found no /dev/console in this initramfs (creating device
# nodes would need root at build time), so the console is opened once devtmpfs is up.
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "lunar-guest: /init reached"
for m in ${modules[*]}; do
    insmod /lib/modules/\$m.ko || echo "lunar-guest: insmod \$m failed"
done
# virtio_blk's probe adds the disk before insmod returns; the wait only covers a slow
# partition scan.
for i in 1 2 3 4 5 6 7 8 9 10; do
    ls /dev/vd* >/dev/null 2>&1 && break
    sleep 0.2
done
echo "lunar-guest: block devices:" \$(ls /dev/vd* 2>/dev/null)
echo "lunar-guest: powering off"
poweroff -f
INIT
chmod 755 "$stage/init"

mkdir -p "$out"
cp "$kernel" "$out/vmlinuz"
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --quiet -o -0 -H newc -R 0:0) | gzip -9n > "$out/initramfs.cpio.gz"
echo "kernel $version: $out/vmlinuz, $out/initramfs.cpio.gz (modules: ${modules[*]})"
