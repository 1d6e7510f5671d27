#!/usr/bin/env bash
# Hosts sharing one LunarFS volume: how creation scales with host processes, how often a
# compare-and-write of a lock loses a race, what an uncontended lock costs, and how long a
# killed holder's lock takes to break.
#
# - create: 1, 2 and 4 `lunar-hosts create` processes, each making --files empty files in a
#   directory of its own on one volume image, started together; files/s over the wall time
#   of each run. scale2/scale4 = rate with 2/4 hosts over the rate with 1. Run twice: with
#   the image in RAM (/dev/shm), where the bound is the cores and the locks (the target),
#   and with the image in --dir on this machine's disk, where every host's commits end in
#   fdatasync of the one image file and the disk sets the pace (scale4_disk).
# - conflicts_per_100: lock compare-and-writes (the metadata lock's, directories',
#   clusters', files') that lost a race, per 100 creates, in the 4-host run in RAM.
# - lock_us: uncontended acquire + release, medians: the file lock (open + close of a file,
#   its inode lock taken and freed by compare-and-write) and the metadata lock.
# - break_s: SIGKILL of a file's holder to the file opened by another host judged as a
#   separate machine (LUNAR_MACHINE_ID), heartbeat interval --heartbeat (dead after 5 of
#   them); break_local_s: the same with both on this machine (presence tokens).
# - With --iscsi (needs root and tgt): lock_us on a tgt LUN over loopback too.
#
# Targets (BRIEF §4): scale4 >= 1.8 with < 1 lost race per 100 operations; lock_us < 1000.
# Last line: summary: scale4=R conflicts_per_100=N lock_us=N break_s=N scale4_disk=R
#
# Usage: Tools/bench/hosts.sh [--dir DIR] [--files 20000] [--heartbeat 1] [--iscsi]
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
. "$(dirname "$0")/common.sh"
dir="${TMPDIR:-/var/tmp}"
files=20000
heartbeat=1
iscsi=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) dir=$2; shift 2 ;;
        --files) files=$2; shift 2 ;;
        --heartbeat) heartbeat=$2; shift 2 ;;
        --iscsi) iscsi=1; shift ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "hosts.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
command -v python3 >/dev/null || { echo "hosts.sh: python3 is needed to read JSON" >&2; exit 2; }

echo "building lunar and lunar-hosts (release) ..." >&2
swift build -c release --package-path "$root" --product lunar >&2
swift build -c release --package-path "$root" --product lunar-hosts >&2
bin="$root/.build/release"
work=$(mktemp -d "$dir/lunar-hosts-bench.XXXXXX")
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$work"' EXIT
lun="$work/vol.img"

now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }

# One run of N hosts creating $files files each on image $1; prints "rate lost_races retried".
create_run() {
    local image=$1 n=$2 run=$3 pids=() start end lost=0 retried=0
    start=$(now)
    for k in $(seq 1 "$n"); do
        "$bin/lunar-hosts" create "$image" --dir "/r$run-h$k" --count "$files" > "$work/create-$run-$k.json" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    end=$(now)
    for k in $(seq 1 "$n"); do
        lost=$((lost + $(json '["lost_races"]' < "$work/create-$run-$k.json")))
        retried=$((retried + $(json '["retried_exclusive"]' < "$work/create-$run-$k.json")))
    done
    echo "$(calc "$n * $files / ($end - $start)") $lost $retried"
}

# 1, 2 and 4 hosts on a fresh volume in image $1; sets scale4 and lost4.
create_scaling() {
    local image=$1 one two four lost2 retried2 retried4
    "$bin/lunar" fs mkfs "$image" --size 8G --max-files $((files * 8 + 1000)) > /dev/null
    printf '%-8s %12s %8s %12s %16s\n' hosts files_per_s scale lost_races retried_exclusive
    read -r one _ _ <<< "$(create_run "$image" 1 1)"
    printf '%-8s %12.0f %8s %12s %16s\n' 1 "$one" 1.00 - -
    read -r two lost2 retried2 <<< "$(create_run "$image" 2 2)"
    printf '%-8s %12.0f %8.2f %12s %16s\n' 2 "$two" "$(calc "$two / $one")" "$lost2" "$retried2"
    read -r four lost4 retried4 <<< "$(create_run "$image" 4 4)"
    scale4=$(calc "round($four / $one, 2)")
    printf '%-8s %12.0f %8.2f %12s %16s\n' 4 "$four" "$scale4" "$lost4" "$retried4"
}

