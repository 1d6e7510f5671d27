#!/usr/bin/env bash
# LunarExport against qemu-nbd, serving the same data in the same run, alternating:
#   full       nbdcopy of a 4 GiB disk that is 50 % data (64 MiB of data, 64 MiB of hole, ...)
#              to null:, from `lunar export serve` (the disk a file on a volume) and from
#              `qemu-nbd -r --cache=none --aio=io_uring` on the same bytes as a raw file;
#              also from qemu-nbd on a 32-deep qcow2 chain (the data in its base, 31 empty
#              overlays) for reference.  Ratio: qemu-nbd's time / ours (> 1: we are faster).
#   randread   fio's nbd engine, 4 KiB random reads at QD 32 over the disk, IOPS ratio.
#   multiconn  nbdcopy with 4 connections against 1, on our server.
#   incr       bytes an incremental backup reads / bytes changed: snapshot s1 of the disk,
#              then 256 runs of 64 KiB to 1 MiB (at 64 KiB boundaries, the grain changes are
#              tracked in) written through a writable export with qemu-io, snapshot s2; the
#              backup reads the extents `nbdinfo --map=qemu:dirty-bitmap:s1` gives on the
#              export of disk@s2, their lengths summed: what a backup reading them reads.
# Targets (Brief §4): full_vs_qemu_nbd >= 1.0, randread_vs_qemu_nbd >= 1.0, a target counts as
# met in three separate full runs.
# Last line: summary: full_vs_qemu_nbd=R randread_vs_qemu_nbd=R multiconn=R incr_read_ratio=R
#
# Usage: Tools/bench/export.sh [--dir DIR] [--size 4G] [--runtime 10] [--rounds 3]
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
. "$(dirname "$0")/common.sh"
dir="${TMPDIR:-/var/tmp}"
size_gib=4
runtime=10
rounds=3
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) dir=$2; shift 2 ;;
        --size) size_gib=${2%G}; shift 2 ;;
        --runtime) runtime=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "export.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for tool in nbdcopy qemu-nbd qemu-img fio python3; do
    command -v $tool >/dev/null || { echo "export.sh: $tool is not installed (apt-get install -y libnbd-bin qemu-utils fio python3)" >&2; exit 2; }
done

echo "building lunar (release) ..." >&2
swift build -c release --package-path "$root" --product lunar >&2
lunar="$root/.build/release/lunar"

