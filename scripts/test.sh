#!/usr/bin/env bash
# The project's test command (the README's, and what .ci/run runs):
# builds every binary once, then runs every test against the real binaries,
# then the fault-injection suite for a bounded time (docs/guarantees.md).
#
#   scripts/test.sh            unit, end-to-end and hostile-input tests,
#                              then 90 s of injected faults
#
# RESTOCK_FAULT_SECONDS (default 90) sets how long faults are injected
# (0 skips the fault suite); RESTOCK_FAULT_SEED replays a run's schedule.
# Set TEST_LOG=1 to see the services' logs; RESTOCK_REQUIRE_GRPCURL=1 makes a
# missing grpcurl an error instead of a skipped test.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> cargo build --workspace --bins"
cargo build --workspace --bins
echo "==> cargo test --workspace"
cargo test --workspace

fault_seconds="${RESTOCK_FAULT_SECONDS:-90}"
if [ "$fault_seconds" = "0" ]; then
  echo "==> fault-injection suite skipped (RESTOCK_FAULT_SECONDS=0)"
else
  echo "==> fault-injection suite: ${fault_seconds} s of faults"
  RESTOCK_FAULT_SECONDS="$fault_seconds" cargo test --workspace --test faults -- --nocapture
fi
