#!/usr/bin/env bash
# The fault-injection run (issue 14; minutes, not in CI). Starts a RabbitMQ node of its own (own node name,
# AMQP and distribution ports, data/log dirs, config and cookie under a temp dir; management off) — never the
# shared node on 5672 — and a gateway process through a TCP proxy, drives steady load and injects: kill -9 of the
# gateway ×10 (restarted on the same data_dir), kill -9 of the broker node and a restart, a memory alarm, a network
# cut, a full spool. Prints a markdown summary table; exits non-zero when the oracle fails.
#
#   benches/faults.sh            (debug build; the figures are about correctness, not speed)
#   benches/faults.sh --cluster  a 3-node cluster of its own, a quorum queue, kill -9 of the gateway's node
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bin hookgate --example faults
work=$(mktemp -d "${TMPDIR:-/tmp}/hookgate-faults.XXXXXX")
node="hookgate-faults-$$@localhost"
cleanup() {
    # The driver stops its nodes and gateway itself; this is the backstop if it died: only the pids of the nodes
    # this run started (their pid files under $work).
    local pidfile
    for pidfile in "$work"/*/pid; do
        if [[ -s "$pidfile" ]]; then kill -9 "$(cat "$pidfile")" 2>/dev/null || true; fi
    done
    if [[ "${KEEP_WORK:-}" != 1 ]]; then rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM
target/debug/examples/faults --hookgate target/debug/hookgate --work "$work" --node "$node" "$@"
