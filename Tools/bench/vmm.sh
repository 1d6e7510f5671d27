#!/usr/bin/env bash
# LunarVMM against QEMU on this machine, in the same run.
#
#  (a) blk     the virtio-blk device path driven from the host side: a synthetic driver (no
#              guest code runs) keeps requests in a virtqueue in guest memory; the device's I/O
#              thread serves them from a fully written --size LunarFS file straight to the volume
#              image through io_uring. fio --ioengine=io_uring --direct=1 runs on the very same
#              bytes of the same image (the file lies in one piece on it: fio gets its offset and
#              size). randread, randwrite (4 KiB, QD 32: IOPS), seqread, seqwrite (1 MiB, QD 8:
#              MB/s), --runtime s each, --rounds rounds alternating who goes first, medians.
#              blk_vs_fio is the geometric mean of the four ratios. Target: every ratio >= 0.9.
#              Guest RAM is on transparent huge pages, as a VM's is by default, so a 1 MiB buffer
#              is one segment for the image's disk; fio's buffers are 4 KiB pages, which a 1 MiB
#              request on virtio-blk (254 segments at most) splits in two. --memory-backing small
#              measures the device with 4 KiB guest pages too.
#  (b) start   VMM start to the guest's first serial byte: the time from starting the process
#              to the first byte on its standard output (a pipe), median of --runs runs, taking
#              turns. Lunar: `lunar-vmm boot IMAGE` (the VMM process alone: the freestanding hello guest
#              from a host file) and, for reference, `lunar vm run LUN NAME` (the same guest
#              stored on a LunarFS volume, which is opened read-write first). QEMU:
#              qemu-system-x86_64 -M microvm -enable-kvm -nodefaults -no-user-config -nographic
#              -serial stdio -device isa-debug-exit,iobase=0x501,iosize=1 -kernel hello_pvh.elf,
#              the same guest (same text over COM1, same power-off port) built as a 32-bit ELF
#              with a PVH entry note, which microvm's -kernel boots directly. Target: <= 0.5x QEMU.
#  (c) memory  VMM resident memory beyond guest RAM: the idle guest (prints, then halts for
#              good) under `lunar vm run`, which execs lunar-vmm (the same process); once it has printed, VmRSS minus the resident part of
#              the guest-RAM mapping (from /proc/PID/smaps), median of --rounds rounds. Also
#              shown: the anonymous/file split, `lunar vm boot`, and QEMU. Target: < 8 MiB.
#
# Last line: summary: blk_vs_fio=R start_ms=N start_vs_qemu=R overhead_mib=N
#
# Usage: Tools/bench/vmm.sh [--runs 21] [--rounds 3] [--parts "blk start memory"]
#                           [--size 1G] [--runtime 5] [--memory-backing huge|small] [--static] [--lunar PATH]
#   --static   build lunar too with the Swift runtime and Foundation linked in (a separate
#              build under .build/static; lunar-vmm always links the runtime in).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
. "$(dirname "$0")/common.sh"
runs=21
rounds=3
parts="blk start memory"
lunar=""
static=0
size=1G
runtime=5
backing=huge
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --parts) parts=$2; shift 2 ;;
        --static) static=1; shift ;;
        --size) size=$2; shift 2 ;;
        --runtime) runtime=$2; shift 2 ;;
        --memory-backing) backing=$2; shift 2 ;;
        --lunar) lunar=$2; shift 2 ;;
        -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
        *) echo "vmm.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -r /dev/kvm ] && [ -w /dev/kvm ] || { echo "vmm.sh: needs read-write /dev/kvm" >&2; exit 2; }
for tool in python3 gcc ld qemu-system-x86_64 fio; do
    command -v $tool >/dev/null || { echo "vmm.sh: $tool is not installed" >&2; exit 2; }
done

if [ -z "$lunar" ]; then
    if [ "$static" = 1 ]; then
        echo "building lunar (release, static Swift runtime) ..." >&2
        swift build -c release --static-swift-stdlib --package-path "$root" --scratch-path "$root/.build/static" >&2
        lunar="$root/.build/static/release/lunar"
    else
        echo "building lunar (release) ..." >&2
        swift build -c release --package-path "$root" >&2
        lunar="$root/.build/release/lunar"
    fi
fi

# The VMM process: `lunar vm run` and `lunar vm boot` exec it.
vmm=$(dirname "$lunar")/lunar-vmm
[ -x "$vmm" ] || { echo "vmm.sh: $vmm is missing (swift build -c release builds it beside lunar)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/var/tmp}/lunar-vmm-bench-XXXXXX")
trap 'rm -rf "$work"' EXIT

