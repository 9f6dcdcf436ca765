"""One suite, both backends: the SQLite files of one machine and PostgreSQL shared by replicas give
the same guarantees (store/base.py). PostgreSQL is a real server started here on loopback in a
temporary folder (store/pglocal.py) and stopped at the end; a database per test."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from marrowdx.store import ReportStore, is_postgres, open_stores
from marrowdx.store.base import ANY_OWNER, AuditLog

_names = itertools.count()


@pytest.fixture(scope="module")
def postgres():
    from marrowdx.store.pglocal import LocalPostgres, PostgresUnavailable

    try:
        server = LocalPostgres(fsync=False).start()  # fsync off: a host crash is not under test here
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL backend not tested: {exc}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """Where a backend keeps its data: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "reports.sqlite3")
    server = request.getfixturevalue("postgres")
    return server.create_database(f"contract_{os.getpid()}_{next(_names)}")


@pytest.fixture
def stores(database):
    opened = []

    def open_():
        pair = open_stores(database if is_postgres(database) else _path(database))
        opened.append(pair)
        return pair

    yield open_
    for store, audit in opened:
        store.close()
        audit.close()


def _path(database: str):
    from pathlib import Path

    return Path(database)


def raw_execute(database: str, sql: str, audit: bool = False):
    """Run ``sql`` on a connection of our own, past the store's code: what the database itself allows."""
    if is_postgres(database):
        import psycopg

        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(sql)
        return
    path = _path(database)
    if audit:
        path = path.with_name(path.stem + ".audit.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(sql)
    finally:
        conn.close()


def integrity_errors():
    import psycopg

    return (sqlite3.IntegrityError, psycopg.errors.IntegrityError)


def test_both_backends_implement_the_interface(stores):
    store, audit = stores()
    assert isinstance(store, ReportStore) and isinstance(audit, AuditLog)


def test_a_saved_report_survives_reopening(stores):
    store, audit = stores()
    store.save("rpt_1", "ACC-1", "req-1", "2026-01-01T00:00:00Z", b"payload\x00\xff", owner="org-a", client_id="c",
               case_digest="d" * 64, image_digests=b"F" + b"\1" * 32)
    store.close()
    again, _ = stores()
    found = again.by_report_id("rpt_1", "org-a")
    assert (found.payload, found.owner, found.case_digest, found.image_digests) == (
        b"payload\x00\xff", "org-a", "d" * 64, b"F" + b"\1" * 32)
    assert again.by_accession_id("ACC-1", "org-a").report_id == "rpt_1"
    assert again.by_request_id("req-1", "org-a").report_id == "rpt_1"


def test_a_report_is_durable_once_save_returns(database, stores):
    """A process killed with SIGKILL right after save returned: the report is there for the next one."""
    code = ("import sys, time, pathlib\n"
            "from marrowdx.store import open_stores, is_postgres\n"
            "db = sys.argv[1]\n"
            "store, audit = open_stores(db if is_postgres(db) else pathlib.Path(db))\n"
            "store.save('rpt_k', 'ACC', 'req-k', '2026-01-01T00:00:00Z', b'k', owner='o')\n"
            "print('saved', flush=True)\n"
            "time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, database], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "saved"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
    store, _ = stores()
    assert store.by_request_id("req-k", "o").payload == b"k"


def test_the_same_request_id_returns_the_first_report_with_its_fingerprint(stores):
    store, _ = stores()
    first = store.save("rpt_a", "ACC", "req-1", "2026-01-01T00:00:00Z", b"a", owner="org-a", case_digest="1" * 64)
    second = store.save("rpt_b", "ACC", "req-1", "2026-01-01T00:00:01Z", b"b", owner="org-a", case_digest="2" * 64)
    assert second == first and second.case_digest == "1" * 64
    assert store.by_report_id("rpt_b", "org-a") is None
    assert store.report_ids() == {"rpt_a"}


def test_reports_without_a_request_id_are_all_kept(stores):
    store, _ = stores()
    store.save("rpt_1", "ACC", "", "2026-01-01T00:00:00Z", b"1", owner="o")
    store.save("rpt_2", "ACC", "", "2026-01-01T00:00:01Z", b"2", owner="o")
    assert store.report_ids() == {"rpt_1", "rpt_2"}


def test_another_organisations_reports_stay_invisible(stores):
    store, _ = stores()
    store.save("rpt_a", "ACC", "req-1", "2026-01-01T00:00:00Z", b"a", owner="org-a")
    theirs = store.save("rpt_b", "ACC", "req-1", "2026-01-01T00:00:01Z", b"b", owner="org-b")
    assert theirs.report_id == "rpt_b"  # the same request id elsewhere reveals nothing of org-a's
    assert store.by_report_id("rpt_a", "org-b") is None
    assert store.by_accession_id("ACC", "org-a").report_id == "rpt_a"
    assert store.by_accession_id("ACC", "org-b").report_id == "rpt_b"
    assert store.by_request_id("req-1", "org-c") is None
    assert store.by_report_id("rpt_a", ANY_OWNER).owner == "org-a"


def test_the_accession_lookup_returns_the_newest(stores):
    store, _ = stores()
    store.save("rpt_old", "ACC", "", "2026-01-01T00:00:00Z", b"old", owner="o")
    store.save("rpt_new", "ACC", "", "2026-02-01T00:00:00Z", b"new", owner="o")
    assert store.by_accession_id("ACC", "o").report_id == "rpt_new"
    assert store.by_accession_id("NOPE", "o") is None


def test_replicas_saving_one_request_at_once_keep_one_report(stores):
    """Two store instances (two replicas) and many threads race one request id: one row, and every
    caller is answered with that row."""
    replicas = [stores()[0], stores()[0]]
    start = threading.Barrier(12)
    answers = []

    def save(i):
        start.wait()
        answers.append(replicas[i % 2].save(f"rpt_{i}", "ACC", "req-race", "2026-01-01T00:00:00Z", f"{i}".encode(),
                                            owner="o"))

    threads = [threading.Thread(target=save, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 12
    assert len({a.report_id for a in answers}) == 1
    assert replicas[0].report_ids() == replicas[1].report_ids() == {answers[0].report_id}


def test_the_database_itself_refuses_a_second_row_for_a_request_id(database, stores):
    store, _ = stores()
    store.save("rpt_1", "ACC", "req-1", "2026-01-01T00:00:00Z", b"1", owner="o")
    payload = "'\\x00'::bytea" if is_postgres(database) else "x'00'"
    with pytest.raises(integrity_errors()):
        raw_execute(database, "INSERT INTO reports(report_id, owner, request_id, created_at, payload) "
                              f"VALUES ('rpt_2', 'o', 'req-1', 't', {payload})")


def test_the_audit_log_keeps_rows_in_order(stores):
    _, audit = stores()
    audit.record("lis-a", "north", "DiagnoseCase", "OK", request_id="r1", report_id="rpt_1", peer="ipv4:127.0.0.1")
    audit.record("lis-b", "south", "GetReport", "NOT_FOUND")
    first, second = audit.recent(10)
    assert (first.client_id, first.org, first.method, first.outcome, first.request_id, first.report_id,
            first.peer) == ("lis-a", "north", "DiagnoseCase", "OK", "r1", "rpt_1", "ipv4:127.0.0.1")
    assert (second.client_id, second.outcome) == ("lis-b", "NOT_FOUND") and second.seq > first.seq
    assert [e.client_id for e in audit.recent(1)] == ["lis-b"]


@pytest.mark.parametrize("statement", ["UPDATE audit SET outcome = 'OK'", "DELETE FROM audit"])
def test_the_database_refuses_to_change_the_audit_log(database, stores, statement):
    _, audit = stores()
    audit.record("lis-a", "north", "DiagnoseCase", "PERMISSION_DENIED")
    with pytest.raises(Exception, match="append-only"):
        raw_execute(database, statement, audit=True)
    assert [e.outcome for e in audit.recent()] == ["PERMISSION_DENIED"]


def test_an_audit_row_is_written_when_the_awaiting_call_is_cancelled(stores):
    _, audit = stores()

    async def cancelled():
        task = asyncio.ensure_future(audit.submit("lis-a", "north", "DiagnoseCase", "CANCELLED"))
        task.cancel()
        await asyncio.sleep(0)

    asyncio.run(cancelled())
    deadline = time.monotonic() + 10
    while not audit.recent() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [e.outcome for e in audit.recent()] == ["CANCELLED"]


def test_postgres_schema_is_versioned_and_a_newer_one_is_refused(postgres):
    import psycopg

    from marrowdx.store.postgres import PostgresReportStore, SchemaTooNew, migrations, schema_version

    url = postgres.create_database(f"versions_{os.getpid()}")
    PostgresReportStore(url).close()
    PostgresReportStore(url).close()  # reopening applies nothing twice
    with psycopg.connect(url, autocommit=True) as conn:
        assert schema_version(conn) == len(migrations())
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == len(migrations())
        conn.execute("INSERT INTO schema_version(version, name) VALUES (%s, 'from_the_future.sql')",
                     (len(migrations()) + 1,))
    with pytest.raises(SchemaTooNew):
        PostgresReportStore(url)


def test_postgres_replicas_starting_together_migrate_once(postgres):
    from marrowdx.store.postgres import PostgresReportStore

    url = postgres.create_database(f"together_{os.getpid()}")
    opened, errors = [], []

    def open_():
        try:
            opened.append(PostgresReportStore(url))
        except Exception as exc:  # a lost race would be an error here
            errors.append(exc)

    threads = [threading.Thread(target=open_) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for store in opened:
        store.close()
    assert not errors and len(opened) == 4


def test_postgres_going_away_is_a_retryable_error_that_names_no_address(monkeypatch):
    """A database restart or failover fails the call as StoreUnavailable (UNAVAILABLE: the client
    resends), within the pool's wait, and never with the URL in the message."""
    from marrowdx.store import postgres
    from marrowdx.store.base import StoreUnavailable
    from marrowdx.store.pglocal import LocalPostgres, PostgresUnavailable

    monkeypatch.setattr(postgres, "CONNECT_TIMEOUT_S", 2.0)  # the wait is the pool's; 10 s in service
    try:
        server = LocalPostgres(fsync=False).start()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL backend not tested: {exc}")
    try:
        store = postgres.PostgresReportStore(server.create_database("going_away"))
        store.save("rpt_1", "ACC", "req-1", "2026-01-01T00:00:00Z", b"1", owner="o")
        port = str(server.port)
    finally:
        server.stop()
    try:
        for call in (lambda: store.by_request_id("req-1", "o"),
                     lambda: store.save("rpt_2", "ACC", "req-2", "2026-01-01T00:00:00Z", b"2", owner="o")):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                call()
            assert time.monotonic() - started < 2.0 + 8
            assert port not in str(caught.value) and "postgres@" not in str(caught.value)
    finally:
        store.close()