work=$(mktemp -d "$dir/lunar-export-bench-XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

raw="$work/disk.raw"
echo "laying out a ${size_gib} GiB disk, 50 % data ..." >&2
truncate -s "${size_gib}G" "$raw"
chunks=$((size_gib * 1024 / 128))
for ((i = 0; i < chunks; i++)); do
    dd if=/dev/urandom of="$raw" bs=1M count=64 seek=$((i * 128)) conv=notrunc status=none
done
lun="$work/volume.img"
"$lunar" fs mkfs "$lun" --size $((size_gib * 2 + 2))G >/dev/null
"$lunar" fs mkdir "$lun:/vms"
"$lunar" fs cp "$raw" "$lun:/vms/disk.raw" 2>/dev/null

# A 32-deep chain: the data in the base, 31 empty overlays above it.
qemu-img convert -f raw -O qcow2 "$raw" "$work/chain0.qcow2"
for ((i = 1; i < 32; i++)); do
    qemu-img create -q -f qcow2 -F qcow2 -b "$work/chain$((i - 1)).qcow2" "$work/chain$i.qcow2"
done

wait_for() { for _ in $(seq 300); do [ -S "$1" ] && return 0; sleep 0.1; done; echo "export.sh: $1 never appeared" >&2; exit 1; }

"$lunar" export serve "$lun" /vms/disk.raw --socket "$work/lunar.sock" >/dev/null &
pids+=($!)
qemu-nbd -r -t --cache=none --aio=io_uring -f raw -k "$work/qemu.sock" "$raw" &
pids+=($!)
qemu-nbd -r -t --cache=none --aio=io_uring -f qcow2 -k "$work/chain.sock" "$work/chain31.qcow2" &
pids+=($!)
wait_for "$work/lunar.sock"; wait_for "$work/qemu.sock"; wait_for "$work/chain.sock"
lunar_uri="nbd+unix:///vms/disk.raw?socket=$work/lunar.sock"
qemu_uri="nbd+unix:///?socket=$work/qemu.sock"
chain_uri="nbd+unix:///?socket=$work/chain.sock"

seconds() {  # command... -> wall seconds
    local start end
    start=$(date +%s.%N); "$@" >/dev/null; end=$(date +%s.%N)
    python3 -c "print($end - $start)"
}
copy_seconds() { seconds nbdcopy --connections="${2:-4}" "$1" null:; }

lunar_figure() { copy_seconds "$lunar_uri" 4; }
fio_figure() { copy_seconds "$qemu_uri" 4; }
echo "full copy (nbdcopy to null:, $rounds rounds) ..." >&2
alternate "$rounds"
lunar_full=$(median "${lunar_runs[@]}"); qemu_full=$(median "${fio_runs[@]}")
full_spread=$(python3 -c '
import sys
n = len(sys.argv) // 2
l, q = sys.argv[1:1 + n], sys.argv[1 + n:]
r = [float(b) / float(a) for a, b in zip(l, q)]
print(f"{min(r):.2f}-{max(r):.2f}")' "${lunar_runs[@]}" "${fio_runs[@]}")
chain_full=$(copy_seconds "$chain_uri" 4)

randread() {  # uri -> IOPS
    fio --name=randread --ioengine=nbd --uri="$1" --rw=randread --bs=4k --iodepth=32 --size="${size_gib}G" \
        --runtime="$runtime" --time_based --output-format=json 2>/dev/null |
        sed -n '/^{/,$p' | json '["jobs"][0]["read"]["iops"]'  # the engine says hello on stdout first
}
lunar_figure() { randread "$lunar_uri"; }
fio_figure() { randread "$qemu_uri"; }
echo "random 4 KiB reads at QD 32 (fio nbd engine, $rounds rounds of ${runtime} s) ..." >&2
alternate "$rounds"
lunar_iops=$(median "${lunar_runs[@]}"); qemu_iops=$(median "${fio_runs[@]}")
iops_spread=$(ratio_spread)
chain_iops=$(randread "$chain_uri")

echo "one connection against four, on our server ..." >&2
one=$(copy_seconds "$lunar_uri" 1)
four=$(copy_seconds "$lunar_uri" 4)

echo "incremental backup: snapshot, 256 changed runs, snapshot, the dirty-bitmap extents ..." >&2
for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()
"$lunar" disk snapshot "$lun:/vms/disk.raw" s1 >/dev/null
# Runs in distinct 1 MiB slots, so the bytes changed are their sum.
changes=$(python3 - "$size_gib" <<'PY'
import random, sys
r = random.Random(13)
slots = r.sample(range(int(sys.argv[1]) * 1024), 256)
runs = [(slot << 20, r.randrange(1, 17) << 16) for slot in slots]
print(sum(length for _, length in runs))
print(" ".join(f"-c 'write -P {i % 250 + 1} {offset} {length}'" for i, (offset, length) in enumerate(runs)))
PY
)
changed_bytes=$(echo "$changes" | sed -n 1p)
"$lunar" export serve "$lun" /vms/disk.raw --writable --socket "$work/rw.sock" >/dev/null &
pids+=($!)
wait_for "$work/rw.sock"
eval qemu-io -f raw "$(echo "$changes" | sed -n 2p)" "'nbd+unix:///vms/disk.raw?socket=$work/rw.sock'" >/dev/null
kill "${pids[@]}"; wait 2>/dev/null || true; pids=()
"$lunar" disk snapshot "$lun:/vms/disk.raw" s2 >/dev/null
"$lunar" export serve "$lun" /vms/disk.raw@s2 --socket "$work/incr.sock" >/dev/null &
pids+=($!)
wait_for "$work/incr.sock"
incr_uri="nbd+unix:///vms/disk.raw@s2?socket=$work/incr.sock"
read_bytes=$(nbdinfo --map=qemu:dirty-bitmap:s1 --json "$incr_uri" |
    python3 -c 'import json, sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["type"] & 1))')

python3 - "$size_gib" "$lunar_full" "$qemu_full" "$chain_full" "$full_spread" "$lunar_iops" "$qemu_iops" "$chain_iops" "$iops_spread" "$one" "$four" \
    "$read_bytes" "$changed_bytes" <<'PY'
import sys
gib, lf, qf, cf, fs, li, qi, ci, ispread, one, four, rb, cb = sys.argv[1:]
rb, cb = int(rb), int(cb)
gib, lf, qf, cf, li, qi, ci, one, four = int(gib), float(lf), float(qf), float(cf), float(li), float(qi), float(ci), float(one), float(four)
mb = gib * 1024 * 1024 * 1024 / 1e6
print(f"full copy ({gib} GiB, 50 % data, 4 connections): lunar {lf:.2f} s ({mb / lf:.0f} MB/s)  qemu-nbd raw {qf:.2f} s  "
      f"qemu-nbd qcow2x32 {cf:.2f} s  ratio {qf / lf:.2f} (per round {fs})")
print(f"randread 4 KiB QD 32: lunar {li:.0f} IOPS  qemu-nbd raw {qi:.0f}  qemu-nbd qcow2x32 {ci:.0f}  ratio {li / qi:.2f} (per round {ispread})")
print(f"nbdcopy on lunar: 1 connection {one:.2f} s, 4 connections {four:.2f} s")
print(f"incremental backup: {rb} bytes read for {cb} bytes changed")
print(f"summary: full_vs_qemu_nbd={qf / lf:.2f} randread_vs_qemu_nbd={li / qi:.2f} multiconn={one / four:.2f} incr_read_ratio={rb / cb:.2f}")
PY
