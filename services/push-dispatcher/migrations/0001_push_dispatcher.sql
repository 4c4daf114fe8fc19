-- The push dispatcher's own schema (TIDINGS_PUSH_DB_SCHEMA).

-- Registered devices of signed-in customers. A token is one device: registered again by
-- another account, it moves there.
CREATE TABLE devices (
    device_id     uuid        PRIMARY KEY,
    account_id    text        NOT NULL,
    platform      text        NOT NULL CHECK (platform IN ('ios', 'android')),
    token         text        NOT NULL,
    app_id        text        NOT NULL,
    locale        text        NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (platform, token)
);
CREATE INDEX devices_by_account ON devices (account_id);

-- Push preferences; no row means the defaults (everything on, no quiet hours).
CREATE TABLE preferences (
    account_id    text        PRIMARY KEY,
    push_enabled  boolean     NOT NULL,
    agent_replies boolean     NOT NULL,
    info_requests boolean     NOT NULL,
    resolutions   boolean     NOT NULL,
    quiet_start   time,
    quiet_end     time,
    time_zone     text,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Pushes held for the end of the user's quiet hours, with the event they came from.
CREATE TABLE held_pushes (
    id          bigserial   PRIMARY KEY,
    event_id    uuid        NOT NULL,
    device_id   uuid        NOT NULL,
    ticket_id   uuid        NOT NULL,
    kind        text        NOT NULL,
    -- The ticket event's per-ticket sequence: what happened after it is what has a higher one.
    sequence    bigint      NOT NULL,
    held_at     timestamptz NOT NULL,
    release_at  timestamptz NOT NULL,
    event       bytea       NOT NULL,
    traceparent text,
    UNIQUE (event_id, device_id)
);
CREATE INDEX held_pushes_due ON held_pushes (release_at);

-- The sequence of each ticket's latest resolution: a held reply of a ticket resolved since
-- (a higher sequence) is dropped. Sequences, not clocks: they are the ticket's own order.
CREATE TABLE resolutions (
    ticket_id uuid   PRIMARY KEY,
    sequence  bigint NOT NULL
);

-- What was pushed, keyed by (event, device): a redelivered event pushes nothing twice.
-- The columns tidings-delivery's send log expects.
CREATE TABLE push_sends (
    event_id    uuid        NOT NULL,
    recipient   text        NOT NULL,
    kind        text        NOT NULL,
    message_id  text        NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('sent', 'failed')),
    detail      text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, recipient)
);

-- Outcome events for the notification-events topic (the shape the outbox relay reads).
CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    event_id   uuid        NOT NULL,
    topic      text        NOT NULL,
    key        bytea       NOT NULL,
    value      bytea       NOT NULL,
    headers    jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
