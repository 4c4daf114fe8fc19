#!/usr/bin/env bash
# `make bench`, ticket part: the ticket service's write path against its anchor, in one run.
#
# 1. pgbench, 32 clients, a custom script with our transaction's shape: one event row and
#    one outbox row (~600 B) into the same tables (same indexes) in a fresh schema.
# 2. The release ticket service on the same Postgres and broker, driven by tidings-loadgen:
#    32 concurrent PostReply clients for the same time.
# Prints both, the ratio, the outbox->broker publish lag (every row's ack time - insert time,
# from the relay's histogram) and the service's peak RSS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECONDS_RUN="${BENCH_SECONDS:-20}"
CLIENTS="${BENCH_CLIENTS:-32}"
PG="postgres://postgres@127.0.0.1:5432"
DB=tidings_bench
KAFKA_BROKERS="${KAFKA_BROKERS:?run through make bench}"
set -a; . deploy/dev/dev.env; set +a
STAMP="$(date +%s)"
SVC_SCHEMA="bench_svc_$STAMP"
PG_SCHEMA="bench_pg_$STAMP"
mkdir -p .dev

psql "$PG/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" | grep -q 1 || psql "$PG/postgres" -qc "CREATE DATABASE $DB"
# Same starting point every run: earlier runs' schemas dropped, dirty pages flushed.
psql "$PG/$DB" -qtAc "SELECT 'DROP SCHEMA \"' || nspname || '\" CASCADE;' FROM pg_namespace WHERE nspname LIKE 'bench\_%'" | PGOPTIONS='-c client_min_messages=warning' psql "$PG/$DB" -q >/dev/null
cargo build --release --quiet -p ticket-service -p tidings-loadgen
BIN="$ROOT/target/release"
export DATABASE_URL="$PG/$DB"

# ---- anchor: pgbench with the same transaction shape ----
TIDINGS_DB_SCHEMA="$PG_SCHEMA" KAFKA_BROKERS="$KAFKA_BROKERS" "$BIN/ticket-service" migrate >/dev/null
BODY="$(printf 'x%.0s' $(seq 300))"
cat > .dev/bench-txn.sql <<SQL
BEGIN;
INSERT INTO events (ticket_id, sequence, event_id, event_type, schema_version, payload, actor, occurred_at, traceparent)
VALUES (gen_random_uuid(), 1, gen_random_uuid(), 'ReplyAdded', 1,
        '{"type":"ReplyAdded","body":"$BODY"}', '{"kind":"agent","account_id":"load-agent","display_name":null}',
        now(), '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01');
INSERT INTO outbox (event_id, topic, key, value, headers)
VALUES (gen_random_uuid(), 'tidings.bench', convert_to('01a20f80-3509-7080-84d5-b5e469b81df8', 'UTF8'),
        convert_to('$BODY', 'UTF8'), '[["ce_specversion","1.0"],["ce_type","tidings.ticket.ReplyAdded.v1"]]');
COMMIT;
SQL
psql "$PG/$DB" -qc CHECKPOINT
echo "pgbench: $CLIENTS clients, ${SECONDS_RUN}s, event+outbox insert per transaction" >&2
PG_TPS="$(PGOPTIONS="-c search_path=$PG_SCHEMA" pgbench -n -c "$CLIENTS" -j 2 -T "$SECONDS_RUN" -f .dev/bench-txn.sql "$DATABASE_URL" 2>/dev/null \
  | awk '/^tps = / {print int($3)}')"
PG_LAT="$(PGOPTIONS="-c search_path=$PG_SCHEMA" psql "$DATABASE_URL" -tAc "SELECT count(*) FROM events")"

# ---- ours: the release ticket service under tidings-loadgen ----
# A fresh broker of its own: tansu's memory storage keeps every topic it was ever sent, and a
# long-lived dev broker gets slower to acknowledge as it grows (seen: ~1 GB, 3x the lag).
if [ -z "${BENCH_KAFKA_BROKERS:-}" ] && command -v "${TANSU_BIN:-tansu}" >/dev/null; then
  BENCH_KAFKA_PORT="${BENCH_KAFKA_PORT:-19192}"
  "${TANSU_BIN:-tansu}" broker --listener-url "tcp://127.0.0.1:$BENCH_KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$BENCH_KAFKA_PORT" \
    --storage-engine memory://tansu/ > .dev/bench-tansu.log 2>&1 &
  BENCH_TANSU=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$BENCH_KAFKA_PORT) 2>/dev/null && break; sleep 0.1; done
  KAFKA_BROKERS="127.0.0.1:$BENCH_KAFKA_PORT"
