#!/usr/bin/env bash
# The local stack behind `make run` and `make test`: PostgreSQL (the machine's own, started
# or installed if missing), the tansu Kafka-compatible broker (installed with cargo and
# started on loopback) unless KAFKA_BROKERS points at a real Kafka, and MailDev (npm, a real
# SMTP server with a web inbox and an HTTP API) on loopback.
#
#   stack.sh deps   install what is missing (tansu, PostgreSQL, MailDev)
#   stack.sh up     start what is not running and create the databases
#   stack.sh browser  install what the browser tests need (chromium, playwright-core, axe-core)
#   stack.sh s3     install and start the S3 server the attachment tests use (moto)
#   stack.sh down   stop what this script started
#   stack.sh env    print the variables that point the services at the stack
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${TIDINGS_DEV_DIR:-$ROOT/.dev}"
PG_HOST=127.0.0.1
PG_PORT="${TIDINGS_DEV_PG_PORT:-5432}"
KAFKA_PORT="${TIDINGS_DEV_KAFKA_PORT:-19092}"
SMTP_PORT="${TIDINGS_DEV_SMTP_PORT:-1025}"
MAILDEV_WEB_PORT="${TIDINGS_DEV_MAILDEV_WEB_PORT:-1080}"
TANSU_VERSION=0.6.0
# tansu is built with the SQLite storage engine (feature libsql) and our patches
# (deploy/dev/tansu/<crate>/*.patch; docs/decisions/0002-tansu-patches.md) into a root named
# after them, so a tansu built otherwise is never mistaken for ours.
TANSU_PATCHES="$ROOT/deploy/dev/tansu"
TANSU_BUILD="$(cd "$TANSU_PATCHES" && { ls ./*/*.patch; cat ./*/*.patch; } | sha256sum | cut -c1-12)"
TANSU_ROOT="${TIDINGS_TANSU_ROOT:-$HOME/.cache/tidings/tansu-$TANSU_VERSION-libsql-$TANSU_BUILD}"
TANSU="$TANSU_ROOT/bin/tansu"
# `make run` keeps topics and committed offsets across broker restarts (sqlite storage under
# .dev/); TIDINGS_DEV_KAFKA_STORAGE=memory gives a broker that forgets on restart.
KAFKA_STORAGE="${TIDINGS_DEV_KAFKA_STORAGE:-sqlite}"
MAILDEV_VERSION=3
# moto's server mode: a real S3-protocol server from PyPI, for the S3 attachment tests.
MOTO_VENV="$STATE/moto"
S3_PORT="${TIDINGS_DEV_S3_PORT:-19500}"
MAILDEV_BIN="$STATE/maildev/node_modules/.bin/maildev"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\033[1m[stack]\033[0m %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

wait_port() { # host port seconds what
  local deadline=$((SECONDS + $3))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then log "$4 did not come up on $1:$2"; return 1; fi
    sleep 0.2
  done
}

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }

ensure_postgres_installed() {
  if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql/*/main >/dev/null 2>&1; then return; fi
  log "installing PostgreSQL from Debian packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql postgresql-client >/dev/null
  local ver; ver="$(ls /etc/postgresql | sort -V | tail -1)"
  # Local development only: trust loopback connections, as the shared machines do.
  local hba="/etc/postgresql/$ver/main/pg_hba.conf"
  if ! grep -q 'tidings-dev' "$hba"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust # tidings-dev\nhost all all ::1/128 trust # tidings-dev' "$hba"
  fi
}

start_postgres() {
  pg_up && return
  ensure_postgres_installed
  local ver; ver="$(ls /etc/postgresql | sort -V | tail -1)"
  log "starting PostgreSQL $ver"
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  wait_port "$PG_HOST" "$PG_PORT" 30 PostgreSQL
  for _ in $(seq 50); do pg_up && break; sleep 0.2; done
  pg_up || { log "PostgreSQL is not accepting connections"; exit 1; }
}

create_db() {
  local db="$1"
  if ! psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
    log "creating database $db"
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -qc "CREATE DATABASE \"$db\""
  fi
}

ensure_tansu() {
  [ -n "${KAFKA_BROKERS:-}" ] && return
  if "$TANSU" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then return; fi
  log "installing tansu $TANSU_VERSION (sqlite storage, patched) with cargo into $TANSU_ROOT (about 13 minutes, once)"
  # Each patched crate is fetched from crates.io, patched, and built in place of the
  # registry's copy.
  local src crate dir patch; src="$(mktemp -d)"
  local config=()
  for dir in "$TANSU_PATCHES"/*/; do
    crate="$(basename "$dir")"
    curl -sSfL "https://static.crates.io/crates/$crate/$crate-$TANSU_VERSION.crate" | tar -xz -C "$src"
    for patch in "$dir"*.patch; do patch -s -d "$src/$crate-$TANSU_VERSION" -p1 <"$patch"; done
    config+=(--config "patch.crates-io.$crate.path=\"$src/$crate-$TANSU_VERSION\"")
  done
  cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore,libsql --root "$TANSU_ROOT" \
    "${config[@]}"
  rm -rf "$src"
}

tansu_storage_url() {
  case "$KAFKA_STORAGE" in
    memory) echo "memory://tansu/" ;;
    # tansu reads the URL's path relative to its working directory (a leading / is dropped).
    sqlite) echo "sqlite://tansu.db" ;;
    *) log "TIDINGS_DEV_KAFKA_STORAGE must be sqlite or memory, not $KAFKA_STORAGE"; exit 2 ;;
  esac
}

