"""Reports are durable, findable only by their owner, and idempotent by request id."""

from __future__ import annotations

import sqlite3

from marrowdx.store.sqlite import ANY_OWNER, ReportStore


def test_saved_report_survives_reopening(tmp_path):
    path = tmp_path / "r.sqlite3"
    store = ReportStore(path)
    store.save("rpt_1", "ACC-1", "", "2026-01-01T00:00:00Z", b"payload-1", owner="org-a")
    store.close()
    again = ReportStore(path)
    assert again.by_report_id("rpt_1", "org-a").payload == b"payload-1"
    assert again.by_accession_id("ACC-1", "org-a").report_id == "rpt_1"


def test_same_request_id_returns_the_first_report(tmp_path):
    store = ReportStore(tmp_path / "r.sqlite3")
    first = store.save("rpt_a", "ACC", "req-1", "2026-01-01T00:00:00Z", b"a", owner="org-a")
    second = store.save("rpt_b", "ACC", "req-1", "2026-01-01T00:00:01Z", b"b", owner="org-a")
    assert second == first
    assert store.by_report_id("rpt_b", "org-a") is None


def test_request_ids_and_lookups_are_scoped_to_the_owner(tmp_path):
    store = ReportStore(tmp_path / "r.sqlite3")
    store.save("rpt_a", "ACC", "req-1", "2026-01-01T00:00:00Z", b"a", owner="org-a")
    # Another organisation reusing the request id gets its own report, not org-a's.
    theirs = store.save("rpt_b", "ACC", "req-1", "2026-01-01T00:00:01Z", b"b", owner="org-b")
    assert theirs.report_id == "rpt_b"
    assert store.by_report_id("rpt_a", "org-b") is None
    assert store.by_accession_id("ACC", "org-a").report_id == "rpt_a"
    assert store.by_request_id("req-1", "org-b").report_id == "rpt_b"
    assert store.by_report_id("rpt_a", ANY_OWNER).owner == "org-a"


def test_accession_lookup_returns_the_newest(tmp_path):
    store = ReportStore(tmp_path / "r.sqlite3")
    store.save("rpt_old", "ACC", "", "2026-01-01T00:00:00Z", b"old", owner="o")
    store.save("rpt_new", "ACC", "", "2026-02-01T00:00:00Z", b"new", owner="o")
    assert store.by_accession_id("ACC", "o").report_id == "rpt_new"
    assert store.by_accession_id("NOPE", "o") is None


def test_version_1_database_is_migrated_to_the_local_owner(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE reports (report_id TEXT PRIMARY KEY, accession_id TEXT, request_id TEXT UNIQUE,
                        created_at TEXT NOT NULL, payload BLOB NOT NULL);
                        INSERT INTO reports VALUES ('rpt_v1', 'ACC', 'req', '2026-01-01T00:00:00Z', x'01');""")
    db.close()
    store = ReportStore(path)
    assert store.by_report_id("rpt_v1", "local").payload == b"\x01"
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == 2
    store.save("rpt_2", "ACC", "req", "2026-01-02T00:00:00Z", b"2", owner="org-b")  # unique per owner now
    assert store.report_ids() == {"rpt_v1", "rpt_2"}


def test_wal_and_full_sync_are_on(tmp_path):
    store = ReportStore(tmp_path / "r.sqlite3")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_audit_log_has_its_own_file_beside_the_reports_and_the_cli_reads_it(tmp_path, capsys):
    from marrowdx.cli import main
    from marrowdx.settings import Settings
    from marrowdx.store.audit import AuditLog

    settings = Settings(database=tmp_path / "reports.sqlite3")
    assert settings.audit_path == tmp_path / "reports.audit.sqlite3"
    audit = AuditLog(settings.audit_path)
    audit.record("lis-a", "org-a", "GetReport", "NOT_FOUND", report_id="rpt_x")
    audit.close()
    assert main(["audit", "--database", str(settings.database_path)]) == 0
    out = capsys.readouterr().out
    assert "lis-a@org-a GetReport NOT_FOUND rpt_x" in out