fi
KAFKA_BROKERS="${BENCH_KAFKA_BROKERS:-$KAFKA_BROKERS}"
TOPIC="tidings.bench.$STAMP"
TIDINGS_DB_SCHEMA="$SVC_SCHEMA" TIDINGS_TICKET_EVENTS_TOPIC="$TOPIC" TIDINGS_ACCESS_CODES_TOPIC="$TOPIC.codes" \
  TIDINGS_GRPC_ADDR=127.0.0.1:50551 TIDINGS_ADMIN_ADDR=127.0.0.1:19465 TIDINGS_DB_MAX_CONNECTIONS="${BENCH_DB_CONNECTIONS:-24}" \
  RUST_LOG=warn KAFKA_BROKERS="$KAFKA_BROKERS" "$BIN/ticket-service" > .dev/bench-ticket-service.log 2>&1 &
SVC=$!
trap 'kill $SVC ${BENCH_TANSU:-} 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/50551) 2>/dev/null && break; sleep 0.1; done
psql "$PG/$DB" -qc CHECKPOINT
echo "ticket service: $CLIENTS concurrent PostReply clients, ${SECONDS_RUN}s (+3s warm-up)" >&2
METRICS=http://127.0.0.1:19465/metrics
"$BIN/tidings-loadgen" --addr http://127.0.0.1:50551 --concurrency "$CLIENTS" --seconds "$SECONDS_RUN" --warmup-seconds 3 > .dev/bench-loadgen.out &
LOADGEN=$!
# The lag window matches the latency window: from the end of the warm-up until the relay
# has published the last row written under load.
sleep 3
curl -fsS "$METRICS" > .dev/bench-metrics-before.txt
wait $LOADGEN
OURS="$(cat .dev/bench-loadgen.out)"
RSS_KB="$(awk '/VmHWM/ {print $2}' /proc/$SVC/status)"
for _ in $(seq 100); do
  PENDING="$(PGOPTIONS="-c search_path=$SVC_SCHEMA" psql "$DATABASE_URL" -tAc "SELECT count(*) FROM outbox")"
  [ "$PENDING" = 0 ] && break; sleep 0.1
done
curl -fsS "$METRICS" > .dev/bench-metrics-after.txt
# The relay records every acknowledged row's lag (ack time - insert time) in a histogram
# with 1 ms buckets up to 20 ms and 5 ms buckets up to 100 ms.
LAG="$(python3 bench/histogram_quantiles.py tidings_outbox_publish_lag_seconds .dev/bench-metrics-before.txt .dev/bench-metrics-after.txt)"
kill -TERM $SVC; wait $SVC 2>/dev/null || true
[ -n "${BENCH_TANSU:-}" ] && kill "$BENCH_TANSU" 2>/dev/null || true
trap - EXIT

OUR_RPS="$(sed -E 's/.*postreply_rps=([0-9]+).*/\1/' <<<"$OURS")"
P50="$(sed -E 's/.*p50_ms=([0-9.]+).*/\1/' <<<"$OURS")"
P99="$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$OURS")"
read -r LAG50 LAG99 ROWS <<<"$LAG"
RATIO="$(awk -v a="$OUR_RPS" -v b="$PG_TPS" 'BEGIN {printf "%.2f", a / b}')"
check() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == ">=") ? v >= t : v <= t; print ok ? "ok" : "MISSED" }'; }

cat <<REPORT

== ticket service write path ($(nproc) cores, $CLIENTS clients, ${SECONDS_RUN}s) ==
pgbench (event + outbox insert txn)   ${PG_TPS} tps  (${PG_LAT} rows)
ticket service PostReply over gRPC    ${OUR_RPS} req/s   p50 ${P50} ms   p99 ${P99} ms
ratio ours / pgbench                  ${RATIO}   target >= 0.5   $(check "$RATIO" 0.5 ">=")
PostReply p99                         ${P99} ms   target <= 25   $(check "$P99" 25 "<=")
outbox -> broker ack lag              p50 ${LAG50} ms   p99 ${LAG99} ms over ${ROWS} rows   target p99 <= 50   $(check "$LAG99" 50 "<=")
ticket-service peak RSS               $((RSS_KB / 1024)) MiB   target <= 100   $(check "$((RSS_KB / 1024))" 100 "<=")
raw: $OURS
REPORT
