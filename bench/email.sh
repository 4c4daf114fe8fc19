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
# Steps 1-3 run BENCH_EMAIL_ROUNDS times (3), alternating ours and the anchor: on two shared
# cores single runs of either moved by ±10 %, so each round is printed and the verdict is on
# the median ratio.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N="${BENCH_EMAILS:-50000}"
ROUNDS="${BENCH_EMAIL_ROUNDS:-3}"
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
"${TANSU_BIN:-tansu}" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --storage-engine memory://tansu/ > .dev/bench-email-tansu.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$KAFKA_PORT) 2>/dev/null && break; sleep 0.1; done
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$SINK_PORT) 2>/dev/null && break; sleep 0.1; done
metric() { # name [label filter] -> summed value
  curl -fsS "http://$ADMIN/metrics" 2>/dev/null | awk -v n="$1" -v f="${2:-}" \
    '$1 ~ "^"n"({|$)" && index($0, f) { s += $NF } END { printf "%d", s }'
}
# The crash window's 99th percentile in ms (SMTP acceptance -> send record), from the
# histogram's buckets: the smallest bucket bound holding 99 % of the sends.
window_p99() {
  curl -fsS "http://$ADMIN/metrics" 2>/dev/null | awk '
    /^tidings_email_unrecorded_seconds_bucket/ {
      match($0, /le="[^"]*"/); k++; le[k] = substr($0, RSTART + 4, RLENGTH - 5); n[k] = $NF }
    /^tidings_email_unrecorded_seconds_count/ { total = $NF }
    END { for (i = 1; i <= k; i++) if (n[i] >= 0.99 * total) {
            if (le[i] == "+Inf") print 99999; else printf "%.0f\n", le[i] * 1000; exit } }'
}
# One round: fresh topic, schema and group; the dispatcher drains the preloaded events, then
# smtp-source sends as many messages. Appends "ours anchor rss_kib size" to .dev/bench-email-rounds.
round() {
  local r="$1" topic="bench.email.$STAMP.$1"
  echo "round $r: preloading $N ticket events on $topic" >&2
  "$BIN/tidings-preload" --brokers "127.0.0.1:$KAFKA_PORT" --topic "$topic" --count "$N" >/dev/null
  echo "round $r: email dispatcher, $SESSIONS SMTP sessions, $N emails" >&2
  DATABASE_URL="$PG/$DB" TIDINGS_EMAIL_DB_SCHEMA="bench_email_${STAMP}_$r" KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT" \
    TIDINGS_TICKET_EVENTS_TOPIC="$topic" TIDINGS_ACCESS_CODES_TOPIC="$topic.codes" \
    TIDINGS_NOTIFICATION_EVENTS_TOPIC="$topic.notifications" TIDINGS_EMAIL_DLQ_TOPIC="$topic.dlq" \
    TIDINGS_EMAIL_GROUP_ID="bench-$STAMP-$r" TIDINGS_SMTP_URL="smtp://127.0.0.1:$SINK_PORT" \
    TIDINGS_SMTP_POOL_SIZE="$SESSIONS" TIDINGS_EMAIL_ADMIN_ADDR="$ADMIN" RUST_LOG=warn \
    "$BIN/email-dispatcher" > .dev/bench-email-dispatcher.log 2>&1 &
  DISPATCHER=$!
  pids+=($DISPATCHER)
  local T_FIRST="" T_LAST="" T_CPU="" now CONSUMED SENT LAST
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
  local bytes rss_kb size ours s0 s1 anchor window
  bytes="$(metric tidings_email_bytes_total)"
  window="$(window_p99)"
  # The whole histogram, kept for a look at the window's shape.
  curl -fsS "http://$ADMIN/metrics" 2>/dev/null | grep -E '^tidings_(email_unrecorded|send_record_write)_seconds' > ".dev/bench-email-window-$r.txt" || true
  rss_kb="$(awk '/VmHWM/ {print $2}' /proc/$DISPATCHER/status)"
  kill -TERM $DISPATCHER; wait $DISPATCHER 2>/dev/null || true
  size=$((bytes / N))
  ours="$(awk -v n="$N" -v a="$T_FIRST" -v b="$T_LAST" 'BEGIN {printf "%.0f", n / (b - a)}')"
  awk -v a="$T_FIRST" -v b="$T_CPU" 'BEGIN {print b - a}' > .dev/bench-email-cpu.secs

  echo "round $r: smtp-source, $SESSIONS sessions, $N messages of $size bytes" >&2
  s0="$(date +%s.%N)"
  smtp-source -d -s "$SESSIONS" -m "$N" -l "$size" -f no-reply@tidings.example -t load@example.com "127.0.0.1:$SINK_PORT"
  s1="$(date +%s.%N)"
  anchor="$(awk -v n="$N" -v a="$s0" -v b="$s1" 'BEGIN {printf "%.0f", n / (b - a)}')"
  echo "$ours $anchor $rss_kb $size $window" >> .dev/bench-email-rounds
}

: > .dev/bench-email-rounds
for r in $(seq "$ROUNDS"); do round "$r"; done
# Per round: ours, anchor, ratio; then the medians and the verdict on the median ratio.
ROWS="$(awk '{ printf "round %d: email dispatcher %6d emails/s, smtp-source %6d msgs/s, ratio %.2f\n", NR, $1, $2, $1 / $2 }' .dev/bench-email-rounds)"
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
OURS="$(awk '{ print $1 }' .dev/bench-email-rounds | median)"
ANCHOR="$(awk '{ print $2 }' .dev/bench-email-rounds | median)"
RATIO="$(awk '{ printf "%.4f\n", $1 / $2 }' .dev/bench-email-rounds | median | awk '{ printf "%.2f", $1 }')"
RSS_KB="$(awk '$3 > m { m = $3 } END { print m }' .dev/bench-email-rounds)"
SIZE="$(awk 'END { print $4 }' .dev/bench-email-rounds)"
WINDOW="$(awk '$5 > m { m = $5 } END { print m + 0 }' .dev/bench-email-rounds)"
check() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == ">=") ? v >= t : v <= t; print ok ? "ok" : "MISSED" }'; }

cat <<REPORT

== email dispatcher ($(nproc) cores, $N emails, $SESSIONS SMTP sessions, ${SIZE} B average, $ROUNDS rounds) ==
$ROWS
smtp-source -> smtp-sink (median)     ${ANCHOR} msgs/s
email dispatcher -> smtp-sink (median) ${OURS} emails/s (first consume to last accepted)
ratio ours / smtp-source (median)     ${RATIO}   target >= 0.7   $(check "$RATIO" 0.7 ">=")
email-dispatcher peak RSS (max)       $((RSS_KB / 1024)) MiB   target <= 100   $(check "$((RSS_KB / 1024))" 100 "<=")
crash window p99 (max over rounds)    <= ${WINDOW} ms   target <= 10   $(check "$WINDOW" 10 "<=")
where the CPU went while the dispatcher ran, last round (shares of one core; the machine has $(nproc)):
$(cpu_split .dev/bench-email-cpu.0 .dev/bench-email-cpu.1 "$(cat .dev/bench-email-cpu.secs)")
REPORT
