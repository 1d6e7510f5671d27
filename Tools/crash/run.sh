#!/usr/bin/env bash
# Crash-consistency campaign: records a random metadata + data workload on a LunarFS volume,
# then rebuilds the volume as a crash would have left it at N points of the write log
# (writes of the last flush epoch dropped, reordered and torn at random), replays the journal,
# runs fsck and checks every synced file. CI runs 1 000 points; run as many as you like.
#
# Usage: Tools/crash/run.sh [POINTS]     (default 10000)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
points=${1:-10000}
case $points in ''|*[!0-9]*) echo "run.sh: POINTS must be a number" >&2; exit 2 ;; esac
cd "$root"
LUNAR_CRASH_POINTS=$points swift test -c release --filter 'LunarFSTests.CrashTests'
