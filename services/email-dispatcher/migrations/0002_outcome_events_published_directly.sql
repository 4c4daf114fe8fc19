-- Outcome events are now published to the broker before the send record is written
-- (tidings-delivery's send log), so the dispatcher keeps no outbox. Upgrading: stop the
-- previous version once its outbox is drained (its tidings_outbox_backlog gauge at 0);
-- rows still here were never published and are dropped with the table.
DROP TABLE IF EXISTS outbox;
