-- The database login a lease's secret carries (`data.username`; not a
-- secret), recorded when the lease is claimed, so the database-side sweep
-- never drops a role that a live lease owns. NULL for non-database secrets
-- and for leases issued before this column existed.
ALTER TABLE credential_leases ADD COLUMN db_username TEXT;
CREATE INDEX credential_leases_db_username ON credential_leases (db_username);