# The guests: hello (64-bit, for LunarVMM's freestanding boot) and hello_pvh (32-bit PVH, for
# QEMU), each also built with -DIDLE.
guests=$root/Tools/guest/freestanding
cflags="-ffreestanding -nostdlib -fno-pic -fno-pie -O2 -fno-asynchronous-unwind-tables"
for variant in hello idle; do
    define=""; [ $variant = idle ] && define=-DIDLE
    gcc $cflags -mno-red-zone -m64 $define -c "$guests/hello.c" -o "$work/$variant.o"
    ld -Ttext=0x100000 -e _start --oformat binary -o "$work/$variant.bin" "$work/$variant.o"
    gcc $cflags -m32 $define -c "$guests/hello_pvh.c" -o "$work/${variant}_pvh.o"
    ld -m elf_i386 -Ttext=0x100000 -e _start -o "$work/${variant}_pvh.elf" "$work/${variant}_pvh.o"
done
vol=$work/vol.img
"$lunar" fs mkfs "$vol" --size 1G >/dev/null
"$lunar" vm create "$vol" hello --memory 64M --image "$work/hello.bin" >/dev/null
"$lunar" vm create "$vol" idle --memory 64M --image "$work/idle.bin" >/dev/null
qemu=(qemu-system-x86_64 -M microvm -enable-kvm -nodefaults -no-user-config -nographic -serial stdio
      -device isa-debug-exit,iobase=0x501,iosize=1 -m 64M)

blk_vs_fio=n/a
start_ms=n/a
start_vs_qemu=n/a
overhead_mib=n/a


# (a) The virtio-blk device path against fio on the same bytes.
bench_blk() {
    echo "building lunar-vmm-bench (release) ..." >&2
    swift build -c release --package-path "$root" --product lunar-vmm-bench >&2
    local bench="$root/.build/release/lunar-vmm-bench" lun="$work/blk.img" layout offset bytes
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
        "$bench" run "$lun" --workload "$1" --runtime "$runtime" --memory-backing "$backing" |
            python3 -c '
import json, sys
r = json.load(sys.stdin)
print(r["iops"] if sys.argv[1].startswith("rand") else r["mb_per_s"])' "$1"
    }
    printf '\nvirtio-blk (host-side driver, I/O thread, io_uring; guest RAM on %s pages) on a %s LunarFS file vs fio --ioengine=io_uring --direct=1 on the same bytes, %s s x %s rounds\n' \
        "$backing" "$size" "$runtime" "$rounds"
    local ratios=() workload l f unit ratio
    for workload in randread randwrite seqread seqwrite; do
        local lunar_runs fio_runs
        alternate "$rounds" "$workload"
        l=$(median "${lunar_runs[@]}") f=$(median "${fio_runs[@]}")
        unit=IOPS; case $workload in seq*) unit=MB/s ;; esac
        ratio=$(python3 -c "print(f'{$l / $f:.2f}')")
        printf 'blk %-9s lunar=%.0f fio=%.0f ratio=%s (%s; runs lunar: %s fio: %s)\n' "$workload" "$l" "$f" "$ratio" "$unit" \
            "$(printf '%.0f ' "${lunar_runs[@]}")" "$(printf '%.0f ' "${fio_runs[@]}")"
        ratios+=("$ratio")
    done
    blk_vs_fio=$(python3 -c '
import math, sys
r = [float(x) for x in sys.argv[1:]]
print(f"{math.exp(sum(map(math.log, r)) / len(r)):.2f}")' "${ratios[@]}")
    printf 'blk: geometric mean %s, lowest %s\n' "$blk_vs_fio" "$(printf '%s\n' "${ratios[@]}" | sort -n | head -1)"
}

