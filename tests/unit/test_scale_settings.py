"""The scaled-out settings reach the parts that use them: a PostgreSQL URL stays a URL (a Path would
fold its '//'), an SQLite file stays a file, several Triton URLs make a pool, and `marrowdx audit`
reads a PostgreSQL audit log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marrowdx.inference.pool import is_pool, split_urls
from marrowdx.settings import Settings

URL = "postgresql://marrowdx@db.example:5432/marrowdx?sslmode=require"


def test_a_postgresql_database_from_the_environment_is_kept_as_given():
    settings = Settings.from_env({"MARROWDX_DATABASE": URL})
    assert settings.database == URL and settings.database_is_postgres


def test_a_postgresql_database_from_a_flag_is_kept_as_given():
    from marrowdx.cli import build_parser

    args = build_parser().parse_args(["serve", "--database", URL])
    assert Settings.from_env({}, database=args.database).database == URL


def test_an_sqlite_database_is_a_file_with_its_audit_log_beside_it(tmp_path):
    settings = Settings.from_env({"MARROWDX_DATABASE": str(tmp_path / "r.sqlite3")})
    assert not settings.database_is_postgres
    assert settings.database_path == tmp_path / "r.sqlite3"
    assert settings.audit_path == tmp_path / "r.audit.sqlite3"
    assert Settings(state_dir=tmp_path).database_path == tmp_path / "reports.sqlite3"


def test_several_triton_urls_make_a_pool():
    settings = Settings.from_env({"MARROWDX_TRITON_URL": "10.0.0.1:8001,10.0.0.2:8001"})
    assert is_pool(settings.triton_url) and split_urls(settings.triton_url) == ["10.0.0.1:8001", "10.0.0.2:8001"]
    assert not is_pool(Settings.from_env({"MARROWDX_TRITON_URL": "triton:8001"}).triton_url)


def test_audit_reads_a_postgresql_audit_log(capsys):
    from marrowdx.cli import main
    from marrowdx.store.pglocal import LocalPostgres, PostgresUnavailable
    from marrowdx.store.postgres import PostgresAuditLog

    try:
        server = LocalPostgres(fsync=False).start()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL backend not tested: {exc}")
    try:
        url = server.create_database("audit_cli")
        audit = PostgresAuditLog(url)
        audit.record("lis-a", "north", "DiagnoseCase", "OK", report_id="rpt_1")
        audit.close()
        assert main(["audit", "--database", url, "--json"]) == 0
    finally:
        server.stop()
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert json.loads(line)["report_id"] == "rpt_1"


def test_paths_still_work_where_code_passes_a_path(tmp_path):
    settings = Settings(database=tmp_path / "x.sqlite3")
    assert settings.database_path == Path(tmp_path / "x.sqlite3") and not settings.database_is_postgres


def test_a_database_outage_is_unavailable_with_a_retry_hint():
    from google.rpc import error_details_pb2, status_pb2

    from marrowdx.api.errors import to_status
    from marrowdx.store.base import StoreUnavailable

    status = to_status(StoreUnavailable("no database connection within 10 s"))
    assert status.code.name == "UNAVAILABLE" and "report store unavailable" in status.details
    (packed,) = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
    info = error_details_pb2.RetryInfo()
    assert any(d.Unpack(info) for d in status_pb2.Status.FromString(packed).details)
