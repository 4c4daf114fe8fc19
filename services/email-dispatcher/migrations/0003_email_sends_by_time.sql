-- Pruning by age (TIDINGS_EMAIL_RETENTION_DAYS) reads send records by time.
CREATE INDEX email_sends_by_time ON email_sends (recorded_at);
