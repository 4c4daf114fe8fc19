-- A release loop claims due holds with a lease on the database's clock, renewed while it
-- works: no transaction stays open while pushes are retried, and a replica that dies stops
-- renewing, so its holds are claimable again a minute later.
ALTER TABLE held_pushes ADD COLUMN claimed_by uuid, ADD COLUMN claimed_until timestamptz;
