#!/usr/bin/env bash
# `make bench`, email part: the email dispatcher against Postfix's smtp-sink, and in the same
# run smtp-source against the same sink with the same session count and message size.
#
# 1. A fresh tansu of its own; BENCH_EMAILS ticket events (agent replies; a quarter on guests'
#    tickets, so links are minted) preloaded on a fresh topic.
# 2. The release email dispatcher starts with an empty group and BENCH_SMTP_SESSIONS SMTP
#    sessions; emails/s from its first consumed record to the last email the sink accepted
#    (both read off its /metrics), its peak RSS, and where the CPU went meanwhile.
# 3. smtp-source -d (sessions kept open, as our pool does) sends the same number of messages
#    of our average size (from the dispatcher's byte counter) to the same sink.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N="${BENCH_EMAILS:-50000}"
SESSIONS="${BENCH_SMTP_SESSIONS:-16}"
SINK_PORT="${BENCH_SINK_PORT:-2526}"
KAFKA_PORT="${BENCH_EMAIL_KAFKA_PORT:-19193}"
ADMIN=127.0.0.1:19467
PG="postgres://postgres@127.0.0.1:5432"
DB=tidings_bench
STAMP="$(date +%s)"
set -a; . deploy/dev/dev.env; set +a
. bench/cpu.sh
mkdir -p .dev

if ! command -v smtp-sink >/dev/null || ! command -v smtp-source >/dev/null; then
  echo "installing Postfix's smtp-sink/smtp-source (Debian package postfix, not started)" >&2
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postfix >/dev/null
fi
export PATH="/usr/sbin:$PATH"
cargo build --release --quiet -p email-dispatcher -p tidings-loadgen
BIN="$ROOT/target/release"
psql "$PG/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" | grep -q 1 || psql "$PG/postgres" -qc "CREATE DATABASE $DB"
psql "$PG/$DB" -qtAc "SELECT 'DROP SCHEMA \"' || nspname || '\" CASCADE;' FROM pg_namespace WHERE nspname LIKE 'bench\_email\_%'" | PGOPTIONS='-c client_min_messages=warning' psql "$PG/$DB" -q >/dev/null

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 1024 &
pids+=($!)
tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --storage-engine memory://tansu/ > .dev/bench-email-tansu.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$KAFKA_PORT) 2>/dev/null && break; sleep 0.1; done
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$SINK_PORT) 2>/dev/null && break; sleep 0.1; done
TOPIC="bench.email.$STAMP"
echo "preloading $N ticket events on $TOPIC" >&2
"$BIN/tidings-preload" --brokers "127.0.0.1:$KAFKA_PORT" --topic "$TOPIC" --count "$N" >/dev/null

metric() { # name [label filter] -> summed value
  curl -fsS "http://$ADMIN/metrics" 2>/dev/null | awk -v n="$1" -v f="${2:-}" \
    '$1 ~ "^"n"({|$)" && index($0, f) { s += $NF } END { printf "%d", s }'
}
echo "email dispatcher: $SESSIONS SMTP sessions, $N emails" >&2
DATABASE_URL="$PG/$DB" TIDINGS_EMAIL_DB_SCHEMA="bench_email_$STAMP" KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT" \
  TIDINGS_TICKET_EVENTS_TOPIC="$TOPIC" TIDINGS_ACCESS_CODES_TOPIC="$TOPIC.codes" \
  TIDINGS_NOTIFICATION_EVENTS_TOPIC="$TOPIC.notifications" TIDINGS_EMAIL_DLQ_TOPIC="$TOPIC.dlq" \
  TIDINGS_EMAIL_GROUP_ID="bench-$STAMP" TIDINGS_SMTP_URL="smtp://127.0.0.1:$SINK_PORT" \
  TIDINGS_SMTP_POOL_SIZE="$SESSIONS" TIDINGS_EMAIL_ADMIN_ADDR="$ADMIN" RUST_LOG=warn \
  "$BIN/email-dispatcher" > .dev/bench-email-dispatcher.log 2>&1 &
DISPATCHER=$!
pids+=($DISPATCHER)
T_FIRST=""; T_LAST=""; T_CPU=""
# Scraping costs CPU on the same two cores: every 50 ms until the first record is consumed,
# then every 500 ms; the end is the dispatcher's own timestamp of its last accepted email.
for _ in $(seq 3000); do
  now="$(date +%s.%N)"
  read -r CONSUMED SENT LAST < <(curl -fsS "http://$ADMIN/metrics" 2>/dev/null | awk '
    $1 ~ /^tidings_consumed_total/ { c += $NF }
    $1 ~ /^tidings_emails_total/ && /outcome="sent"/ { s += $NF }
    $1 == "tidings_email_last_sent_timestamp_seconds" { l = $NF }
    END { printf "%d %d %.6f\n", c, s, l }') || true
  if [ -z "$T_FIRST" ] && [ "${CONSUMED:-0}" -gt 0 ]; then T_FIRST="$now"; cpu_snapshot > .dev/bench-email-cpu.0; fi
  if [ -n "$T_FIRST" ] && [ "${SENT:-0}" -ge "$N" ]; then T_LAST="$LAST"; T_CPU="$now"; cpu_snapshot > .dev/bench-email-cpu.1; break; fi
  kill -0 $DISPATCHER 2>/dev/null || { echo "the dispatcher died; see .dev/bench-email-dispatcher.log" >&2; exit 1; }
  if [ -z "$T_FIRST" ]; then sleep 0.05; else sleep 0.5; fi
done
[ -n "$T_LAST" ] || { echo "not all emails were sent in time" >&2; exit 1; }
BYTES="$(metric tidings_email_bytes_total)"
RSS_KB="$(awk '/VmHWM/ {print $2}' /proc/$DISPATCHER/status)"
kill -TERM $DISPATCHER; wait $DISPATCHER 2>/dev/null || true
SIZE=$((BYTES / N))
OURS="$(awk -v n="$N" -v a="$T_FIRST" -v b="$T_LAST" 'BEGIN {printf "%.0f", n / (b - a)}')"

echo "smtp-source: $SESSIONS sessions, $N messages of $SIZE bytes" >&2
S0="$(date +%s.%N)"
smtp-source -d -s "$SESSIONS" -m "$N" -l "$SIZE" -f no-reply@tidings.example -t load@example.com "127.0.0.1:$SINK_PORT"
S1="$(date +%s.%N)"
ANCHOR="$(awk -v n="$N" -v a="$S0" -v b="$S1" 'BEGIN {printf "%.0f", n / (b - a)}')"
RATIO="$(awk -v a="$OURS" -v b="$ANCHOR" 'BEGIN {printf "%.2f", a / b}')"
check() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == ">=") ? v >= t : v <= t; print ok ? "ok" : "MISSED" }'; }

cat <<REPORT

== email dispatcher ($(nproc) cores, $N emails, $SESSIONS SMTP sessions, ${SIZE} B average) ==
smtp-source -> smtp-sink              ${ANCHOR} msgs/s
email dispatcher -> smtp-sink         ${OURS} emails/s (first consume to last accepted)
ratio ours / smtp-source              ${RATIO}   target >= 0.7   $(check "$RATIO" 0.7 ">=")
email-dispatcher peak RSS             $((RSS_KB / 1024)) MiB   target <= 100   $(check "$((RSS_KB / 1024))" 100 "<=")
where the CPU went while the dispatcher ran (shares of one core; the machine has $(nproc)):
$(cpu_split .dev/bench-email-cpu.0 .dev/bench-email-cpu.1 "$(awk -v a="$T_FIRST" -v b="$T_CPU" 'BEGIN {print b - a}')")
REPORT
