#!/usr/bin/env bash
# `make bench`, portal part: the ticket page of a ticket with 50 messages, for a signed-in
# customer, against its anchor in the same run.
#
# 1. Anchor: the same number of concurrent GetTicket calls straight to the ticket service
#    (tidings-portalbench get-ticket), BENCH_CLIENTS at once for BENCH_SECONDS.
# 2. Ours: wrk (Debian) with the same concurrency and time against the portal's
#    /tickets/{id}, with the session cookie of a real sign-in through the OpenID Connect
#    provider double: each page is a GetTicket over gRPC plus rendering.
# Prints both, the ratio (target >= 0.7), the page's p99 (target <= 20 ms) and the portal's
# peak RSS (target <= 60 MiB).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECONDS_RUN="${BENCH_SECONDS:-20}"
CLIENTS="${BENCH_CLIENTS:-32}"
KAFKA_PORT="${BENCH_PORTAL_KAFKA_PORT:-19195}"
PG="postgres://postgres@127.0.0.1:5432"
DB=tidings_bench
set -a; . deploy/dev/dev.env; set +a
mkdir -p .dev

if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian)" >&2
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --quiet -p ticket-service -p portal -p tidings-oidc-double -p tidings-loadgen
BIN="$ROOT/target/release"
psql "$PG/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" | grep -q 1 || psql "$PG/postgres" -qc "CREATE DATABASE $DB"
psql "$PG/$DB" -qtAc "SELECT 'DROP SCHEMA \"' || nspname || '\" CASCADE;' FROM pg_namespace WHERE nspname LIKE 'bench\_portal\_%'" | PGOPTIONS='-c client_min_messages=warning' psql "$PG/$DB" -q >/dev/null
STAMP="$(date +%s)"

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
wait_port() { for _ in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

"${TANSU_BIN:-tansu}" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --storage-engine memory://tansu/ > .dev/bench-portal-tansu.log 2>&1 &
pids+=($!); wait_port "$KAFKA_PORT"

DATABASE_URL="$PG/$DB" TIDINGS_DB_SCHEMA="bench_portal_$STAMP" KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT" \
  TIDINGS_TICKET_EVENTS_TOPIC="tidings.bench-portal.$STAMP" TIDINGS_ACCESS_CODES_TOPIC="tidings.bench-portal.$STAMP.codes" \
  TIDINGS_GRPC_ADDR=127.0.0.1:50651 TIDINGS_ADMIN_ADDR=off RUST_LOG=warn \
  "$BIN/ticket-service" > .dev/bench-portal-ticket-service.log 2>&1 &
pids+=($!); wait_port 50651

PORTAL_URL=http://127.0.0.1:18080
"$BIN/oidc-double" --dir .dev/bench-oidc --port 18446 --redirect-uri "$PORTAL_URL/oidc/callback" \
  > .dev/bench-portal-oidc.log 2>&1 &
pids+=($!); wait_port 18446
TIDINGS_PORTAL_ADDR=127.0.0.1:18080 TIDINGS_PORTAL_PUBLIC_URL="$PORTAL_URL" TIDINGS_PORTAL_ADMIN_ADDR=off \
  TIDINGS_TICKET_SERVICE_URL=http://127.0.0.1:50651 TIDINGS_OIDC_ISSUER=http://127.0.0.1:18446 RUST_LOG=warn \
  "$BIN/portal" > .dev/bench-portal.log 2>&1 &
PORTAL=$!; pids+=($PORTAL); wait_port 18080

SETUP="$("$BIN/tidings-portalbench" --addr http://127.0.0.1:50651 setup --portal "$PORTAL_URL" --messages 50)"
TICKET="$(sed -nE 's/^ticket_id=(.*)/\1/p' <<<"$SETUP")"
COOKIE="$(sed -nE 's/^cookie=(.*)/\1/p' <<<"$SETUP")"
# The page answers, and it is the 50-message ticket.
MESSAGES="$(curl -fsS -H "Cookie: $COOKIE" "$PORTAL_URL/tickets/$TICKET" | grep -c '<li class="message')"

echo "anchor: GetTicket over gRPC, $CLIENTS clients, ${SECONDS_RUN}s (+3s warm-up)" >&2
ANCHOR="$("$BIN/tidings-portalbench" --addr http://127.0.0.1:50651 get-ticket --ticket-id "$TICKET" \
  --concurrency "$CLIENTS" --seconds "$SECONDS_RUN")"
echo "portal: wrk, $CLIENTS connections, ${SECONDS_RUN}s (+3s warm-up)" >&2
wrk -t2 -c"$CLIENTS" -d3s -H "Cookie: $COOKIE" "$PORTAL_URL/tickets/$TICKET" >/dev/null
WRK="$(wrk -t2 -c"$CLIENTS" -d"${SECONDS_RUN}s" --latency -H "Cookie: $COOKIE" "$PORTAL_URL/tickets/$TICKET")"
RSS_KB="$(awk '/VmHWM/ {print $2}' /proc/$PORTAL/status)"

# wrk prints latencies with units (us, ms, s); in ms:
ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'; }
PAGE_RPS="$(awk '/^Requests\/sec:/ {printf "%d", $2}' <<<"$WRK")"
PAGE_P50="$(ms "$(awk '$1 == "50%" {print $2}' <<<"$WRK")")"
PAGE_P99="$(ms "$(awk '$1 == "99%" {print $2}' <<<"$WRK")")"
NON2XX="$(awk '/Non-2xx/ {print $NF}' <<<"$WRK")"
GRPC_RPS="$(sed -E 's/.*getticket_rps=([0-9]+).*/\1/' <<<"$ANCHOR")"
GRPC_P99="$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$ANCHOR")"
RATIO="$(awk -v a="$PAGE_RPS" -v b="$GRPC_RPS" 'BEGIN {printf "%.2f", a / b}')"
check() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == ">=") ? v >= t : v <= t; print ok ? "ok" : "MISSED" }'; }

cat <<REPORT

== portal ticket page ($(nproc) cores, $CLIENTS connections, ${SECONDS_RUN}s, a ticket of $MESSAGES messages) ==
GetTicket over gRPC (anchor)          ${GRPC_RPS} calls/s   p99 ${GRPC_P99} ms
portal /tickets/{id} (wrk)            ${PAGE_RPS} pages/s   p50 ${PAGE_P50} ms   p99 ${PAGE_P99} ms   non-2xx ${NON2XX:-0}
ratio portal / GetTicket              ${RATIO}   target >= 0.7   $(check "$RATIO" 0.7 ">=")
page p99                              ${PAGE_P99} ms   target <= 20   $(check "$PAGE_P99" 20 "<=")
portal peak RSS                       $((RSS_KB / 1024)) MiB   target <= 60   $(check "$((RSS_KB / 1024))" 60 "<=")
raw: $ANCHOR
REPORT
