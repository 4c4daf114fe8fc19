-- The relay now deletes rows once the broker acknowledged them (one cheap write instead of an
-- update plus a later delete), so every row in `outbox` is pending.
DELETE FROM outbox WHERE published_at IS NOT NULL;
DROP INDEX outbox_pending;
ALTER TABLE outbox DROP COLUMN published_at;
