-- Pruning by age (TIDINGS_IDEMPOTENCY_RETENTION_DAYS) reads idempotency keys by creation time.
CREATE INDEX idempotency_keys_by_time ON idempotency_keys (created_at);
