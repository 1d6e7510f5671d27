#!/usr/bin/env bash
# LunarVMM against fio, part (a): the virtio-blk device path driven from the host side.
#
# A synthetic driver (no guest code runs) keeps requests in a virtqueue in guest memory; the
# device's I/O thread serves them from a fully written 1 GiB LunarFS file straight to the
# volume image through io_uring. fio --ioengine=io_uring --direct=1 runs on the very same
# bytes of the same image (the file lies in one piece on it: fio gets its offset and size).
# Same run, alternating who goes first; the figure kept for each side is its median over
# the rounds.
#
# Workloads: randread, randwrite (4 KiB, QD 32: IOPS), seqread, seqwrite (1 MiB, QD 8: MB/s).
# Target: every ratio >= 0.90.
# Last line: summary: blk_vs_fio=R   (R = the geometric mean of the four ratios; min=M too)
#
# Usage: Tools/bench/vmm.sh [--dir DIR] [--size 1G] [--runtime 5] [--rounds 3]
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
dir="${TMPDIR:-/var/tmp}"
size=1G
runtime=5
rounds=3
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) dir=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --runtime) runtime=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "vmm.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
command -v fio >/dev/null || { echo "vmm.sh: fio is not installed (apt-get install -y fio)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "vmm.sh: python3 is needed to read JSON" >&2; exit 2; }

echo "building lunar-vmm-bench (release) ..." >&2
swift build -c release --package-path "$root" --product lunar-vmm-bench >&2
bench="$root/.build/release/lunar-vmm-bench"

work=$(mktemp -d "$dir/lunar-vmm-bench-XXXXXX")
trap 'rm -rf "$work"' EXIT
lun="$work/volume.img"
json() { python3 -c "import json, sys; print(json.load(sys.stdin)$1)"; }

echo "formatting $lun and writing a $size file in it ..." >&2
layout=$("$bench" prepare "$lun" --size "$size")
offset=$(echo "$layout" | json '["device_offset"]')
bytes=$(echo "$layout" | json '["size"]')
if [ "$(echo "$layout" | json '["contiguous"]')" != True ]; then
    echo "vmm.sh: the file is not in one piece on the image; fio would not see the same bytes" >&2
    exit 1
fi

fio_figure() {  # workload -> IOPS (random) or MB/s (sequential)
    local workload=$1 bs depth rw=$1
    case $workload in rand*) bs=4k depth=32 ;; *) bs=1M depth=8 ;; esac
    case $workload in seqread) rw=read ;; seqwrite) rw=write ;; esac
    fio --name="$workload" --filename="$lun" --offset="$offset" --size="$bytes" --rw="$rw" --bs=$bs \
        --iodepth=$depth --ioengine=io_uring --direct=1 --runtime="$runtime" --time_based --output-format=json |
        python3 -c '
import json, sys
job = json.load(sys.stdin)["jobs"][0]
side = job["write"] if sys.argv[1].endswith("write") else job["read"]
print(side["iops"] if sys.argv[1].startswith("rand") else side["bw_bytes"] / 1e6)' "$workload"
}

lunar_figure() {  # workload
    "$bench" run "$lun" --workload "$1" --runtime "$runtime" |
        python3 -c '
import json, sys
r = json.load(sys.stdin)
print(r["iops"] if sys.argv[1].startswith("rand") else r["mb_per_s"])' "$1"
}

median() { python3 -c 'import statistics, sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

printf '\nvirtio-blk (host-side driver, I/O thread, io_uring) on a %s LunarFS file vs fio --ioengine=io_uring --direct=1 on the same bytes, %s s x %s rounds\n' \
    "$size" "$runtime" "$rounds"
ratios=()
for workload in randread randwrite seqread seqwrite; do
    lunar_runs=() fio_runs=()
    for ((round = 0; round < rounds; round++)); do
        if ((round % 2 == 0)); then
            lunar_runs+=("$(lunar_figure "$workload")"); fio_runs+=("$(fio_figure "$workload")")
        else
            fio_runs+=("$(fio_figure "$workload")"); lunar_runs+=("$(lunar_figure "$workload")")
        fi
    done
    l=$(median "${lunar_runs[@]}") f=$(median "${fio_runs[@]}")
    unit=IOPS; case $workload in seq*) unit=MB/s ;; esac
    ratio=$(python3 -c "print(f'{$l / $f:.2f}')")
    printf 'blk %-9s lunar=%.0f fio=%.0f ratio=%s (%s; runs lunar: %s fio: %s)\n' "$workload" "$l" "$f" "$ratio" "$unit" \
        "$(printf '%.0f ' "${lunar_runs[@]}")" "$(printf '%.0f ' "${fio_runs[@]}")"
    ratios+=("$ratio")
done
python3 -c '
import math, sys
r = [float(x) for x in sys.argv[1:]]
print(f"summary: blk_vs_fio={math.exp(sum(map(math.log, r)) / len(r)):.2f} (geometric mean of the four ratios; min={min(r):.2f})")' "${ratios[@]}"
