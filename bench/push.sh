#!/usr/bin/env bash
# `make bench`, push part (driven by tidings-pushbench, see its header):
# 1. fan-out: pushes/s accepted by the APNs double from a dispatcher working off preloaded
#    events for users with several devices, against h2load (Debian nghttp2-client) sending
#    the same payload with the same concurrency to the same double; the dispatcher's RSS;
#    the crash window (APNs acceptance -> send record, tidings_push_unrecorded_seconds) p99.
# 2. end to end: agent replies at BENCH_E2E_RATE/s through the ticket service; latency from
#    PostReply returning to the push arriving at the double.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
KAFKA_PORT="${BENCH_PUSH_KAFKA_PORT:-19194}"
PG="postgres://postgres@127.0.0.1:5432"
DB=tidings_bench
set -a; . deploy/dev/dev.env; set +a
mkdir -p .dev

if ! command -v h2load >/dev/null; then
  echo "installing h2load (Debian nghttp2-client)" >&2
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nghttp2-client >/dev/null
fi
cargo build --release --quiet -p push-dispatcher -p ticket-service -p tidings-loadgen
psql "$PG/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" | grep -q 1 || psql "$PG/postgres" -qc "CREATE DATABASE $DB"
psql "$PG/$DB" -qtAc "SELECT 'DROP SCHEMA \"' || nspname || '\" CASCADE;' FROM pg_namespace WHERE nspname LIKE 'bench\_push\_%'" | PGOPTIONS='-c client_min_messages=warning' psql "$PG/$DB" -q >/dev/null

"${TANSU_BIN:-tansu}" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --storage-engine memory://tansu/ > .dev/bench-push-tansu.log 2>&1 &
TANSU=$!
trap 'kill $TANSU 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$KAFKA_PORT) 2>/dev/null && break; sleep 0.1; done

OUT="$(DATABASE_URL="$PG/$DB" KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT" target/release/tidings-pushbench \
  --users "${BENCH_PUSH_USERS:-1000}" --devices-per-user "${BENCH_PUSH_DEVICES:-4}" \
  --events "${BENCH_PUSH_EVENTS:-10000}" --streams "${BENCH_PUSH_STREAMS:-64}" \
  --e2e-rate "${BENCH_E2E_RATE:-500}" --e2e-seconds "${BENCH_E2E_SECONDS:-20}")"
val() { sed -E "s/.*$1=([^ ]+).*/\1/" <<<"$OUT"; }
OURS="$(val fanout_pushes_per_s)"; H2="$(val h2load_per_s)"; RSS="$(val dispatcher_peak_rss_mib)"
P50="$(val e2e_p50_ms)"; P99="$(val e2e_p99_ms)"; WINDOW="$(val crash_window_p99_ms)"
RATIO="$(awk -v a="$OURS" -v b="$H2" 'BEGIN {printf "%.2f", a / b}')"
check() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == ">=") ? v >= t : v <= t; print ok ? "ok" : "MISSED" }'; }

cat <<REPORT

== push dispatcher ($(nproc) cores) ==
h2load -> APNs double                 ${H2} req/s (one connection, $(val streams) streams, $(val pushes) requests, all 2xx: $(val h2load_all_ok))
push dispatcher -> APNs double        ${OURS} pushes/s (fan-out of preloaded events, first consume to last push)
ratio ours / h2load                   ${RATIO}   target >= 0.7   $(check "$RATIO" 0.7 ">=")
push-dispatcher peak RSS              ${RSS} MiB   target <= 100   $(check "$RSS" 100 "<=")
crash window p99 (fan-out)            <= ${WINDOW} ms   target <= 10   $(check "$WINDOW" 10 "<=")
end to end, $(val e2e_offered_per_s) replies/s offered   p50 ${P50} ms   p99 ${P99} ms   ($(val e2e_arrived) of $(val e2e_replies) pushes)
  target p50 <= 15 ms                 $(check "$P50" 15 "<=")
  target p99 <= 50 ms                 $(check "$P99" 50 "<=")
raw: $OUT
REPORT
