#!/usr/bin/env bash
# LunarDisk's targets (Spec/disk.md), with QEMU's qcow2 chain beside them in the same run.
#
#  (a) lunar-vmm-bench disk (Sources/lunar-vmm-bench/DiskBench.swift), on one sparse volume image:
#        snap_ms_small, snap_ms_large  snapshot create on a disk with --small and one with --large
#                                      bytes written, median of 5 (target: both < 10 ms, the same
#                                      within noise)
#        clone_ms                      linked clone of the --large disk (target < 10 ms)
#        chain32_read                  4 KiB random reads QD 32 through the disk channel (the VM's
#                                      virtio-blk path, driven from the host side) on a disk with a
#                                      32-deep snapshot chain (64 4 KiB writes at each level) over
#                                      an identical disk with none; rounds take turns (target >= 0.95)
#        cow_write, cow_bytes_per_byte 4 KiB random writes QD 32 just after a snapshot over the same
#                                      disk's with no snapshot, and the bytes the disk then holds
#                                      alone per byte written (each first write to a 64 KiB grain
#                                      copies it)
#        rewrite                       the same writes once every block was rewritten after a
#                                      snapshot (nothing left to copy) over an identical disk
#                                      that never had one, rounds taking turns (target >= 0.95)
#        delete_ms                     deleting the snapshot that then owns every block of an
#                                      --owned disk
#  (b) stun_ms: `lunar vm snapshot --json` of a running VM (the idle freestanding guest, a disk
#      with --small written), median of 9 (target < 5 ms).
#  (c) QEMU: `qemu-img bench` (4 KiB reads QD 32, O_DIRECT, io_uring, the whole --io-size image
#      in order) on a qcow2 image with a 32-deep backing chain built the same way, over the same on
#      the base image alone: qemu_chain32_read, beside chain32_read.
#
# Last line: summary: snap_ms_small=N snap_ms_large=N chain32_read=R cow_write=R rewrite=R
#                     clone_ms=N delete_ms=N stun_ms=N qemu_chain32_read=R cow_bytes_per_byte=N
#
# Usage: Tools/bench/disk.sh [--small 256M] [--large 16G] [--owned 4G] [--io-size 1G]
#                            [--runtime 5] [--rounds 3] [--parts "disk stun qemu"]
# The volume image needs about large + 2 owned + 3 io-size of free space under $TMPDIR.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
. "$(dirname "$0")/common.sh"
small=256M large=16G owned=4G io_size=1G runtime=5 rounds=3 parts="disk stun qemu"
while [ $# -gt 0 ]; do
    case "$1" in
        --small) small=$2; shift 2 ;;
        --large) large=$2; shift 2 ;;
        --owned) owned=$2; shift 2 ;;
        --io-size) io_size=$2; shift 2 ;;
        --runtime) runtime=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --parts) parts=$2; shift 2 ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "disk.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for tool in python3 gcc ld qemu-img qemu-io; do
    command -v $tool >/dev/null || { echo "disk.sh: $tool is not installed" >&2; exit 2; }
done

echo "building lunar, lunar-vmm and lunar-vmm-bench (release) ..." >&2
swift build -c release --package-path "$root" >&2
swift build -c release --package-path "$root" --product lunar-vmm-bench >&2
bin=$root/.build/release
work=$(mktemp -d "${TMPDIR:-/var/tmp}/lunar-disk-bench-XXXXXX")
trap 'rm -rf "$work"' EXIT
export LUNAR_RUN_DIR=$work/run

declare -A figure=([snap_ms_small]=n/a [snap_ms_large]=n/a [chain32_read]=n/a [cow_write]=n/a [rewrite]=n/a
                   [clone_ms]=n/a [delete_ms]=n/a [stun_ms]=n/a [qemu_chain32_read]=n/a [cow_bytes_per_byte]=n/a)

bench_disk() {
    echo "(a) LunarDisk: writing --large $large and the other disks, then measuring ..." >&2
    local line summary
    while IFS= read -r line; do
        echo "$line"
        case "$line" in *'"summary"'*) summary=$line ;; esac
    done < <("$bin/lunar-vmm-bench" disk "$work/disk.img" --small "$small" --large "$large" --owned "$owned" \
                 --io-size "$io_size" --runtime "$runtime" --rounds "$rounds")
    rm -f "$work/disk.img"
    for key in snap_ms_small snap_ms_large chain32_read cow_write rewrite clone_ms delete_ms cow_bytes_per_byte; do
        figure[$key]=$(echo "$summary" | json "[\"summary\"][\"$key\"]")
    done
}

