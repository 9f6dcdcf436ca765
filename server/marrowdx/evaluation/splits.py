"""The project's fixed data split (shared by training and evaluation).

A hash of the file's path relative to its dataset folder: the same on every
machine, independent of listing order. 70% train, 15% val (model selection,
temperature), 15% test (reported metrics only).
"""

from __future__ import annotations

import hashlib


def split_of(relative_path: str) -> str:
    bucket = int(hashlib.sha1(relative_path.encode()).hexdigest()[:8], 16) % 100
    if bucket < 70:
        return "train"
    return "val" if bucket < 85 else "test"
