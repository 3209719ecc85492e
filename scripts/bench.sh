#!/usr/bin/env bash
# Benchmarks the purchase arbiter against a Redis lock and an etcd lock
# (issue 7), and the arbiter on etcd (issue 13: hand-off and grant with
# --store etcd, one guarded etcd txn, and the failover of three replicas
# whose leader is killed); docs/benchmarks.md has the figures and how to
# read them.
#
#   scripts/bench.sh            full run (several minutes)
#   scripts/bench.sh --quick    short run for CI (about a minute once built)
#
# RESTOCK_BENCH_PROFILE=dev benchmarks the debug build (target/debug) instead
# of building release: CI does so to reuse the test build, since its short
# run only shows the benchmark still works; its figures mean nothing.
#
# Installs redis-server and etcd from Debian's packages if they are missing,
# builds the release binaries, starts Redis and etcd on free loopback ports
# with temporary data folders (stopped on exit; the arbiters on etcd use it
# too, each measurement under an --etcd-prefix of its own), runs
# restock-bench, and
# writes target/bench/results.json. Other flags go to restock-bench
# (e.g. --scenarios handoff,cycle). All traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "==> [bench] $*" >&2; }

# --- tools ---------------------------------------------------------------
install_missing() {
  local pkgs=()
  command -v redis-server >/dev/null || pkgs+=(redis-server)
  command -v etcd >/dev/null || pkgs+=(etcd-server)
  [ ${#pkgs[@]} -eq 0 ] && return 0
  log "installing ${pkgs[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${pkgs[@]}" >/dev/null; then
    log "install failed; apt-get update, then again"
    $sudo apt-get update >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${pkgs[@]}" >/dev/null
  fi
}
install_missing

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- build ---------------------------------------------------------------
profile="${RESTOCK_BENCH_PROFILE:-release}"
case "$profile" in
  release) bin_dir=target/release ;;
  dev) bin_dir=target/debug
       log "RESTOCK_BENCH_PROFILE=dev: the debug build; these figures are not the project's" ;;
  *) echo "scripts/bench.sh: RESTOCK_BENCH_PROFILE must be release or dev, not '$profile'" >&2; exit 2 ;;
esac
log "cargo build --profile $profile (restock-bench, purchase-arbiter, store-sim, stock-watcher)"
build_start=$(date +%s)
cargo build --profile "$profile" -p restock-bench -p purchase-arbiter -p store-sim -p stock-watcher
log "build took $(( $(date +%s) - build_start ))s"

# --- baselines -----------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/restock-bench.XXXXXX")"
pids=()
cleanup() {
  local code=$?
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$code" -ne 0 ]; then
    for f in "$work"/redis.log "$work"/etcd.log; do
      [ -f "$f" ] && { echo "----- last lines of $f -----" >&2; tail -n 20 "$f" >&2; }
    done
  fi
  rm -rf "$work"
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

redis_port=$(free_port)
mkdir -p "$work/redis"
# No persistence: the lock lives in memory only (the usual setup for it).
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
  --dir "$work/redis" --protected-mode yes >"$work/redis.log" 2>&1 &
pids+=($!)
log "redis-server on 127.0.0.1:$redis_port (pid $!)"

etcd_port=$(free_port)
etcd_peer=$(free_port)
# Defaults otherwise: etcd fsyncs its log before answering a write.
etcd --name restock-bench --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "restock-bench=http://127.0.0.1:$etcd_peer" \
  --log-level warn >"$work/etcd.log" 2>&1 &
pids+=($!)
log "etcd on 127.0.0.1:$etcd_port (pid $!), data in $work/etcd"

# 1,000 watcher streams need 2,000+ open files between the two processes.
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- run -----------------------------------------------------------------
log "restock-bench $*"
"$bin_dir/restock-bench" \
  --redis-url "redis://127.0.0.1:$redis_port" \
  --etcd-url "http://127.0.0.1:$etcd_port" \
  --require-baselines \
  --work-dir "$work/arbiter" \
  "$@"
log "results: ${RESTOCK_BENCH_OUT:-target/bench/results.json}"
