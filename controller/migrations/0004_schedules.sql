-- Schedules (the store's schedules/<app>.json is their source of truth)
-- and the record of every slot: claimed once (the primary key), so that no
-- slot runs twice, and kept when skipped, so that none is silently dropped.
CREATE TABLE schedules (
    app         TEXT NOT NULL,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    PRIMARY KEY (app, name)
);

CREATE TABLE schedule_runs (
    app         TEXT NOT NULL,
    name        TEXT NOT NULL,
    slot        TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('RUNNING', 'SUCCEEDED', 'FAILED', 'SKIPPED')),
    attempts    BIGINT NOT NULL DEFAULT 0,
    backup_ids  TEXT NOT NULL DEFAULT '[]',
    reason      TEXT,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    PRIMARY KEY (app, name, slot)
);