bench_stun() {
    echo "(b) stun: snapshots of a running VM ..." >&2
    local guests=$root/Tools/guest/freestanding vol=$work/stun.img sock="" i stuns=()
    gcc -ffreestanding -nostdlib -fno-pic -fno-pie -O2 -fno-asynchronous-unwind-tables -mno-red-zone -m64 -DIDLE \
        -c "$guests/hello.c" -o "$work/idle.o"
    ld -Ttext=0x100000 -e _start --oformat binary -o "$work/idle.bin" "$work/idle.o"
    "$bin/lunar" fs mkfs "$vol" --size 4G >/dev/null
    "$bin/lunar" vm create "$vol" stun --memory 64M --image "$work/idle.bin" --disk 1G --console none >/dev/null
    head -c "$small" /dev/urandom >"$work/data.raw"
    "$bin/lunar" disk import "$work/data.raw" "$vol:/vms/stun/disk0.raw" >/dev/null
    "$bin/lunar" vm run "$vol" stun &
    local vm=$!
    for ((i = 0; i < 100; i++)); do
        sock=$(ls "$LUNAR_RUN_DIR"/*/stun.sock 2>/dev/null || true)
        [ -z "$sock" ] || break
        sleep 0.1
    done
    [ -n "$sock" ] || { echo "disk.sh: the VM's control socket did not appear" >&2; kill $vm; return 1; }
    for ((i = 0; i < 9; i++)); do
        stuns+=("$("$bin/lunar" vm snapshot "$vol" stun "s$i" --json | json '["stun_ms"]')")
    done
    "$bin/lunar" vm stop "$vol" stun >/dev/null
    wait $vm || true
    echo "{\"figure\": \"stun\", \"stun_ms_each\": [$(IFS=,; echo "${stuns[*]}")]}"
    figure[stun_ms]=$(median "${stuns[@]}")
}

bench_qemu() {
    echo "(c) QEMU: a 32-deep qcow2 chain ..." >&2
    local i writes level base=$work/q0.qcow2 bytes
    bytes=$(python3 -c "import re,sys; m=re.fullmatch(r'(\d+)([KMGT]?)', sys.argv[1]); print(int(m[1]) << {'':0,'K':10,'M':20,'G':30,'T':40}[m[2]])" "$io_size")
    qemu-img create -q -f qcow2 "$base" "$bytes"
    qemu-io -f qcow2 -c "write -P 0x5a 0 $bytes" "$base" >/dev/null
    for ((i = 1; i <= 32; i++)); do
        level=$work/q$i.qcow2
        qemu-img create -q -f qcow2 -F qcow2 -b "$base" "$level"
        writes=$(python3 -c "import random,sys; r=random.Random(int(sys.argv[1])); n=int(sys.argv[2])//4096; print(' '.join('-c \"write -P %d %d 4k\"' % (int(sys.argv[1]), r.randrange(n)*4096) for _ in range(64)))" "$i" "$bytes")
        eval qemu-io -f qcow2 "$writes" "$level" >/dev/null
        base=$level
    done
    qemu_time() {
        qemu-img bench -f qcow2 -t none -i io_uring -d 32 -s 4k -S 4k -c $((bytes / 4096)) "$1" | sed -n 's/.*completed in \([0-9.]*\) seconds.*/\1/p'
    }
    local flat=() deep=() r
    for ((r = 0; r < rounds; r++)); do
        flat+=("$(qemu_time "$work/q0.qcow2")"); deep+=("$(qemu_time "$work/q32.qcow2")")
    done
    local f d
    f=$(median "${flat[@]}"); d=$(median "${deep[@]}")
    echo "{\"figure\": \"qemu_chain32_read\", \"seconds_no_chain\": $f, \"seconds_32_deep\": $d}"
    figure[qemu_chain32_read]=$(python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$f" "$d")
}

for part in $parts; do
    case $part in
        disk) bench_disk ;;
        stun) bench_stun ;;
        qemu) bench_qemu ;;
        *) echo "disk.sh: unknown part $part (disk, stun, qemu)" >&2; exit 2 ;;
    esac
done

echo "summary: snap_ms_small=${figure[snap_ms_small]} snap_ms_large=${figure[snap_ms_large]} chain32_read=${figure[chain32_read]}" \
     "cow_write=${figure[cow_write]} rewrite=${figure[rewrite]} clone_ms=${figure[clone_ms]} delete_ms=${figure[delete_ms]}" \
     "stun_ms=${figure[stun_ms]} qemu_chain32_read=${figure[qemu_chain32_read]} cow_bytes_per_byte=${figure[cow_bytes_per_byte]}"
