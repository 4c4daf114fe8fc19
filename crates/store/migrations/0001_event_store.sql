-- Append-only event log: the source of truth for every ticket.
CREATE TABLE events (
    ticket_id      uuid        NOT NULL,
    sequence       bigint      NOT NULL CHECK (sequence > 0),
    event_id       uuid        NOT NULL UNIQUE,
    event_type     text        NOT NULL,
    schema_version int         NOT NULL,
    payload        jsonb       NOT NULL,
    actor          jsonb       NOT NULL,
    occurred_at    timestamptz NOT NULL,
    traceparent    text,
    -- Optimistic concurrency: two writers of the same next sequence cannot both commit.
    PRIMARY KEY (ticket_id, sequence)
);

-- Human ticket numbers shown in emails ("ticket 12345").
CREATE SEQUENCE ticket_number_seq START WITH 10001;

-- Read model for listing; rebuilt from `events` by `ticket-service rebuild-read-model`.
-- Its row doubles as the per-ticket write lock (SELECT .. FOR UPDATE).
CREATE TABLE tickets (
    ticket_id            uuid        PRIMARY KEY,
    ticket_number        bigint      NOT NULL UNIQUE,
    requester            jsonb       NOT NULL,
    requester_account_id text,
    subject              text        NOT NULL,
    status               text        NOT NULL,
    created_at           timestamptz NOT NULL,
    last_activity_at     timestamptz NOT NULL,
    version              bigint      NOT NULL
);
CREATE INDEX tickets_by_activity ON tickets (last_activity_at DESC, ticket_id DESC);
CREATE INDEX tickets_by_requester ON tickets (requester_account_id, last_activity_at DESC, ticket_id DESC);

-- Transactional outbox: written in the same transaction as the events it carries.
CREATE TABLE outbox (
    id           bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL,
    topic        text        NOT NULL,
    key          bytea       NOT NULL,
    value        bytea       NOT NULL,
    headers      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;

-- Idempotency keys of mutating RPCs, scoped to the caller.
CREATE TABLE idempotency_keys (
    scope       text        NOT NULL,
    request_id  text        NOT NULL,
    fingerprint text        NOT NULL,
    ticket_id   uuid        NOT NULL,
    outcome     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, request_id)
);
