-- The catalog: an index of the store (the store is the source of truth).
CREATE TABLE backups (
    backup_id   TEXT PRIMARY KEY NOT NULL,
    app         TEXT NOT NULL,
    host        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('STARTED', 'COMPLETED', 'FAILED')),
    created_at  TEXT NOT NULL,
    total_size  BIGINT NOT NULL DEFAULT 0,
    services    TEXT NOT NULL DEFAULT '[]',
    error       TEXT
);

CREATE INDEX backups_by_time ON backups (created_at DESC, backup_id DESC);
CREATE INDEX backups_by_app_time ON backups (app, created_at DESC, backup_id DESC);
