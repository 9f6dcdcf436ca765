"""The case report and the running tally it is built from."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from marrowdx.domain.cells import CellCall, Thresholds
from marrowdx.domain.confusion import Confusion, default_confusion
from marrowdx.domain.counting import Differential, differential
from marrowdx.domain.diagnosis import BLOOD, Finding, RuleSet, conclusion, diagnose
from marrowdx.domain.evidence import case_evidence
from marrowdx.domain.taxonomy import Taxonomy

DISCLAIMER = ("Research use only. Not a medical device and not clinically validated: every result must be "
              "reviewed by a qualified haematologist before any clinical use.")


@dataclass(frozen=True)
class ModelVersions:
    detector: str
    classifier: str
    taxonomy: str
    rule_set: str
    # Weights version of the measured confusion the rules used ("" = none: conservative bounds).
    confusion: str = ""


@dataclass(frozen=True)
class CaseInfo:
    case_id: str
    accession_id: str = ""
    specimen_type: str = "bone_marrow_aspirate"
    target_count: int = 0
    request_id: str = ""


def count_calls(calls: Iterable[CellCall]) -> tuple[Counter[str], Counter[str]]:
    """(countable cells per class, excluded objects per reason)."""
    classes: Counter[str] = Counter()
    excluded: Counter[str] = Counter()
    for call in calls:
        if call.countable:
            classes[call.cell_class] += 1
        else:
            excluded[call.exclusion.value] += 1
    return classes, excluded


@dataclass
class CaseTally:
    """Cells of one case as they arrive, field by field."""

    target_count: int
    images_received: int = 0
    calls: list[CellCall] = field(default_factory=list)

    def add(self, calls: Iterable[CellCall]) -> None:
        self.calls.extend(calls)

    @property
    def class_counts(self) -> Counter[str]:
        return count_calls(self.calls)[0]

    @property
    def excluded_counts(self) -> Counter[str]:
        return count_calls(self.calls)[1]

    @property
    def cells_counted(self) -> int:
        return sum(1 for c in self.calls if c.countable)

    @property
    def target_reached(self) -> bool:
        return self.cells_counted >= self.target_count


@dataclass(frozen=True)
class CaseReport:
    report_id: str
    case: CaseInfo
    created_at: str
    differential: Differential
    excluded_counts: dict[str, int]
    findings: tuple[Finding, ...]
    conclusion: str
    models: ModelVersions
    thresholds: Thresholds
    timings_ms: dict[str, float]
    evidence: tuple[CellCall, ...]
    images_received: int
    trained_classes: frozenset[str]
    disclaimer: str = DISCLAIMER
    # What the screen does not assess, for the reviewer: features, then untrained classes.
    not_assessed: tuple[str, ...] = ()


_LOAD = object()


def build_report(report_id: str, created_at: str, case: CaseInfo, tally: CaseTally, taxonomy: Taxonomy,
                 rules: RuleSet, trained: Collection[str], models: ModelVersions, thresholds: Thresholds,
                 timings_ms: dict[str, float], confusion: Confusion | None | object = _LOAD) -> CaseReport:
    """The report of a case. ``confusion`` defaults to the measured confusion stored for the
    classifier's weights version (none: the rules' conservative bounds)."""
    if confusion is _LOAD:
        # The service names the classifier "classifier:<weights version>"; files go by the version.
        confusion = default_confusion(models.classifier.rsplit(":", 1)[-1])
    diff = differential(tally.class_counts, taxonomy)
    if case.specimen_type == BLOOD:
        # No M:E ratio on blood: nucleated red cells there are not marrow erythropoiesis.
        diff = dataclasses.replace(diff, myeloid_erythroid_ratio=None, myeloid_erythroid_ci=None)
    findings = diagnose(diff, rules, trained, specimen=case.specimen_type, evidence=case_evidence(tally.calls),
                        confusion=confusion)
    untrained = tuple(f"{c.label} (class not trained)" for c in taxonomy.classes
                      if c.countable and c.code not in trained and c.code != "other")
    not_assessed = (*rules.not_assessed, *untrained)
    models = dataclasses.replace(models, confusion=confusion.weights_version if confusion else "")
    return CaseReport(
        report_id=report_id, case=case, created_at=created_at, differential=diff,
        excluded_counts=dict(tally.excluded_counts), findings=findings,
        conclusion=conclusion(findings, not_assessed, case.specimen_type),
        models=models, thresholds=thresholds, timings_ms=timings_ms, evidence=tuple(tally.calls),
        images_received=tally.images_received, trained_classes=frozenset(trained), not_assessed=not_assessed,
    )
