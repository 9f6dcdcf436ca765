"""Reports are durable, findable and idempotent by request id."""

from __future__ import annotations

from marrowdx.store.sqlite import ReportStore


def test_saved_report_survives_reopening(tmp_path):
    path = tmp_path / "r.sqlite3"
    store = ReportStore(path)
    store.save("rpt_1", "ACC-1", "", "2026-01-01T00:00:00Z", b"payload-1")
    store.close()
    again = ReportStore(path)
    assert again.by_report_id("rpt_1").payload == b"payload-1"
    assert again.by_accession_id("ACC-1").report_id == "rpt_1"


def test_same_request_id_returns_the_first_report(tmp_path):
    store = ReportStore(tmp_path / "r.sqlite3")
    first = store.save("rpt_a", "ACC", "req-1", "2026-01-01T00:00:00Z", b"a")
    second = store.save("rpt_b", "ACC", "req-1", "2026-01-01T00:00:01Z", b"b")
    assert second == first
    assert store.by_report_id("rpt_b") is None


def test_accession_lookup_returns_the_newest(tmp_path):
    store = ReportStore(tmp_path / "r.sqlite3")
    store.save("rpt_old", "ACC", "", "2026-01-01T00:00:00Z", b"old")
    store.save("rpt_new", "ACC", "", "2026-02-01T00:00:00Z", b"new")
    assert store.by_accession_id("ACC").report_id == "rpt_new"
    assert store.by_accession_id("NOPE") is None


def test_wal_and_full_sync_are_on(tmp_path):
    store = ReportStore(tmp_path / "r.sqlite3")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
