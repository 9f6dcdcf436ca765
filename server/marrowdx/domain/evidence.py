"""What the per-cell evidence adds to the counts: rejected cells that may belong to a
rule, and clusters of overlapping cells.

Counting skips cells the classifier would not name (low confidence) and cells that
overlap another one: right for a differential, wrong for a screen. A rejected cell
whose top-k names a rule's class may be one of them (it widens the upper bound), and
the clumps that the overlap exclusion drops are exactly how lymphoma and neuroblastoma
infiltrates show on a smear, so they are kept here as evidence for review.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from marrowdx.domain.cells import CellCall, Exclusion


@dataclass(frozen=True)
class CaseEvidence:
    # Top-k class codes of each cell rejected as low-confidence.
    rejected_top_k: tuple[tuple[str, ...], ...] = ()
    # Classes of excluded cells the classifier did name (e.g. an overlapping cell, when classified).
    excluded_classes: tuple[str, ...] = ()
    # Sizes of the groups of >= 2 mutually overlapping nucleated cells, per field.
    cluster_sizes: tuple[int, ...] = ()

    def rejected_possibly_in(self, classes: Collection[str]) -> int:
        return sum(1 for top in self.rejected_top_k if any(c in classes for c in top))

    def clusters(self, min_cells: int) -> int:
        return sum(1 for size in self.cluster_sizes if size >= min_cells)


def _touch(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def _components(boxes: list[tuple[float, float, float, float]]) -> list[int]:
    """Sizes of the groups of boxes joined by intersecting (union-find)."""
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if _touch(boxes[i], boxes[j]):
                parent[root(i)] = root(j)
    groups: dict[int, int] = defaultdict(int)
    for i in range(len(boxes)):
        groups[root(i)] += 1
    return list(groups.values())


def cluster_sizes(calls: Iterable[CellCall]) -> tuple[int, ...]:
    """Connected groups of cells excluded as overlapping, by field (boxes that intersect are joined)."""
    by_field: dict[tuple[int, str], list[tuple[float, float, float, float]]] = defaultdict(list)
    for call in calls:
        if call.exclusion is Exclusion.OVERLAPPING and call.box is not None:
            by_field[(call.source_index, call.image_id)].append(call.box)
    sizes = []
    for boxes in by_field.values():
        sizes += [s for s in _components(boxes) if s >= 2]
    return tuple(sorted(sizes, reverse=True))


def case_evidence(calls: Iterable[CellCall]) -> CaseEvidence:
    calls = list(calls)
    rejected = tuple(tuple(c for c, _ in call.top_k) or (call.cell_class,)
                     for call in calls if call.exclusion is Exclusion.LOW_CONFIDENCE)
    named = tuple(call.cell_class for call in calls
                  if not call.countable and call.cell_class and call.exclusion is not Exclusion.LOW_CONFIDENCE)
    return CaseEvidence(rejected, named, cluster_sizes(calls))
