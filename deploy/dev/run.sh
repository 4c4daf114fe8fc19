#!/usr/bin/env bash
# `make run`: the stack, then the services, in the foreground until Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
"$ROOT/deploy/dev/stack.sh" up
eval "$("$ROOT/deploy/dev/stack.sh" env)"
set -a; . "$ROOT/deploy/dev/dev.env"; set +a

cargo build --quiet -p ticket-service -p email-dispatcher -p push-dispatcher -p portal -p tidings-push-doubles -p tidings-oidc-double -p tidings-cli
BIN="$ROOT/target/debug"
mkdir -p .dev
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; }
trap stop INT TERM EXIT

"$BIN/ticket-service" 2>&1 | sed -u 's/^/[ticket-service] /' &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null && break; sleep 0.2; done
"$BIN/email-dispatcher" 2>&1 | sed -u 's/^/[email-dispatcher] /' &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/9465) 2>/dev/null && break; sleep 0.2; done
# The APNs/FCM doubles: a fresh test CA and keys each start, written for the dispatcher.
rm -f .dev/push/push.env
"$BIN/push-doubles" --dir .dev/push --apns-port 18443 --fcm-port 18444 2>&1 | sed -u 's/^/[push-doubles] /' &
pids+=($!)
for _ in $(seq 100); do [ -f .dev/push/push.env ] && break; sleep 0.2; done
set -a; . .dev/push/push.env; set +a
"$BIN/push-dispatcher" 2>&1 | sed -u 's/^/[push-dispatcher] /' &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/50052) 2>/dev/null && break; sleep 0.2; done
# The OpenID Connect provider double for customer sign-in.
rm -f .dev/oidc/oidc.env
"$BIN/oidc-double" --dir .dev/oidc --port 18445 --redirect-uri "$TIDINGS_PORTAL_PUBLIC_URL/oidc/callback" 2>&1 | sed -u 's/^/[oidc-double] /' &
pids+=($!)
for _ in $(seq 100); do [ -f .dev/oidc/oidc.env ] && break; sleep 0.2; done
set -a; . .dev/oidc/oidc.env; set +a
"$BIN/portal" 2>&1 | sed -u 's/^/[portal] /' &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break; sleep 0.2; done

cat <<BANNER

  Tidings is running.
    customer portal                                   $TIDINGS_PORTAL_PUBLIC_URL
                                                      (every email links here; "Submit a request" opens a guest ticket;
                                                       "Sign in" goes to the identity provider double: sign in as anyone)
    identity provider (OpenID Connect double)         $TIDINGS_OIDC_ISSUER
    gRPC (ticket + guest access, reflection, health)  127.0.0.1:50051
    gRPC (push devices + preferences)                 127.0.0.1:50052
    metrics                                           http://127.0.0.1:9464/metrics (ticket service)
                                                      http://127.0.0.1:9465/metrics (email dispatcher)
                                                      http://127.0.0.1:9466/metrics (push dispatcher)
                                                      http://127.0.0.1:9467/metrics (portal)
    pushes received (APNs / FCM doubles)              https://127.0.0.1:18443/pushes  https://127.0.0.1:18444/pushes
                                                      (test CA: .dev/push/push-test-ca.pem; curl -k works too)
    email inbox (MailDev)                             $TIDINGS_TEST_MAILDEV
    Kafka (tansu)                                     $KAFKA_BROKERS  topic tidings.ticket-events.v1
    Postgres                                          $DATABASE_URL

  Try it from another shell:
    export PATH=\$PWD/target/debug:\$PATH; set -a; . deploy/dev/dev.env; set +a
    export TIDINGS_TOKEN=\$(tidings token --sub ann --email ann@example.com --locale it --name Ann)
    tidings open --subject "Withdrawal stuck" --body "tx 0xabc pending since 09:12"
    tidings list
    AGENT=\$(tidings token --sub giulia --name Giulia --agent)
    tidings --token \$AGENT reply <ticket-id> --body "We are looking into it"
    tidings get <ticket-id>
    # ann@example.com now has two emails in the inbox above (in Italian: her locale is it)
    tidings register-device --platform ios --device-token \$(printf 'ab%.0s' \$(seq 32)) --locale it
    tidings --token \$AGENT reply <ticket-id> --body "Found it"
    curl -sk https://127.0.0.1:18443/pushes    # the push, as the APNs double received it

  A guest in the portal: open $TIDINGS_PORTAL_PUBLIC_URL, "Submit a request" with any
  address, then follow the link in the mail the inbox shows: "Send code", the code from the
  next mail, and the ticket page with its reply box.

  A guest from the CLI:
    TIDINGS_TOKEN= tidings open --subject "Cannot log in" --body "since yesterday" --guest-email guest@example.org --guest-locale en
    tidings --token \$AGENT reply <ticket-id> --body "Please try again now"
    # open the inbox, copy the link from the guest's email, then:
    tidings request-code --link '<link from the email>'   # the code arrives by email
    tidings verify-code --link '<link>' --code <code>       # prints a guest session token
    tidings --token <session> get <ticket-id>

  Ctrl-C stops the services (tansu and MailDev keep running; \`make down\` stops them).
BANNER
wait "${pids[@]}"
