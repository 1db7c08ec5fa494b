#!/usr/bin/env bash
# A/B of two gateway builds in one run (docs/benchmarks.md): the bench's row for each build in turn, ROUNDS times,
# with the broker's CPU per 1,000 answers (the shared node's /proc figures) and the machine's CPU steal during the
# run. On a shared machine rates drift from one minute to the next; alternating the builds and reading CPU per
# answer keeps the comparison fair. Needs a release build with the bench feature (README).
#
#   benches/ab.sh SCENARIO ROUNDS BUILD_A BUILD_B [hookgate-bench options]
#   benches/ab.sh fixed 3 /tmp/hookgate-before target/release/hookgate --duration 8s
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 4 ]] || { sed -n '2,7p' "$0"; exit 64; }
scenario=$1 rounds=$2 a=$3 b=$4
shift 4
bench=target/release/hookgate-bench
broker=$(pgrep -o beam.smp || true)
cpu_ticks() { [[ -n "$broker" ]] && awk '{print $14 + $15}' "/proc/$broker/stat" || echo 0; }
steal() { awk '/^cpu /{print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
for _ in $(seq 1 "$rounds"); do
    for which in A B; do
        build=$a
        [[ $which == B ]] && build=$b
        r0=$(cpu_ticks) s0=$(steal)
        row=$("$bench" --scenario "$scenario" --gateway "$build" "$@" 2>/dev/null | grep "^| $scenario" | head -1)
        r1=$(cpu_ticks) s1=$(steal)
        answers=$(grep -oP '200:\K[0-9]+' <<<"$row" || echo 0)
        python3 - "$which" "$row" "$r0" "$r1" "$answers" "$s0" "$s1" <<'PY'
import sys
which, row, r0, r1, n, s0, s1 = sys.argv[1:8]
ticks = int(r1) - int(r0)
broker = ticks / 100 / max(1, int(n)) * 1000
(st0, all0), (st1, all1) = (map(int, s.split()) for s in (s0, s1))
print(f"{which} {row} broker_cpu_s_per_1000={broker:.3f} steal={100 * (st1 - st0) / max(1, all1 - all0):.1f}%")
PY
    done
done
