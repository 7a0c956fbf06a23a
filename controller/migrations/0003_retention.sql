-- Retention: a backup may be pinned (never removed by a policy), and a
-- removal whose store copy could not be deleted stays listed as
-- DELETE_PENDING until a retry deletes it. SQLite cannot change a CHECK
-- constraint in place, so the table is copied into one with the new one.
CREATE TABLE backups_v3 (
    backup_id   TEXT PRIMARY KEY NOT NULL,
    app         TEXT NOT NULL,
    host        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('STARTED', 'COMPLETED', 'FAILED', 'DELETE_PENDING')),
    created_at  TEXT NOT NULL,
    total_size  BIGINT NOT NULL DEFAULT 0,
    services    TEXT NOT NULL DEFAULT '[]',
    error       TEXT,
    pinned      BIGINT NOT NULL DEFAULT 0
);

INSERT INTO backups_v3 (backup_id, app, host, status, created_at, total_size, services, error)
    SELECT backup_id, app, host, status, created_at, total_size, services, error FROM backups;

DROP TABLE backups;

ALTER TABLE backups_v3 RENAME TO backups;

CREATE INDEX backups_by_time ON backups (created_at DESC, backup_id DESC);
CREATE INDEX backups_by_app_time ON backups (app, created_at DESC, backup_id DESC);
