#!/usr/bin/env bash
# LunarIO against fio on the same file, in the same run, alternating.
#
# Workloads (O_DIRECT, identical parameters for both): randread and randwrite (4 KiB, QD 32),
# seqread and seqwrite (1 MiB, QD 8). Each round runs both on one workload, taking turns at
# going first; the figure kept for each side is its median over the rounds, and "rounds" shows
# the lowest and highest per-round ratio beside it. Random workloads compare IOPS,
# sequential ones MB/s. The io_uring table compares with fio's io_uring engine (the target:
# every ratio >= 0.95); the libaio table compares LunarIO's libaio engine with fio's libaio.
#
# Last line: summary: randread=R randwrite=R seqread=R seqwrite=R   (io_uring, Lunar/fio)
#
# Usage: Tools/bench/io.sh [--file PATH] [--size 1G] [--runtime 5] [--rounds 3] [--engines "io_uring libaio"]
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
. "$(dirname "$0")/common.sh"
file=""
size=1G
runtime=5
rounds=3
engines="io_uring libaio"
while [ $# -gt 0 ]; do
    case "$1" in
        --file) file=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --runtime) runtime=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --engines) engines=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "io.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
command -v fio >/dev/null || { echo "io.sh: fio is not installed (apt-get install -y fio)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "io.sh: python3 is needed to read fio's JSON" >&2; exit 2; }

echo "building lunar (release) ..." >&2
swift build -c release --package-path "$root" >&2
lunar="$root/.build/release/lunar"

cleanup=""
if [ -z "$file" ]; then
    file="${TMPDIR:-/var/tmp}/lunar-io-bench-$$.img"
    cleanup=$file
fi
trap '[ -n "$cleanup" ] && rm -f "$cleanup"' EXIT
if [ ! -e "$file" ]; then
    echo "laying out $file ($size) ..." >&2
    fio --name=layout --filename="$file" --rw=write --bs=1M --size="$size" --direct=1 \
        --ioengine=io_uring --output-format=terse >/dev/null
fi

fio_figure() {  # engine workload -> IOPS (random) or MB/s (sequential)
    local engine=$1 workload=$2 bs depth
    case $workload in rand*) bs=4k depth=32 ;; *) bs=1M depth=8 ;; esac
    local rw=$workload
    case $workload in seqread) rw=read ;; seqwrite) rw=write ;; esac
    fio --name="$workload" --filename="$file" --rw="$rw" --bs=$bs --iodepth=$depth --ioengine="$engine" \
        --direct=1 --size="$size" --runtime="$runtime" --time_based --output-format=json |
        python3 -c '
import json, sys
job = json.load(sys.stdin)["jobs"][0]
side = job["write"] if sys.argv[1].endswith("write") else job["read"]
print(side["iops"] if sys.argv[1].startswith("rand") else side["bw_bytes"] / 1e6)' "$workload"
}

lunar_figure() {  # engine workload
    "$lunar" io bench --file "$file" --size "$size" --runtime "$runtime" --engine "$1" --workload "$2" --json |
        python3 -c '
import json, sys
r = json.load(sys.stdin)["results"][0]
print(r["iops"] if sys.argv[1].startswith("rand") else r["mb_per_s"])' "$2"
}


summary=""
for engine in $engines; do
    printf '\n%s: LunarIO vs fio --ioengine=%s --direct=1 on %s (%s), %s s x %s rounds\n' \
        "$engine" "$engine" "$file" "$size" "$runtime" "$rounds"
    printf '%-10s %-6s %14s %14s %7s %11s\n' workload unit lunar fio ratio rounds
    for workload in randread randwrite seqread seqwrite; do
        alternate "$rounds" "$engine" "$workload"
        l=$(median "${lunar_runs[@]}")
        f=$(median "${fio_runs[@]}")
        ratio=$(python3 -c "print(f'{$l / $f:.2f}')")
        case $workload in rand*) unit=IOPS ;; *) unit=MB/s ;; esac
        printf '%-10s %-6s %14.0f %14.0f %7s %11s\n' "$workload" "$unit" "$l" "$f" "$ratio" "$(ratio_spread)"
        [ "$engine" = io_uring ] && summary+=" $workload=$ratio"
    done
done
echo
echo "summary:${summary:- (io_uring not measured)}"
