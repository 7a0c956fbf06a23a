-- Copies of backups in other stores (--copy-to): one row per backup and
-- location once a copy was tried. A backup with no row for a configured
-- location is pending; a FAILED one is tried again from next_attempt_at.
CREATE TABLE backup_copies (
    backup_id       TEXT NOT NULL,
    location        TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('OK', 'FAILED')),
    reason          TEXT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    updated_at      TEXT NOT NULL,
    next_attempt_at TEXT NOT NULL,
    PRIMARY KEY (backup_id, location)
);

CREATE INDEX backup_copies_by_location ON backup_copies (location, state, next_attempt_at);
