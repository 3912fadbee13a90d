#!/usr/bin/env bash
# The whole test suite from a fresh clone: installs redis-server if missing,
# then runs every unit, property and integration test against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
redis-server --version
cargo test --all-targets "$@"
