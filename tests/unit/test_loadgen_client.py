"""The load-testing client entry point."""

from __future__ import annotations

import pytest


def test_the_loadgen_client_is_the_marrowdx_loadgen_command(capsys):
    from clients.loadgen.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "usage: marrowdx loadgen" in capsys.readouterr().out
