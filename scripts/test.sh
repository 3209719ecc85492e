#!/usr/bin/env bash
# The project's test command (the README's, and what .ci/run runs):
# builds every binary once, then runs every test against the real binaries.
#
#   scripts/test.sh            unit + end-to-end tests
#
# Set TEST_LOG=1 to see the services' logs; RESTOCK_REQUIRE_GRPCURL=1 makes a
# missing grpcurl an error instead of a skipped test.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> cargo build --workspace --bins"
cargo build --workspace --bins
echo "==> cargo test --workspace"
cargo test --workspace
