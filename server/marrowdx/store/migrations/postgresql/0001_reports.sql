-- Reports: the same columns as the SQLite store's schema 3 (store/sqlite.py). The payload and the
-- fingerprint are opaque bytes; created_at is the report's own ISO-8601 text, so both backends
-- order an accession's reports the same way.
CREATE TABLE reports (
    report_id     TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    client_id     TEXT NOT NULL DEFAULT '',
    accession_id  TEXT,
    request_id    TEXT,
    created_at    TEXT NOT NULL,
    payload       BYTEA NOT NULL,
    case_digest   TEXT,
    image_digests BYTEA,
    -- One report per request id and organisation, whichever replica saved it (NULL: no request id).
    CONSTRAINT reports_owner_request_id UNIQUE (owner, request_id)
);
CREATE INDEX reports_accession ON reports (owner, accession_id, created_at);
