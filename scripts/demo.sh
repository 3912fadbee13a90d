#!/usr/bin/env bash
# Live demonstration of a migration through cutover, on throwaway local
# servers: old and new Redis, cutover in front, writes landing on both,
# a flip to read-new, reads served by new, a rollback, and cleanup.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

free_port() {
  local p
  for p in $(seq "$1" $(($1 + 200))); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  echo "no free port near $1" >&2; exit 1
}

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

bold "building cutover"
cargo build --quiet
bin=target/debug/cutover

old=$(free_port 16379); new=$(free_port $((old + 1))); proxy=$(free_port $((new + 1)))
admin=$(free_port $((proxy + 1)))
for port in "$old" "$new"; do
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
    --logfile "$work/redis-$port.log" --daemonize no &
  pids+=($!)
done
for port in "$old" "$new"; do
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
done

cat > "$work/cutover.toml" <<TOML
[listen]
address = "127.0.0.1:$proxy"
[upstreams.old]
address = "127.0.0.1:$old"
[upstreams.new]
address = "127.0.0.1:$new"
[[routes]]
name = "sessions"
patterns = ["session:*"]
phase = "dual-write"
[[routes]]
name = "default"
phase = "old-only"
[admin]
address = "127.0.0.1:$admin"
TOML

bold "old Redis on :$old already holds data from before the migration"
run redis-cli -p "$old" set session:legacy "written before cutover" >/dev/null
run redis-cli -p "$old" set config:theme dark >/dev/null

bold "starting cutover on :$proxy (sessions: dual-write, everything else: old-only)"
CUTOVER_LOG=info "$bin" serve --config "$work/cutover.toml" 2>"$work/cutover.log" &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$proxy" ping >/dev/null 2>&1 && break; sleep 0.1; done
cli() { redis-cli -p "$proxy" "$@"; }

bold "the application writes through cutover"
run cli set session:alice "cart=3"
run cli incr session:visits
run cli set config:lang en

bold "what each cache holds now"
echo "old: $(redis-cli -p "$old" --no-raw keys '*' | tr '\n' ' ')"
echo "new: $(redis-cli -p "$new" --no-raw keys '*' | tr '\n' ' ')"
echo "(session:* writes went to both; config:* stays on old only)"

bold "reads are served by old in dual-write"
run cli get session:legacy

bold "what the operator sees"
run "$bin" status --config "$work/cutover.toml"

bold "cutover: flip 'sessions' to read-new (admin API; persisted, no restart)"
run "$bin" phase sessions read-new --config "$work/cutover.toml"

bold "reads of session:* are now served by new"
run cli get session:alice
run cli get session:legacy
echo "(nil: session:legacy predates the migration and exists only on old."
echo " This is what backfill is for, before flipping in production.)"
run cli set session:bob "cart=1"
echo "new writes still reach old too: $(redis-cli -p "$old" get session:bob)"

bold "a jump that skips a phase is refused"
run "$bin" phase sessions old-only --config "$work/cutover.toml" || true

bold "rollback: one command back to dual-write, nothing lost"
run "$bin" phase sessions dual-write --config "$work/cutover.toml"
run cli get session:bob
run cli get session:legacy

bold "done; stopping cutover and both servers"
