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
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == 3
    store.save("rpt_2", "ACC", "req", "2026-01-02T00:00:00Z", b"2", owner="org-b")  # unique per owner now
    assert store.report_ids() == {"rpt_v1", "rpt_2"}


def test_version_2_database_gains_fingerprint_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "v2.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE reports (report_id TEXT PRIMARY KEY, owner TEXT NOT NULL,
                        client_id TEXT NOT NULL DEFAULT '', accession_id TEXT, request_id TEXT, created_at TEXT NOT NULL,
                        payload BLOB NOT NULL, UNIQUE (owner, request_id));
                        INSERT INTO reports VALUES ('rpt_v2', 'org-a', 'c', 'ACC', 'req', '2026-01-01T00:00:00Z', x'02');
                        PRAGMA user_version=2;""")
    db.close()
    store = ReportStore(path)
    old = store.by_request_id("req", "org-a")
    assert (old.report_id, old.case_digest, old.image_digests) == ("rpt_v2", None, None)
    new = store.save("rpt_3", "", "req-3", "2026-01-02T00:00:00Z", b"3", owner="org-a", case_digest="c" * 64,
                     image_digests=b"F" + b"\1" * 32)
    assert store.by_request_id("req-3", "org-a") == new


def test_a_lookup_does_not_wait_for_a_commit_in_progress(tmp_path):
    """A save holds the writer's lock through its FULL-synchronous commit; lookups read through a
    connection of their own (WAL), so they neither wait for it nor see its uncommitted row."""
    import threading

    store = ReportStore(tmp_path / "r.sqlite3")
    store.save("rpt_1", "ACC", "req-1", "2026-01-01T00:00:00Z", b"1", owner="o")
    found = []
    with store._lock:  # a commit in progress, as a save holds it
        store._db.execute("BEGIN IMMEDIATE")
        store._db.execute("INSERT INTO reports(report_id, owner, created_at, payload) VALUES ('rpt_2','o','t',x'00')")
        reader = threading.Thread(target=lambda: found.append((store.by_request_id("req-1", "o"),
                                                               store.by_report_id("rpt_2", "o"))))
        reader.start()
        reader.join(5)
        alive = reader.is_alive()
        store._db.execute("ROLLBACK")
    reader.join()
    assert not alive, "the lookup waited for the writer's lock"
    assert found[0][0].report_id == "rpt_1" and found[0][1] is None


def test_the_event_loop_keeps_running_while_reports_are_saved_and_looked_up(tmp_path):
    """A loop-lag probe while a slow commit holds the writer: the service's saves and request-id
    lookups run in worker threads, so the loop is never blocked for the commit."""
    import asyncio
    import threading
    import time

    from marrowdx.domain.report import CaseInfo
    from marrowdx.service import MarrowService

    store = ReportStore(tmp_path / "r.sqlite3")
    service = MarrowService(None, store, None, None, frozenset(), versions=None, thresholds=None)
    store.save("rpt_0", "", "req-0", "2026-01-01T00:00:00Z", b"0" * 5_000_000, owner="o")

    def slow_commit():
        with store._lock:
            time.sleep(0.6)

    async def run():
        worst = 0.0
        stop = asyncio.Event()

        async def probe():
            nonlocal worst
            while not stop.is_set():
                t = time.perf_counter()
                await asyncio.sleep(0.005)
                worst = max(worst, time.perf_counter() - t - 0.005)

        probing = asyncio.create_task(probe())
        threading.Thread(target=slow_commit).start()
        await asyncio.sleep(0.05)
        for i in range(3):
            # rpt_0 predates fingerprints: found and answered, no conflict
            session = service.open_case(CaseInfo(case_id=f"C{i}", request_id="req-0"))
            assert (await service.find_previous(session, "o")).report_id == "rpt_0"
        report = type("R", (), {"report_id": "rpt_big", "case": CaseInfo(case_id="B", request_id="req-big"),
                                "created_at": "2026-01-01T00:00:01Z"})
        session = service.open_case(report.case)
        await service.save(session, report, b"1" * 5_000_000, "o", "c")  # waits for the slow commit, off the loop
        stop.set()
        await probing
        return worst

    service.rules = type("Rules", (), {"default_target_count": 500})
    worst = asyncio.run(run())
    assert store.by_report_id("rpt_big", "o") is not None
    assert worst < 0.3, f"the event loop stalled {worst:.3f}s"


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
