-- Snapshot of the ticket's decision state (everything but the conversation), written in the
-- same statement as the events it reflects, so the write path need not replay the history.
-- NULL means "replay the events" (rows from before this migration); rebuild-read-model
-- recomputes it from the event log.
ALTER TABLE tickets ADD COLUMN snapshot jsonb;