start_tansu() {
  if [ -n "${KAFKA_BROKERS:-}" ]; then log "using Kafka at $KAFKA_BROKERS"; return; fi
  mkdir -p "$STATE"
  if (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; then return; fi
  local url="tcp://127.0.0.1:$KAFKA_PORT" storage
  storage="$(tansu_storage_url)"
  log "starting tansu on 127.0.0.1:$KAFKA_PORT (storage $storage)"
  mkdir -p "$STATE/tansu"
  (cd "$STATE/tansu" && exec nohup "$TANSU" broker --listener-url "$url" --advertised-listener-url "$url" \
    --storage-engine "$storage" >>"$STATE/tansu.log" 2>&1) &
  echo $! >"$STATE/tansu.pid"
  wait_port 127.0.0.1 "$KAFKA_PORT" 30 tansu
}

ensure_npm() {
  if command -v npm >/dev/null; then return; fi
  log "installing Node.js and npm from Debian packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nodejs npm >/dev/null
}

ensure_maildev() {
  if [ -x "$MAILDEV_BIN" ]; then return; fi
  ensure_npm
  log "installing MailDev $MAILDEV_VERSION with npm"
  mkdir -p "$STATE/maildev"
  npm install --prefix "$STATE/maildev" --no-audit --no-fund --loglevel=error "maildev@$MAILDEV_VERSION" >/dev/null
}

# The browser tests: Debian's chromium (no browser download works here) and the locked
# playwright-core and axe-core packages of tests/browser.
BROWSER_DIR="$ROOT/tests/browser"
ensure_browser() {
  if [ ! -x /usr/bin/chromium ]; then
    log "installing chromium from Debian packages (for the browser tests)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
  fi
  if [ ! -f "$BROWSER_DIR/node_modules/.package-lock.json" ] ||
     [ "$BROWSER_DIR/package-lock.json" -nt "$BROWSER_DIR/node_modules/.package-lock.json" ]; then
    ensure_npm
    log "installing the browser tests' packages (npm ci)"
    npm ci --prefix "$BROWSER_DIR" --no-audit --no-fund --loglevel=error >/dev/null
  fi
}

ensure_moto() {
  if [ -x "$MOTO_VENV/bin/moto_server" ]; then return; fi
  log "installing moto (an S3 server, from PyPI) into .dev/moto"
  mkdir -p "$STATE"
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/deploy/dev/requirements-s3.txt"
}

start_moto() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null; then return; fi
  log "starting moto (S3) on 127.0.0.1:$S3_PORT"
  nohup "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$STATE/moto.log" 2>&1 &
  echo $! >"$STATE/moto.pid"
  wait_port 127.0.0.1 "$S3_PORT" 30 moto
}

# A MailDev left running by a checkout that was since deleted still answers on its ports but
# can no longer store mail (its --mail-directory is gone): stop it so ours can start.
stop_orphaned_maildev() {
  local pid dir
  for pid in $(pgrep -f "maildev.*--web $MAILDEV_WEB_PORT" || true); do
    dir="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | awk 'prev == "--mail-directory" { print } { prev = $0 }')"
    if [ -n "$dir" ] && [ ! -d "$dir" ]; then
      log "stopping an orphaned MailDev (pid $pid; its mail directory $dir is gone)"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
}

start_maildev() {
  mkdir -p "$STATE/maildev/mail"
  stop_orphaned_maildev
  if (exec 3<>"/dev/tcp/127.0.0.1/$MAILDEV_WEB_PORT") 2>/dev/null; then return; fi
  log "starting MailDev: SMTP 127.0.0.1:$SMTP_PORT, inbox http://127.0.0.1:$MAILDEV_WEB_PORT"
  # Bounded: the dev inbox keeps the newest 5000 messages.
  nohup "$MAILDEV_BIN" --smtp "$SMTP_PORT" --ip 127.0.0.1 --web "$MAILDEV_WEB_PORT" --web-ip 127.0.0.1 \
    --mail-directory "$STATE/maildev/mail" --max-emails 5000 --silent >"$STATE/maildev.log" 2>&1 &
  echo $! >"$STATE/maildev.pid"
  wait_port 127.0.0.1 "$SMTP_PORT" 30 "MailDev SMTP"
  wait_port 127.0.0.1 "$MAILDEV_WEB_PORT" 30 "MailDev web"
}

stop_pidfile() { # name
  if [ -f "$STATE/$1.pid" ]; then
    kill "$(cat "$STATE/$1.pid")" 2>/dev/null || true
    rm -f "$STATE/$1.pid"
    log "stopped $1"
  fi
}

case "${1:-}" in
  deps)
    ensure_tansu
    ensure_maildev
    pg_up || ensure_postgres_installed
    ;;
  up)
    ensure_tansu
    ensure_maildev
    start_postgres
    create_db tidings
    create_db tidings_test
    start_tansu
    start_maildev
    ;;
  browser)
    ensure_browser
    ;;
  s3)
    ensure_moto
    start_moto
    ;;
  down)
    stop_pidfile tansu
    stop_pidfile maildev
    stop_pidfile moto
    ;;
  env)
    echo "export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:$KAFKA_PORT}"
    echo "export TANSU_BIN=$TANSU"
    echo "export MAILDEV_BIN=$MAILDEV_BIN"
    echo "export TIDINGS_TEST_SMTP=127.0.0.1:$SMTP_PORT"
    echo "export TIDINGS_TEST_MAILDEV=http://127.0.0.1:$MAILDEV_WEB_PORT"
    echo "export TIDINGS_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT"
    ;;
  *)
    echo "usage: $0 deps|up|browser|s3|down|env" >&2
    exit 2
    ;;
esac