# (b) Milliseconds from spawning each command to the first byte on its standard output, for
# "$runs" rounds, the commands taking turns; prints "median min" per command, one per line.
first_byte_ms() {  # command lines, each one argument
    python3 - "$runs" "$@" <<'EOF'
import shlex, statistics, subprocess, sys, time
runs, commands = int(sys.argv[1]), [shlex.split(c) for c in sys.argv[2:]]
times = [[] for _ in commands]
for r in range(runs):
    order = list(range(len(commands)))
    if r % 2: order.reverse()
    for i in order:
        start = time.perf_counter_ns()
        p = subprocess.Popen(commands[i], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        first = p.stdout.read(1)
        elapsed = (time.perf_counter_ns() - start) / 1e6
        rest = p.stdout.read()
        p.wait()
        if first + rest != b"hello from the guest\n":
            sys.exit(f"vmm.sh: {' '.join(commands[i])} printed {first + rest!r}")
        times[i].append(elapsed)
for t in times:
    print(f"{statistics.median(t):.1f} {min(t):.1f}")
EOF
}

bench_start() {
    local boot="$vmm boot $work/hello.bin" run="$lunar vm run $vol hello" q="${qemu[*]} -kernel $work/hello_pvh.elf"
    local results
    mapfile -t results < <(first_byte_ms "$boot" "$run" "$q")
    printf '\nstart: process start to the guest'"'"'s first serial byte on stdout, %s runs (ms)\n' "$runs"
    printf '%-44s %10s %10s\n' what median min
    printf '%-44s %10s %10s\n' "lunar-vmm boot IMAGE (the VMM alone)" ${results[0]}
    printf '%-44s %10s %10s\n' "lunar vm run LUN NAME (volume, then VMM)" ${results[1]}
    printf '%-44s %10s %10s\n' "qemu -M microvm -kernel hello_pvh.elf" ${results[2]}
    start_ms=$(python3 -c "print(round(${results[0]% *}))")
    start_vs_qemu=$(python3 -c "print(f'{${results[0]% *} / ${results[2]% *}:.2f}')")
    local run_vs_qemu
    run_vs_qemu=$(python3 -c "print(f'{${results[1]% *} / ${results[2]% *}:.2f}')")
    printf 'lunar-vmm boot / qemu: %s (target <= 0.5); lunar vm run / qemu: %s\n' "$start_vs_qemu" "$run_vs_qemu"
}

# (c) Starts a command whose guest prints and then idles; once the text is out, prints
# "overhead_kib anon_kib file_kib guest_kib": VmRSS beyond the resident part of guest RAM (the
# one anonymous mapping of 64 MiB, up to 4 MiB more for alignment).
idle_footprint() {  # command words
    python3 - "$@" <<'EOF'
import os, re, signal, subprocess, sys, time
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
text = b""
while not text.endswith(b"\n"):
    chunk = os.read(p.stdout.fileno(), 64)
    if not chunk:
        sys.exit(f"vmm.sh: {sys.argv[1]} ended before its guest printed")
    text += chunk
time.sleep(0.5)
status = open(f"/proc/{p.pid}/status").read()
field = lambda name: int(re.search(rf"^{name}:\s+(\d+) kB", status, re.M).group(1))
guest = 0
mapping = None
for line in open(f"/proc/{p.pid}/smaps"):
    if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
        mapping = {"anonymous": len(line.split()) < 6}
    elif line.startswith("Size:"):
        mapping["size"] = int(line.split()[1])
    elif line.startswith("Rss:") and mapping.get("anonymous") and 65536 <= mapping["size"] <= 65536 + 4096:
        guest = max(guest, int(line.split()[1]))
p.send_signal(signal.SIGTERM)
try:
    p.wait(timeout=10)
except subprocess.TimeoutExpired:
    p.kill()
    p.wait()
print(field("VmRSS") - guest, field("RssAnon"), field("RssFile"), guest)
EOF
}

bench_memory() {
    printf '\nmemory: resident set beyond guest RAM with an idle 64 MiB guest, median of %s rounds (KiB)\n' "$rounds"
    printf '%-44s %10s %10s %10s %10s\n' what overhead anon file guest
    local label cmd overhead=""
    for which in run boot qemu; do
        local o=() a=() f=() g=()
        case $which in
            run) label="lunar vm run LUN NAME"; cmd="$lunar vm run $vol idle" ;;
            boot) label="lunar vm boot IMAGE"; cmd="$lunar vm boot $work/idle.bin" ;;
            qemu) label="qemu -M microvm"; cmd="${qemu[*]} -kernel $work/idle_pvh.elf" ;;
        esac
        for round in $(seq "$rounds"); do
            read -r ov an fi gu < <(idle_footprint $cmd)
            o+=("$ov"); a+=("$an"); f+=("$fi"); g+=("$gu")
        done
        printf '%-44s %10.0f %10.0f %10.0f %10.0f\n' "$label" "$(median "${o[@]}")" "$(median "${a[@]}")" \
            "$(median "${f[@]}")" "$(median "${g[@]}")"
        if [ $which = run ]; then
            overhead=$(median "${o[@]}")
            anon=$(median "${a[@]}")
            guest=$(median "${g[@]}")
        fi
    done
    overhead_mib=$(python3 -c "print(f'{$overhead / 1024:.1f}')")
    printf 'lunar vm run overhead: %s MiB (target < 8), of which anonymous (private to this VM): %s MiB;\n' \
        "$overhead_mib" "$(python3 -c "print(f'{($anon - $guest) / 1024:.1f}')")"
    printf 'the file-backed rest is code and read-only data of lunar and its libraries, shared through the page cache\n'
}

for part in $parts; do
    case $part in
        blk) bench_blk ;;
        start) bench_start ;;
        memory) bench_memory ;;
        *) echo "vmm.sh: unknown part $part (blk, start, memory)" >&2; exit 2 ;;
    esac
done
echo
echo "summary: blk_vs_fio=$blk_vs_fio start_ms=$start_ms start_vs_qemu=$start_vs_qemu overhead_mib=$overhead_mib"
