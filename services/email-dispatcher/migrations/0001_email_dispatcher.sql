-- What the email dispatcher sent, keyed by (event, recipient): a redelivered event is not
-- mailed twice. Its own schema (TIDINGS_EMAIL_DB_SCHEMA), never shared with the ticket service.
CREATE TABLE email_sends (
    event_id    uuid        NOT NULL,
    recipient   text        NOT NULL,
    kind        text        NOT NULL,
    message_id  text        NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('sent', 'failed')),
    detail      text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, recipient)
);

-- Delivery outcomes for the notification-events topic, written in the same statement as the
-- send record and published by the outbox relay of tidings-kafka (this is the shape it reads).
CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    event_id   uuid        NOT NULL,
    topic      text        NOT NULL,
    key        bytea       NOT NULL,
    value      bytea       NOT NULL,
    headers    jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
