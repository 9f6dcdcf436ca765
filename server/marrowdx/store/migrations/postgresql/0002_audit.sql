-- The audit log (store/audit.py's columns). Append-only, enforced by the database: a trigger
-- refuses UPDATE, DELETE and TRUNCATE from any role, and no role but the owner is granted them.
CREATE TABLE audit (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    org        TEXT NOT NULL,
    method     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    request_id TEXT NOT NULL DEFAULT '',
    case_ref   TEXT NOT NULL DEFAULT '',
    report_id  TEXT NOT NULL DEFAULT '',
    peer       TEXT NOT NULL DEFAULT ''
);
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_append_only_row BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_append_only_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit FROM PUBLIC;
