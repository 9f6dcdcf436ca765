"""The cell taxonomy, loaded from the versioned data file ``data/taxonomy.json``.

The order of ``classes`` is the classifier's output order; the version string
is baked into the exported model so the service can refuse a mismatch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

UNCOUNTABLE = "uncountable"


@dataclass(frozen=True)
class CellClass:
    code: str
    label: str
    lineage: str
    countable: bool
    blast_equivalent: bool
    cl: str | None = None


@dataclass(frozen=True)
class Taxonomy:
    version: str
    classes: tuple[CellClass, ...]
    excluded_categories: dict[str, str]
    myeloid_codes: frozenset[str]
    erythroid_codes: frozenset[str]
    detector_categories: tuple[str, ...]
    label_maps: dict[str, dict] = field(repr=False, default_factory=dict)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(c.code for c in self.classes)

    def index(self, code: str) -> int:
        try:
            return self.codes.index(code)
        except ValueError:
            raise KeyError(f"unknown cell class {code!r} in taxonomy {self.version}") from None

    def by_code(self, code: str) -> CellClass:
        return self.classes[self.index(code)]

    @property
    def countable_codes(self) -> tuple[str, ...]:
        return tuple(c.code for c in self.classes if c.countable)

    @property
    def blast_codes(self) -> frozenset[str]:
        return frozenset(c.code for c in self.classes if c.blast_equivalent)

    def dataset_targets(self, dataset: str, folder: str, filename: str = "") -> tuple[str, ...]:
        """Taxonomy codes a dataset label may stand for (several for a coarse label).

        A file-name prefix (PBC's ``MY_1234.jpg``) is more specific than the folder.
        """
        label_map = self.label_maps[dataset]
        prefix = filename.split("_", 1)[0].upper() if filename else ""
        by_prefix = label_map.get("by_file_prefix", {})
        if prefix in by_prefix:
            return tuple(by_prefix[prefix])
        by_folder = label_map["by_folder"]
        if folder not in by_folder:
            raise KeyError(f"{dataset}: no label map entry for folder {folder!r}")
        return tuple(by_folder[folder])

    def dataset_label_of(self, dataset: str, code: str) -> str:
        """The dataset's own (folder) label for a predicted taxonomy code, or 'other'."""
        for folder, targets in self.label_maps[dataset]["by_folder"].items():
            if code in targets:
                return folder
        return "other"


def load_taxonomy(path: Path | None = None) -> Taxonomy:
    if path is None:
        text = resources.files("marrowdx.data").joinpath("taxonomy.json").read_text()
    else:
        text = Path(path).read_text()
    raw = json.loads(text)
    classes = tuple(CellClass(**c) for c in raw["classes"])
    codes = [c.code for c in classes]
    if len(set(codes)) != len(codes):
        raise ValueError("taxonomy has duplicate class codes")
    return Taxonomy(
        version=raw["version"],
        classes=classes,
        excluded_categories={e["code"]: e["label"] for e in raw["excluded_categories"]},
        myeloid_codes=frozenset(raw["myeloid_for_me_ratio"]),
        erythroid_codes=frozenset(raw["erythroid_for_me_ratio"]),
        detector_categories=tuple(raw["detector_categories"]),
        label_maps=raw["label_maps"],
    )


@cache
def default_taxonomy() -> Taxonomy:
    return load_taxonomy()
