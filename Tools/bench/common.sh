# Helpers the benchmark scripts share; sourced, not run.

# Reads JSON on stdin and prints the value at the Python subscript $1, e.g. '["iops"]'.
json() { python3 -c "import json, sys; print(json.load(sys.stdin)$1)"; }

median() { python3 -c 'import statistics, sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

# The spread of the rounds after alternate: the lowest and highest per-round ratio lunar/fio,
# "0.93-1.04", so that a reader tells noise from a gap at a glance.
ratio_spread() {
    python3 -c '
import sys
n = len(sys.argv) // 2
lunar, fio = sys.argv[1:1 + n], sys.argv[1 + n:]
ratios = [float(l) / float(f) for l, f in zip(lunar, fio)]
print(f"{min(ratios):.2f}-{max(ratios):.2f}")' "${lunar_runs[@]}" "${fio_runs[@]}"
}

# Runs the caller's lunar_figure and fio_figure with the given arguments, ROUNDS times each,
# taking turns at going first so that write-back one side leaves behind does not always land
# on the other. Leaves the figures in the arrays lunar_runs and fio_runs.
# Usage: alternate ROUNDS ARGS...
alternate() {
    local rounds=$1 round
    shift
    lunar_runs=() fio_runs=()
    for ((round = 0; round < rounds; round++)); do
        if ((round % 2 == 0)); then
            lunar_runs+=("$(lunar_figure "$@")"); fio_runs+=("$(fio_figure "$@")")
        else
            fio_runs+=("$(fio_figure "$@")"); lunar_runs+=("$(lunar_figure "$@")")
        fi
    done
}