if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    ram=$(mktemp -d /dev/shm/lunar-hosts-bench.XXXXXX)
    trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$work" "$ram"' EXIT
    echo "create, image in RAM ($ram):"
    create_scaling "$ram/vol.img"
    rm -f "$ram/vol.img"
else
    echo "hosts.sh: no writable /dev/shm; the RAM figures are the disk's" >&2
fi
ram_scale4=${scale4:-}
ram_lost4=${lost4:-}
echo "create, image on disk ($work):"
create_scaling "$lun"
scale4_disk=$scale4
scale4=${ram_scale4:-$scale4_disk}
lost4=${ram_lost4:-$lost4}
conflicts=$(calc "round(100 * $lost4 / (4 * $files), 3)")

locks=$("$bin/lunar-hosts" lock "$lun" --count 2000)
lock_us=$(echo "$locks" | json '["file_lock_us"]')
meta_us=$(echo "$locks" | json '["metadata_lock_us"]')
printf 'lock (image file): file lock %.0f us, metadata lock %.0f us (acquire + release, medians)\n' "$lock_us" "$meta_us"

# Breaking a killed holder's lock: judged by heartbeat (separate machines), then by presence.
break_after() {
    local holder_machine=$1 taker_machine=$2 fifo="$work/hold.out" pid
    rm -f "$fifo"
    LUNAR_MACHINE_ID=$holder_machine "$bin/lunar-hosts" hold "$lun" --path /break --heartbeat "$heartbeat" > "$fifo" &
    pid=$!
    for _ in $(seq 1 200); do grep -q held "$fifo" 2>/dev/null && break; sleep 0.05; done
    sleep 0.2
    kill -9 "$pid"; wait "$pid" 2>/dev/null || true
    LUNAR_MACHINE_ID=$taker_machine "$bin/lunar-hosts" acquire "$lun" --path /break --wait 300 --heartbeat "$heartbeat" | json '["waited_s"]'
}
break_s=$(calc "round($(break_after machine-a machine-b), 2)")
break_local=$(calc "round($(break_after "" ""), 3)")
printf 'break: %s s judged by heartbeat (interval %s s, timeout %s s); %s s on one machine (presence token)\n' \
    "$break_s" "$heartbeat" "$(calc "5 * $heartbeat")" "$break_local"

if [ "$iscsi" = 1 ]; then
    tgtd=/usr/sbin/tgtd tgtadm=/usr/sbin/tgtadm
    [ -x "$tgtd" ] || { echo "hosts.sh: --iscsi needs tgt (apt-get install -y tgt)" >&2; exit 2; }
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    control=$((20000 + port % 12000))
    mkdir -p /var/run/tgtd
    "$tgtd" -f -C "$control" --iscsi portal=127.0.0.1:"$port" > /dev/null 2>&1 &
    tgt_pid=$!
    adm() { "$tgtadm" -C "$control" --lld iscsi "$@" > /dev/null; }
    for _ in $(seq 1 100); do adm --mode target --op show 2>/dev/null && break; sleep 0.05; done
    truncate -s 1G "$work/iscsi.img"
    iqn=iqn.2024-01.org.lunar.bench:lun
    adm --mode target --op new --tid 1 --targetname "$iqn"
    adm --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$work/iscsi.img" --blocksize=4096
    adm --mode target --op bind --tid 1 --initiator-address ALL
    url="iscsi://127.0.0.1:$port/$iqn/1"
    "$bin/lunar" fs mkfs "$url" > /dev/null
    ilocks=$("$bin/lunar-hosts" lock "$url" --count 300)
    printf 'lock (iSCSI, tgt on loopback): file lock %.0f us, metadata lock %.0f us\n' \
        "$(echo "$ilocks" | json '["file_lock_us"]')" "$(echo "$ilocks" | json '["metadata_lock_us"]')"
    # tgtd ignores SIGTERM: it stops when told to on its control socket, once without targets.
    adm --mode target --op delete --force --tid 1 || true
    "$tgtadm" -C "$control" --op delete --mode system > /dev/null 2>&1 || true
    for _ in $(seq 1 40); do kill -0 "$tgt_pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$tgt_pid" 2>/dev/null || true; wait "$tgt_pid" 2>/dev/null || true
fi

printf 'summary: scale4=%s conflicts_per_100=%s lock_us=%.0f break_s=%s scale4_disk=%s\n' "$scale4" "$conflicts" "$lock_us" "$break_s" "$scale4_disk"
