-- API tokens of the CLI: only a SHA-256 of each token is kept.
CREATE TABLE tokens (
    name        TEXT PRIMARY KEY NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
