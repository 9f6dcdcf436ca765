"""One real tritonserver + one real gRPC front service per session, on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from marrowdx import logging as mlog
from marrowdx.client import Client
from marrowdx.embedded import embedded_stack
from marrowdx.settings import Settings

pytestmark = pytest.mark.integration


def stack_settings(tmp: Path, **overrides) -> Settings:
    # MARROWDX_MODEL_REPOSITORY may point tests at another repository; the default is the committed one.
    return Settings.from_env(os.environ, state_dir=tmp, database=tmp / "reports.sqlite3", **overrides)


@pytest.fixture()
def fresh_settings(tmp_path) -> Settings:
    """Settings for a stack of a test's own (fault tests kill and restart things)."""
    return stack_settings(tmp_path)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    mlog.configure("warning", json=True)
    with embedded_stack(stack_settings(tmp_path_factory.mktemp("stack"))) as s:
        yield s


@pytest.fixture(scope="session")
def client(stack):
    with Client(stack.address, timeout_s=120) as c:
        yield c


@pytest.fixture()
def channel(stack):
    with grpc.insecure_channel(stack.address) as ch:
        yield ch
