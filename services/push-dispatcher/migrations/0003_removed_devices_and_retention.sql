-- Devices a provider said are gone, kept for a while (TIDINGS_PUSH_REMOVED_DEVICE_DAYS) so
-- that a removal by mistake (a provider URL that answers 404 to everything, a sandbox /
-- production mix-up) can be undone with `push-dispatcher restore-devices`. The recent rows
-- are also what the invalidation guard counts.
CREATE TABLE removed_devices (
    device_id     uuid        PRIMARY KEY,
    account_id    text        NOT NULL,
    platform      text        NOT NULL,
    token         text        NOT NULL,
    app_id        text        NOT NULL,
    locale        text        NOT NULL,
    registered_at timestamptz NOT NULL,
    removed_at    timestamptz NOT NULL,
    reason        text        NOT NULL
);
CREATE INDEX removed_devices_by_time ON removed_devices (removed_at);

-- Resolutions are pruned by age with the send records (TIDINGS_PUSH_RETENTION_DAYS).
ALTER TABLE resolutions ADD COLUMN recorded_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX resolutions_by_time ON resolutions (recorded_at);
CREATE INDEX push_sends_by_time ON push_sends (recorded_at);
