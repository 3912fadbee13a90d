#!/usr/bin/env bash
# Prepares a local virtualenv with redis-py (the second client library the
# integration tests drive the proxy with) and prints its python's path.
# Usage: scripts/python-client.sh   (idempotent; the venv lives in target/)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/pyclient
if ! "$venv/bin/python" -c 'import redis' >/dev/null 2>&1; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    scripts/ensure-deps.sh python3 python3-venv >&2
  fi
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'redis==5.2.1' >&2
fi
echo "$PWD/$venv/bin/python"
