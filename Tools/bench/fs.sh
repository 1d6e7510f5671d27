#!/usr/bin/env bash
# LunarFS against fio: the LunarIO workloads on a fully written 1 GiB file inside a volume,
# driven straight through the file's block map, against fio --direct=1 on a raw file of the
# same size on the same host file system, in the same run, alternating.
#
# Also: first-write throughput into a thin file (allocation, zeroing, journal commits
# included; fio's sequential write to a fresh raw file as the peer), and creating 100 000
# empty files in one directory (files/s, including the final sync).
#
# Workloads: randread, randwrite (4 KiB, QD 32), seqread, seqwrite (1 MiB, QD 8), io_uring.
# Target: every ratio >= 0.90.
# Last line: summary: randread=R randwrite=R seqread=R seqwrite=R create_per_s=N
#
# Usage: Tools/bench/fs.sh [--dir DIR] [--size 1G] [--runtime 5] [--rounds 3] [--files 100000]
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
. "$(dirname "$0")/common.sh"
dir="${TMPDIR:-/var/tmp}"
size=1G
runtime=5
rounds=3
files=100000
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) dir=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --runtime) runtime=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --files) files=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "fs.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
command -v fio >/dev/null || { echo "fs.sh: fio is not installed (apt-get install -y fio)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "fs.sh: python3 is needed to read JSON" >&2; exit 2; }

echo "building lunar (release) ..." >&2
swift build -c release --package-path "$root" >&2
lunar="$root/.build/release/lunar"

work=$(mktemp -d "$dir/lunar-fs-bench-XXXXXX")
trap 'rm -rf "$work"' EXIT
lun="$work/volume.img"
raw="$work/raw.img"

"$lunar" fs mkfs "$lun" --size 8G --max-files $((files + 1000)) >/dev/null
echo "first write of $size into a thin file in the volume ..." >&2
lunar_first=$("$lunar" fs bench "$lun" --layout "$size" --json | json '["first_write_mb_per_s"]')
fio_first=$(fio --name=first --filename="$raw" --rw=write --bs=1M --size="$size" --iodepth=1 --direct=1 \
    --ioengine=io_uring --end_fsync=1 --output-format=json | json '["jobs"][0]["write"]["bw_bytes"] / 1e6')

fio_figure() {  # workload -> IOPS (random) or MB/s (sequential)
    local workload=$1 bs depth rw=$1
    case $workload in rand*) bs=4k depth=32 ;; *) bs=1M depth=8 ;; esac
    case $workload in seqread) rw=read ;; seqwrite) rw=write ;; esac
    fio --name="$workload" --filename="$raw" --rw="$rw" --bs=$bs --iodepth=$depth --ioengine=io_uring \
        --direct=1 --size="$size" --runtime="$runtime" --time_based --output-format=json |
        python3 -c '
import json, sys
job = json.load(sys.stdin)["jobs"][0]
side = job["write"] if sys.argv[1].endswith("write") else job["read"]
print(side["iops"] if sys.argv[1].startswith("rand") else side["bw_bytes"] / 1e6)' "$workload"
}

lunar_figure() {  # workload
    "$lunar" fs bench "$lun" --workload "$1" --runtime "$runtime" --json |
        python3 -c '
import json, sys
r = json.load(sys.stdin)["results"][0]
print(r["iops"] if sys.argv[1].startswith("rand") else r["mb_per_s"])' "$1"
}


printf '\nLunarFS file (%s, 1 MiB blocks) vs fio --ioengine=io_uring --direct=1 on a raw file, %s s x %s rounds\n' \
    "$size" "$runtime" "$rounds"
printf '%-12s %-6s %14s %14s %7s %11s\n' workload unit lunarfs fio ratio rounds
printf '%-12s %-6s %14.0f %14.0f %7.2f\n' first-write MB/s "$lunar_first" "$fio_first" \
    "$(python3 -c "print($lunar_first / $fio_first)")"
summary=""
for workload in randread randwrite seqread seqwrite; do
    alternate "$rounds" "$workload"
    l=$(median "${lunar_runs[@]}") f=$(median "${fio_runs[@]}")
    unit=IOPS; case $workload in seq*) unit=MB/s ;; esac
    ratio=$(python3 -c "print(f'{$l / $f:.2f}')")
    printf '%-12s %-6s %14.0f %14.0f %7s %11s\n' "$workload" "$unit" "$l" "$f" "$ratio" "$(ratio_spread)"
    summary+="$workload=$ratio "
done

echo "creating $files empty files in one directory ..." >&2
create=$("$lunar" fs bench "$lun" --create "$files" --json | json '["files_per_s"]')
printf '%-12s %-6s %14.0f\n' create files/s "$create"
printf 'summary: %screate_per_s=%.0f\n' "$summary" "$create"
