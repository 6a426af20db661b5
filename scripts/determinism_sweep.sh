#!/usr/bin/env bash
# The determinism sweep (run before resolving an issue): the whole suite from a fresh clone of HEAD,
#   1. with pytest-xdist on 2 workers (the README's command; each worker runs 1 torch thread on 2 cores),
#   2. without xdist, with 2 torch threads (DETSPEC_TORCH_THREADS=2),
#   3. without xdist, with 1 torch thread (DETSPEC_TORCH_THREADS=1).
# Every run must be green; the results do not depend on thread count or test order.
#   scripts/determinism_sweep.sh [CLONE_DIR]      (default: a new temporary directory)
# Each run's log is CLONE_DIR/sweep-N.log; the summary is printed at the end and written to CLONE_DIR/sweep.txt.
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$(mktemp -d /tmp/detspec-sweep.XXXXXX)}
git clone -q "$src" "$dir/clone" || exit 2
cd "$dir/clone" || exit 2
export CI=true HYPOTHESIS_PROFILE=ci
python3.11 -m venv .venv && .venv/bin/pip install -q -e '.[test]' > "$dir/install.log" 2>&1 || {
    echo "install failed: see $dir/install.log" >&2; exit 2; }
runs=(
    "-n 2"
    "-p no:xdist|2"
    "-p no:xdist|1"
)
status=0
: > "$dir/sweep.txt"
for i in "${!runs[@]}"; do
    args=${runs[$i]%%|*}
    threads=""
    [[ ${runs[$i]} == *"|"* ]] && threads=${runs[$i]##*|}
    start=$SECONDS
    # shellcheck disable=SC2086
    DETSPEC_TORCH_THREADS=$threads .venv/bin/python -m pytest -q -p no:cacheprovider $args > "$dir/sweep-$i.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || status=1
    line="run $i: pytest $args${threads:+ with $threads torch threads}: rc=$rc in $((SECONDS - start)) s; $(tail -n 1 "$dir/sweep-$i.log")"
    echo "$line" | tee -a "$dir/sweep.txt"
done
exit $status
