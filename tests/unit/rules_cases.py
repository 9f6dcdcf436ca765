"""Shared helpers for the rules tests: the taxonomy the rules are written for and hand-made confusion."""

from __future__ import annotations

import dataclasses

from marrowdx.domain.confusion import Confusion
from marrowdx.domain.taxonomy import CellClass, default_taxonomy

# Codes the lineage taxonomy (2026.12-1) appends; built here so the rules can be tested
# before (and after) the taxonomy file carries them.
NEW_CLASSES = (
    CellClass("promonocyte", "Promonocyte", "monocytic", True, True),
    CellClass("monoblast", "Monoblast", "monocytic", True, True),
    CellClass("reactive_lymphocyte", "Reactive lymphocyte", "lymphoid", True, False),
    CellClass("smudge", "Smudge cell", "excluded", False, False),
)


def lineage_taxonomy():
    tax = default_taxonomy()
    have = set(tax.codes)
    return dataclasses.replace(tax, classes=tax.classes + tuple(c for c in NEW_CLASSES if c.code not in have))


TAX = lineage_taxonomy()
# What the committed 2026.11.27g classifier was trained on.
TRAINED_OLD = frozenset({"blast", "promyelocyte", "myelocyte", "metamyelocyte", "band_neutrophil",
                         "segmented_neutrophil", "eosinophil", "basophil", "monocyte", "lymphocyte", "erythroblast",
                         "uncountable", "platelet"})
# What the lineage classifier trains (promonocyte and monoblast share their data).
TRAINED_LINEAGE = TRAINED_OLD | {"lymphoblast", "myeloblast", "abnormal_promyelocyte", "promonocyte", "monoblast",
                                 "reactive_lymphocyte", "plasma_cell", "smudge"}
EVERYTHING = frozenset(TAX.codes)


def confusion(rows: dict[str, dict[str, int]], version: str = "test-weights") -> Confusion:
    return Confusion(version, TAX.version, "hand-made", rows)


def diagonal(classes, n: int = 1000, **overrides: dict[str, int]) -> dict[str, dict[str, int]]:
    """A confusion of classes called right ``n`` times, with the rows given in ``overrides`` replaced."""
    rows = {c: {c: n} for c in classes}
    rows.update(overrides)
    return rows
