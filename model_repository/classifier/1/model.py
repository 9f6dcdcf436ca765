"""Triton Python-backend entry point; the implementation lives in marrowdx.

The backend stub's interpreter ignores PYTHONPATH, so the launcher passes the
service's import path in MARROWDX_PYTHONPATH and it is put first here.
"""

import os
import sys

sys.path[:0] = [p for p in os.environ.get("MARROWDX_PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

from marrowdx.inference.onnx_backend import TritonPythonModel  # noqa: E402,F401
