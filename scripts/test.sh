#!/usr/bin/env bash
# The project's test command (the README's, and what .ci/run runs):
# builds every binary once, then runs every test against the real binaries,
# then the fault-injection suite for a bounded time (docs/guarantees.md).
#
#   scripts/test.sh            unit, end-to-end and hostile-input tests,
#                              then 90 s of injected faults
#
# RESTOCK_FAULT_SECONDS (default 90) sets how long faults are injected
# (0 skips the fault suites); RESTOCK_FAULT_SEED replays a run's schedule.
# Then the HA fault suite (three arbiter replicas kept in a three-member etcd
# cluster) for RESTOCK_HA_FAULT_SECONDS (default 60; 0 skips it), when etcd
# is installed (Debian's etcd-server), or always with RESTOCK_REQUIRE_ETCD=1.
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
  RESTOCK_FAULT_MODE=default RESTOCK_FAULT_SECONDS="$fault_seconds" \
    cargo test --workspace --test faults -- --nocapture
fi

if [ "$fault_seconds" = "0" ]; then
  ha_default=0
else
  ha_default=60
fi
ha_seconds="${RESTOCK_HA_FAULT_SECONDS:-$ha_default}"
if [ "$ha_seconds" = "0" ]; then
  echo "==> HA fault-injection suite skipped (RESTOCK_HA_FAULT_SECONDS=0 or RESTOCK_FAULT_SECONDS=0)"
elif command -v etcd >/dev/null || [ -x /usr/bin/etcd ] || [ "${RESTOCK_REQUIRE_ETCD:-}" = "1" ]; then
  echo "==> HA fault-injection suite (arbiter replicas on etcd): ${ha_seconds} s of faults"
  RESTOCK_FAULT_MODE=ha RESTOCK_FAULT_SECONDS="$ha_seconds" \
    cargo test --workspace --test faults -- --nocapture
else
  echo "==> HA fault-injection suite skipped: etcd is not installed" \
    "(apt-get install etcd-server; RESTOCK_REQUIRE_ETCD=1 makes this an error)"
fi
