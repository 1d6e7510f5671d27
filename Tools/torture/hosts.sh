#!/usr/bin/env bash
# The multi-host torture test at any size: N `lunar-hosts torture` processes share one volume
# (each a host with its own directory, all incrementing one counter under its file lock), one
# of them is SIGKILLed every 0.7-1.5 s and started again, and at the end all are killed and
# `lunar-hosts verify` checks fsck and every directory and the counter against the hosts' logs.
# CI runs the same with 4 hosts for 20 s (Tests/IntegrationTests/HostsTortureTests.swift).
#
# Usage: Tools/torture/hosts.sh [--hosts 8] [--duration 60] [--machines] [--lun PATH|iscsi://...]
#                               [--seed N] [--keep]
#   --machines  give each host its own machine identity (LUNAR_MACHINE_ID): hosts then judge a
#               killed one by its silent heartbeat (5 x 0.2 s), as hosts on separate machines do
#   --lun       an existing LUN to format and use (default: a 4 GiB image in a temporary folder)
#   --keep      keep the image and the logs
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
hosts=8
duration=60
machines=0
lun=""
seed=1
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --hosts) hosts=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --machines) machines=1; shift ;;
        --lun) lun=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "hosts.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

echo "building lunar and lunar-hosts (release) ..." >&2
swift build -c release --package-path "$root" --product lunar >&2
swift build -c release --package-path "$root" --product lunar-hosts >&2
bin="$root/.build/release"
work=$(mktemp -d "${TMPDIR:-/var/tmp}/lunar-torture.XXXXXX")
[ "$keep" = 1 ] || trap 'pkill -9 -P $$ 2>/dev/null || true; rm -rf "$work"' EXIT
[ -n "$lun" ] || lun="$work/vol.img"
"$bin/lunar" fs mkfs "$lun" --size 4G --force > /dev/null
RANDOM=$seed

launch() {  # host number
    local env=()
    [ "$machines" = 1 ] && env=(LUNAR_MACHINE_ID="machine-$1")
    env "${env[@]}" "$bin/lunar-hosts" torture "$lun" --host "$1" --seed "$RANDOM" --logs "$work" \
        --duration $((duration + 600)) --heartbeat 0.2 > /dev/null 2>&1 &
    pids[$1]=$!
}

pids=()
for ((k = 0; k < hosts; k++)); do launch "$k"; done
end=$((SECONDS + duration))
kills=0
while [ $SECONDS -lt "$end" ]; do
    sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.3f", 0.7 + (r % 800) / 1000 }')"
    victim=$((RANDOM % hosts))
    kill -9 "${pids[$victim]}" 2>/dev/null && kills=$((kills + 1))
    wait "${pids[$victim]}" 2>/dev/null || true
    launch "$victim"
done
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
wait 2>/dev/null || true

ops=$(cat "$work"/host-*.log | grep -c '^D ' || true)
echo "$hosts hosts, ${duration} s, $kills kills, $ops operations acknowledged"
"$bin/lunar-hosts" verify "$lun" --logs "$work"
if [ "$keep" = 1 ]; then echo "kept: $work"; fi
