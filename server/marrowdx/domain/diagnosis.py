"""Diagnosis rules (``data/rules.json``) applied to a differential.

A finding is POSITIVE only when the whole 95% interval of the measured
percentage meets the rule, NEGATIVE only when the interval's upper end,
widened by cells the model cannot assign to a lineage ('possibly'), misses
it, and INDETERMINATE otherwise - with the reason and, where it helps, how
many more cells would decide. Too few cells, or a class the classifier was
never trained on, make a finding indeterminate rather than a guess.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from pathlib import Path

from marrowdx.domain.counting import Differential, cells_to_decide, wilson_interval


class Status(StrEnum):
    POSITIVE = "positive"
    NEGATIVE = "negative"
    INDETERMINATE = "indeterminate"


@dataclass(frozen=True)
class Rule:
    id: str
    code: str
    label: str
    numerator: tuple[str, ...]
    comparator: str
    threshold_percent: float
    source: str
    possibly: tuple[str, ...] = ()
    denominator: tuple[str, ...] | None = None  # None: all countable cells
    requires: str | None = None

    def meets(self, percent: float) -> bool:
        return percent > self.threshold_percent if self.comparator == ">" else percent >= self.threshold_percent


@dataclass(frozen=True)
class RuleSet:
    version: str
    minimum_count: int
    default_target_count: int
    sources: dict[str, str]
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Finding:
    code: str
    label: str
    status: Status
    measured_percent: float
    ci_low_percent: float
    ci_high_percent: float
    threshold_percent: float
    rule_id: str
    source: str
    explanation: str
    additional_cells_needed: int = 0


def load_rules(path: Path | None = None) -> RuleSet:
    text = Path(path).read_text() if path else resources.files("marrowdx.data").joinpath("rules.json").read_text()
    raw = json.loads(text)
    rules = []
    for r in raw["rules"]:
        if r["comparator"] not in (">", ">="):
            raise ValueError(f"rule {r['id']}: comparator must be > or >=")
        if r["source"] not in raw["sources"]:
            raise ValueError(f"rule {r['id']}: source {r['source']!r} is not cited in 'sources'")
        rules.append(Rule(
            id=r["id"], code=r["code"], label=r["label"], numerator=tuple(r["numerator"]),
            comparator=r["comparator"], threshold_percent=float(r["threshold_percent"]), source=r["source"],
            possibly=tuple(r.get("possibly", ())), denominator=tuple(r["denominator"]) if "denominator" in r else None,
            requires=r.get("requires"),
        ))
    codes = [r.code for r in rules]
    for r in rules:
        if r.requires and r.requires not in codes[: codes.index(r.code)]:
            raise ValueError(f"rule {r.id} requires {r.requires!r}, which must come earlier")
    return RuleSet(raw["version"], int(raw["minimum_count"]), int(raw["default_target_count"]), raw["sources"], tuple(rules))


@cache
def default_rules() -> RuleSet:
    return load_rules()


def evaluate_rule(rule: Rule, diff: Differential, minimum_count: int, trained: Collection[str],
                  earlier: dict[str, Finding]) -> Finding:
    k = diff.count_of(rule.numerator)
    n = diff.count_of(rule.denominator) if rule.denominator else diff.total
    k_upper = k + diff.count_of(rule.possibly)
    low, high = wilson_interval(k, n)
    _, high_upper = wilson_interval(min(k_upper, n), n)
    percent = 100.0 * k / n if n else 0.0
    threshold = rule.threshold_percent / 100.0

    def finding(status: Status, why: str, more: int = 0) -> Finding:
        return Finding(rule.code, rule.label, status, percent, 100 * low, 100 * high, rule.threshold_percent,
                       rule.id, rule.source, why, more)

    if rule.requires:
        prerequisite = earlier[rule.requires]
        if prerequisite.status is Status.NEGATIVE:
            return finding(Status.NEGATIVE, f"not applicable: {rule.requires} is negative")
        if prerequisite.status is Status.INDETERMINATE:
            return finding(Status.INDETERMINATE, f"depends on {rule.requires}, which is indeterminate")
    if diff.total < minimum_count:
        return finding(Status.INDETERMINATE,
                       f"only {diff.total} countable cells counted; at least {minimum_count} are needed",
                       minimum_count - diff.total)
    if n == 0:
        return finding(Status.INDETERMINATE, "no cells in the rule's denominator")

    low_meets = rule.meets(100 * low)
    if low_meets:
        return finding(Status.POSITIVE, f"{percent:.1f}% (95% CI {100*low:.1f}-{100*high:.1f}%) "
                                        f"{rule.comparator} {rule.threshold_percent:g}%")
    untrained = [c for c in rule.numerator if c not in trained]
    can_bound = not untrained or any(c in trained for c in (*rule.numerator, *rule.possibly))
    if not can_bound:
        return finding(Status.INDETERMINATE,
                       f"the classifier was not trained on {', '.join(untrained)}: it cannot rule this out")
    upper_meets = rule.meets(100 * high_upper)
    if not upper_meets:
        return finding(Status.NEGATIVE, f"{percent:.1f}% (upper 95% bound {100*high_upper:.1f}%"
                                        f"{' incl. cells of unassigned lineage' if k_upper > k else ''}) "
                                        f"below {rule.threshold_percent:g}%")
    if k_upper > k and not rule.meets(100 * high):
        who = ", ".join(rule.possibly)
        return finding(Status.INDETERMINATE,
                       f"{100.0 * (k_upper - k) / n:.1f}% of cells ({who}) may belong here but their lineage "
                       f"cannot be assigned from morphology by this model; needs immunophenotyping or review")
    more = cells_to_decide(k, n, threshold)
    return finding(Status.INDETERMINATE,
                   f"{percent:.1f}% with 95% CI {100*low:.1f}-{100*high:.1f}% straddles {rule.threshold_percent:g}%"
                   + (f"; about {more} more cells at this fraction would decide" if more else ""), more)


def diagnose(diff: Differential, rules: RuleSet, trained: Collection[str]) -> tuple[Finding, ...]:
    findings: dict[str, Finding] = {}
    for rule in rules.rules:
        findings[rule.code] = evaluate_rule(rule, diff, rules.minimum_count, trained, findings)
    return tuple(findings.values())


def conclusion(findings: tuple[Finding, ...]) -> str:
    positive = [f.label for f in findings if f.status is Status.POSITIVE]
    undecided = [f.code for f in findings if f.status is Status.INDETERMINATE]
    if positive:
        text = "Positive: " + "; ".join(positive) + "."
    elif not undecided:
        text = "No malignancy seen by the rules applied."
    else:
        text = "No positive finding."
    if undecided:
        text += " Indeterminate: " + ", ".join(undecided) + " (see findings)."
    return text + " Research use only; requires review by a qualified haematologist."
