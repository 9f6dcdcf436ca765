"""Generate ``marrowdx/_proto`` from ``proto/`` (the one command; never edit the output).

    python -m marrowdx.protogen [--check]
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent / "_proto"


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    out_dir.mkdir(parents=True, exist_ok=True)
    code = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}",
                        f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *protos])
    if code:
        raise SystemExit(f"protoc failed with {code}")
    # protoc writes imports from the proto package root; anchor them under marrowdx._proto.
    for path in out_dir.rglob("*.py"):
        text = re.sub(r"^from marrowdx\.v1 import", "from marrowdx._proto.marrowdx.v1 import", path.read_text(), flags=re.M)
        path.write_text(text)
    for folder in [out_dir, *[p for p in out_dir.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    args = parser.parse_args(argv)
    if not args.check:
        shutil.rmtree(OUT_DIR, ignore_errors=True)
        generate(OUT_DIR)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [str(p.relative_to(tmp)) for p in Path(tmp).rglob("*.py*")
                 if not (OUT_DIR / p.relative_to(tmp)).exists() or not filecmp.cmp(p, OUT_DIR / p.relative_to(tmp), shallow=False)]
    if stale:
        print("stale generated code, run `python -m marrowdx.protogen`: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
