"""marrowdx-loadgen: the load-testing client (asyncio gRPC; closed or open loop;
AnalyzeField, ClassifyCells or streamed DiagnoseCase; HDR latency histogram).

The engine is ``marrowdx.loadgen`` (the benchmark drives it too); this is the
same command as ``marrowdx loadgen``, under the clients' roof."""

from __future__ import annotations

import sys

from marrowdx.cli import main as marrowdx_main


def main(argv: list[str] | None = None) -> int:
    return marrowdx_main(["loadgen", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
