"""Diagnosis rules (``data/rules.json``) applied to a differential: a screen, not a diagnosis.

Each rule applies to the specimens it lists (bone marrow aspirate, peripheral
blood); a case without a specimen type gets no finding but "not assessed".
A threshold rule is POSITIVE only when the lower end of its 95% interval meets
it, NEGATIVE only when the upper end misses it, INDETERMINATE otherwise - with
the reason, by how much the interval straddles, and how many more cells would
decide (``decision.py``: one predicate for both). The lower end stands only on
calls as far as their measured precision supports them, the upper end adds the
cells that may belong (measured confusion of the running weights, else the
rule's conservative 'possibly' classes) and rejected cells whose top-k names a
numerator class. A NEGATIVE that the screen cannot honestly give (blasts 5-19%:
AML with a defining genetic abnormality is not excluded) is reported as not
excluded instead. Tier rules place the point estimate in the WHO/ICC blast
tiers. Review rules (infiltration) prompt a review on atypical cells or
clusters. Classes the classifier was never trained on make a rule NOT ASSESSED,
which is not a zero.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from importlib import resources
from pathlib import Path

from marrowdx.domain.confusion import Confusion
from marrowdx.domain.counting import Differential
from marrowdx.domain.decision import SEARCH_LIMIT, Bounds, Verdict, cells_to_decide, verdict
from marrowdx.domain.evidence import CaseEvidence

MARROW = "bone_marrow_aspirate"
BLOOD = "peripheral_blood"
KINDS = ("threshold", "tier", "review")


class Status(StrEnum):
    POSITIVE = "positive"
    NEGATIVE = "negative"
    INDETERMINATE = "indeterminate"
    NOT_ASSESSED = "not_assessed"


@dataclass(frozen=True)
class Tier:
    from_percent: float
    name: str
    status: Status
    wording: str
    source: str


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
    denominator: tuple[str, ...] | None = None  # None: the specimen's denominator
    requires: str | None = None
    kind: str = "threshold"
    specimens: tuple[str, ...] = (MARROW,)
    # True classes whose lineage is unknown (Matek "blast"): they may belong, never surely do.
    unknown_lineage: tuple[str, ...] = ()
    not_excluded_from_percent: float | None = None
    not_excluded_wording: str = ""
    # A share of these classes at or above guard_from_percent keeps the rule from being
    # negative whatever the bounds say (70% promyelocytes is no normal marrow, even if the
    # measured confusion calls a normal promyelocyte rarely abnormal: that rate was measured
    # on another class mix).
    guard_classes: tuple[str, ...] = ()
    guard_from_percent: float | None = None
    guard_wording: str = ""
    guard_urgent: bool = False
    urgent_wording: str = ""
    tiers: tuple[Tier, ...] = ()
    cluster_min_cells: int = 3
    review_wording: str = ""

    def meets(self, percent: float) -> bool:
        return percent > self.threshold_percent if self.comparator == ">" else percent >= self.threshold_percent


@dataclass(frozen=True)
class Specimen:
    code: str
    label: str
    denominator_excludes: tuple[str, ...]
    denominator: str
    source: str


@dataclass(frozen=True)
class RuleSet:
    version: str
    minimum_count: int
    default_target_count: int
    sources: dict[str, str]
    rules: tuple[Rule, ...]
    specimens: Mapping[str, Specimen] = field(default_factory=dict)
    not_assessed: tuple[str, ...] = ()

    def rules_for(self, specimen: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if specimen in r.specimens)


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
    urgent: bool = False
    tier: str = ""
    no_count_decides: bool = False
    specimen: str = ""


def _sources(value: str | list[str], cited: Mapping[str, str], where: str) -> str:
    names = [value] if isinstance(value, str) else list(value)
    if not names:
        raise ValueError(f"{where}: no source")
    for name in names:
        if name not in cited:
            raise ValueError(f"{where}: source {name!r} is not cited in 'sources'")
    return "; ".join(names)


def load_rules(path: Path | None = None) -> RuleSet:
    text = Path(path).read_text() if path else resources.files("marrowdx.data").joinpath("rules.json").read_text()
    raw = json.loads(text)
    cited = raw["sources"]
    specimens = {code: Specimen(code, s["label"], tuple(s.get("denominator_excludes", ())), s["denominator"],
                                _sources(s["source"], cited, f"specimen {code}"))
                 for code, s in raw.get("specimens", {MARROW: {"label": "bone marrow aspirate",
                                                                "denominator": "all countable cells",
                                                                "source": next(iter(cited))}}).items()}
    rules = []
    for r in raw["rules"]:
        kind = r.get("kind", "threshold")
        if kind not in KINDS:
            raise ValueError(f"rule {r['id']}: kind must be one of {KINDS}")
        comparator = r.get("comparator", ">=")
        if comparator not in (">", ">="):
            raise ValueError(f"rule {r['id']}: comparator must be > or >=")
        if kind == "threshold" and "threshold_percent" not in r:
            raise ValueError(f"rule {r['id']}: a threshold rule needs threshold_percent")
        tiers = tuple(Tier(float(t["from_percent"]), t["name"], Status(t["status"]), t["wording"],
                           _sources(t["source"], cited, f"rule {r['id']} tier {t['name']}"))
                      for t in r.get("tiers", ()))
        if kind == "tier" and (len(tiers) < 2 or tiers[0].from_percent != 0
                               or any(a.from_percent >= b.from_percent for a, b in zip(tiers, tiers[1:], strict=False))):
            raise ValueError(f"rule {r['id']}: tiers must start at 0% and rise")
        rule_specimens = tuple(r.get("specimens", (MARROW,)))
        for s in rule_specimens:
            if s not in specimens:
                raise ValueError(f"rule {r['id']}: unknown specimen {s!r}")
        rules.append(Rule(
            id=r["id"], code=r["code"], label=r["label"], numerator=tuple(r["numerator"]),
            comparator=comparator, threshold_percent=float(r.get("threshold_percent", 0.0)),
            source=_sources(r["source"], cited, f"rule {r['id']}"),
            possibly=tuple(r.get("possibly", ())), denominator=tuple(r["denominator"]) if "denominator" in r else None,
            requires=r.get("requires"), kind=kind, specimens=rule_specimens,
            unknown_lineage=tuple(r.get("unknown_lineage", ())),
            not_excluded_from_percent=(float(r["not_excluded_from_percent"]) if "not_excluded_from_percent" in r
                                       else None),
            not_excluded_wording=r.get("not_excluded_wording", ""), urgent_wording=r.get("urgent_wording", ""),
            guard_classes=tuple(r.get("not_negative_when", {}).get("classes", ())),
            guard_from_percent=(float(r["not_negative_when"]["from_percent"]) if "not_negative_when" in r else None),
            guard_wording=r.get("not_negative_when", {}).get("wording", ""),
            guard_urgent=bool(r.get("not_negative_when", {}).get("urgent", False)),
            tiers=tiers, cluster_min_cells=int(r.get("cluster_min_cells", 3)),
            review_wording=r.get("review_wording", ""),
        ))
    for specimen in specimens:
        codes = [r.code for r in rules if specimen in r.specimens]
        if len(set(codes)) != len(codes):
            raise ValueError(f"two rules with one code for specimen {specimen}")
        for i, r in enumerate(x for x in rules if specimen in x.specimens):
            if r.requires and r.requires not in codes[:i]:
                raise ValueError(f"rule {r.id} requires {r.requires!r}, which must come earlier")
    return RuleSet(raw["version"], int(raw["minimum_count"]), int(raw["default_target_count"]), cited,
                   tuple(rules), specimens, tuple(raw.get("not_assessed", ())))


@cache
def default_rules() -> RuleSet:
    return load_rules()


@dataclass(frozen=True)
class Context:
    """What a rule is evaluated against, besides the rule."""

    diff: Differential
    specimen: Specimen
    trained: Collection[str]
    minimum_count: int
    evidence: CaseEvidence = CaseEvidence()
    confusion: Confusion | None = None

    @property
    def basis(self) -> str:
        if self.confusion is not None:
            return f"measured confusion of weights {self.confusion.weights_version} ({self.confusion.data})"
        return "no measured confusion for the running weights: conservative bounds"


def rule_bounds(rule: Rule, ctx: Context) -> tuple[Bounds, list[str]]:
    """The counts the rule's decision rests on, and notes on how they were bounded."""
    counts = ctx.diff.counts
    if rule.denominator is not None:
        denominator = set(rule.denominator)
    else:
        denominator = {c for c in counts if c not in ctx.specimen.denominator_excludes}
    numerator = [c for c in rule.numerator if c in denominator]
    n = float(sum(counts.get(c, 0) for c in denominator))
    k = float(sum(counts.get(c, 0) for c in numerator))
    sure, possible = set(numerator), set(numerator) | set(rule.unknown_lineage)
    notes: list[str] = []
    if ctx.confusion is None:
        k_low = k
        k_high = k + sum(counts.get(c, 0) for c in rule.possibly if c in denominator and c not in sure)
    else:
        k_low, k_high = 0.0, k
        for c in sorted(denominator):
            m = counts.get(c, 0)
            if not m:
                continue
            if c in sure:
                rates = ctx.confusion.rate_bounds(c, sure)
                k_low += m * (rates[0] if rates else 0.0)
                if rates is None:
                    notes.append(f"{c} calls unmeasured: not counted in the lower bound")
            else:
                rates = ctx.confusion.rate_bounds(c, possible)
                if rates is None:
                    k_high += m if c in rule.possibly else 0.0
                    if c in rule.possibly:
                        notes.append(f"{c} calls unmeasured: all may belong")
                else:
                    k_high += m * rates[1]
    rejected = ctx.evidence.rejected_possibly_in(possible)
    if rejected:
        notes.append(f"{rejected} rejected cell(s) with a {'/'.join(sorted(sure))} class in their top-k may belong")
    n_high = n + rejected
    return Bounds(k, n, min(k_low, k), min(k_high + rejected, n_high), n_high, float(ctx.diff.total)), notes


def _untrained(rule: Rule, trained: Collection[str]) -> list[str]:
    return [c for c in rule.numerator if c not in trained]


def _more_text(more: int) -> str:
    return (f"; about {more} more cells at these fractions would decide" if more else
            f"; no count within {SEARCH_LIMIT:,} more cells would decide: the uncertainty is the classifier's, "
            f"review the cells or immunophenotype")


class _Maker:
    def __init__(self, rule: Rule, ctx: Context, bounds: Bounds | None) -> None:
        self.rule, self.ctx = rule, ctx
        self.percent = bounds.percent if bounds else 0.0
        low, high = bounds.interval() if bounds and bounds.n else (0.0, 1.0)
        self.low, self.high = 100 * low, 100 * high

    def __call__(self, status: Status, why: str, more: int = 0, *, threshold: float | None = None,
                 urgent: bool = False, tier: str = "", undecidable: bool = False, source: str | None = None) -> Finding:
        r = self.rule
        return Finding(r.code, r.label, status, self.percent, self.low, self.high,
                       r.threshold_percent if threshold is None else threshold, r.id,
                       r.source if source is None else source, why, more, urgent, tier, undecidable,
                       self.ctx.specimen.code)


def _too_few(ctx: Context) -> str:
    return f"only {ctx.diff.total} countable cells counted; at least {ctx.minimum_count} are needed"


def _after_minimum(more: int) -> str:
    return (f"; about {more} more cells at these fractions would decide" if more else
            f"; even then no count within {SEARCH_LIMIT:,} more cells would decide at these fractions")


def _straddle(b: Bounds, thresholds: tuple[float, ...], basis: str) -> str:
    low, high = (100 * x for x in b.interval())
    plain_low, plain_high = (100 * x for x in b.plain_interval())
    from_classifier = max(0.0, plain_low - low) + max(0.0, high - plain_high)
    spans = ", ".join(f"{t:g}%" for t in thresholds)
    text = (f"{b.percent:.1f}% (95% bounds {low:.1f}-{high:.1f}%) straddles {spans}: lower bound "
            f"{thresholds[0] - low:.1f} points below, upper bound {high - thresholds[-1]:.1f} points above")
    if from_classifier >= 0.05:
        text += f"; {from_classifier:.1f} points of that width are cells that may or may not belong ({basis})"
    return text


def evaluate_threshold(rule: Rule, ctx: Context, earlier: Mapping[str, Finding]) -> Finding:
    untrained = _untrained(rule, ctx.trained)
    if len(untrained) == len(rule.numerator):
        return _Maker(rule, ctx, None)(Status.NOT_ASSESSED, f"not assessed: the classifier was not trained on "
                                                           f"{', '.join(untrained)} (not a zero)")
    bounds, notes = rule_bounds(rule, ctx)
    finding = _Maker(rule, ctx, bounds)
    # Classes of the numerator the classifier does not know are left out of the wording: their
    # cells are called as something trained (a lineage blast as "blast"), which the bounds carry.
    partial = ""
    if rule.requires:
        prerequisite = earlier[rule.requires]
        if prerequisite.status is Status.NEGATIVE:
            return finding(Status.NEGATIVE, f"not applicable: {rule.requires} is negative")
        if prerequisite.status is not Status.POSITIVE:
            return finding(Status.INDETERMINATE, f"depends on {rule.requires}, which is "
                                                 f"{prerequisite.status.value.replace('_', ' ')}")
    threshold = rule.threshold_percent / 100.0
    v = verdict(bounds, threshold, rule.comparator, ctx.minimum_count)
    denominator = bounds.n or 1.0
    guard_percent = 100.0 * sum(ctx.diff.counts.get(c, 0) for c in rule.guard_classes) / denominator
    guarded = rule.guard_from_percent is not None and bounds.n > 0 and guard_percent >= rule.guard_from_percent
    guard_text = f"; {'/'.join(rule.guard_classes)} {guard_percent:.1f}%: {rule.guard_wording}" if guarded else ""
    urgent = bool(rule.urgent_wording) and bounds.n > 0 and (
        v is Verdict.POSITIVE or rule.meets(bounds.percent) or (guarded and rule.guard_urgent))
    prefix = f"URGENT: {rule.urgent_wording}. " if urgent else ""
    if ctx.diff.total < ctx.minimum_count:
        more = cells_to_decide(bounds, threshold, rule.comparator, ctx.minimum_count)
        return finding(Status.INDETERMINATE, prefix + _too_few(ctx) + _after_minimum(more) + guard_text, more,
                       urgent=urgent, undecidable=not more)
    if bounds.n == 0:
        return finding(Status.INDETERMINATE, "no cells in the rule's denominator" + partial)
    extra = ("; " + "; ".join(notes)) if notes else ""
    if v is Verdict.POSITIVE:
        return finding(Status.POSITIVE, prefix + f"{bounds.percent:.1f}% (95% bounds {finding.low:.1f}-"
                                                 f"{finding.high:.1f}%) {rule.comparator} {rule.threshold_percent:g}%"
                       + partial + extra, urgent=urgent)
    if v is Verdict.NEGATIVE:
        # Blasts of unknown lineage may be this rule's: they count towards "not excluded".
        possible = bounds.k + sum(ctx.diff.counts.get(c, 0) for c in rule.unknown_lineage)
        possible_percent = 100.0 * possible / bounds.n
        if rule.not_excluded_from_percent is not None and possible_percent >= rule.not_excluded_from_percent:
            of_which = f", {possible_percent:.1f}% with blasts of unknown lineage" if possible > bounds.k else ""
            return finding(Status.INDETERMINATE, prefix + f"{bounds.percent:.1f}%{of_which} (95% bounds "
                                                 f"{finding.low:.1f}-{finding.high:.1f}%): {rule.not_excluded_wording}"
                                                 + guard_text, urgent=urgent)
        if guarded:
            return finding(Status.INDETERMINATE, prefix + f"{bounds.percent:.1f}% (upper 95% bound "
                                                 f"{finding.high:.1f}%) below {rule.threshold_percent:g}%, but not "
                                                 f"negative" + guard_text, urgent=urgent)
        return finding(Status.NEGATIVE, prefix + f"{bounds.percent:.1f}% (upper 95% bound {finding.high:.1f}%, "
                                                 f"{ctx.basis}) below {rule.threshold_percent:g}%" + partial + extra,
                       urgent=urgent)
    more = cells_to_decide(bounds, threshold, rule.comparator, ctx.minimum_count)
    return finding(Status.INDETERMINATE, prefix + _straddle(bounds, (rule.threshold_percent,), ctx.basis)
                   + _more_text(more) + guard_text + extra, more, urgent=urgent, undecidable=not more)


def evaluate_tier(rule: Rule, ctx: Context) -> Finding:
    untrained = _untrained(rule, ctx.trained)
    if len(untrained) == len(rule.numerator):
        return _Maker(rule, ctx, None)(Status.NOT_ASSESSED, "not assessed: no blast class trained")
    bounds, notes = rule_bounds(rule, ctx)
    finding = _Maker(rule, ctx, bounds)
    tier = [t for t in rule.tiers if bounds.percent >= t.from_percent][-1]
    boundaries = tuple(t.from_percent for t in rule.tiers[1:])
    partial = ""
    where = f"tier {tier.name} on the point estimate {bounds.percent:.1f}%"
    if ctx.diff.total < ctx.minimum_count or bounds.n == 0:
        more = cells_to_decide(bounds, tuple(b / 100 for b in boundaries), ">=", ctx.minimum_count)
        return finding(Status.INDETERMINATE, f"{where}; " + _too_few(ctx) + _after_minimum(more) + partial, more,
                       threshold=tier.from_percent, tier=tier.name, undecidable=not more, source=tier.source)
    spanned = tuple(b for b in boundaries if verdict(bounds, b / 100, ">=") is Verdict.INDETERMINATE)
    if spanned:
        more = cells_to_decide(bounds, tuple(b / 100 for b in boundaries), ">=", ctx.minimum_count)
        extra = ("; " + "; ".join(notes)) if notes else ""
        return finding(Status.INDETERMINATE, f"{where} ({tier.wording}); tier not settled: "
                       + _straddle(bounds, spanned, ctx.basis) + _more_text(more) + partial + extra, more,
                       threshold=spanned[0], tier=tier.name, undecidable=not more, source=tier.source)
    return finding(tier.status, f"{tier.wording}: {bounds.percent:.1f}% (95% bounds {finding.low:.1f}-"
                                f"{finding.high:.1f}%)" + partial,
                   threshold=tier.from_percent, tier=tier.name, source=tier.source)


def evaluate_review(rule: Rule, ctx: Context) -> Finding:
    untrained = _untrained(rule, ctx.trained)
    counted = ctx.diff.count_of(rule.numerator)
    finding = _Maker(rule, ctx, Bounds(counted, ctx.diff.total, counted, counted, ctx.diff.total))
    clusters = ctx.evidence.clusters(rule.cluster_min_cells)
    seen = (f"{clusters} cluster(s) of >= {rule.cluster_min_cells} overlapping nucleated cells (excluded from "
            f"the count)")
    if len(untrained) == len(rule.numerator):
        if clusters:
            return finding(Status.INDETERMINATE, f"{seen} seen: {rule.review_wording}; "
                                                 f"{', '.join(untrained)} not assessed (class not trained)")
        return finding(Status.NOT_ASSESSED, f"not assessed: the classifier was not trained on "
                                            f"{', '.join(untrained)}; no cluster of overlapping cells seen")
    sure = set(rule.numerator)
    atypical = (counted + sum(1 for c in ctx.evidence.excluded_classes if c in sure)
                + sum(1 for top in ctx.evidence.rejected_top_k if top and top[0] in sure))
    if atypical or clusters:
        what = [f"{atypical} cell(s) called {'/'.join(rule.numerator)}"] if atypical else []
        return finding(Status.POSITIVE, f"{'; '.join([*what, *([seen] if clusters else [])])}: {rule.review_wording}")
    if ctx.diff.total < ctx.minimum_count:
        return finding(Status.INDETERMINATE, _too_few(ctx), ctx.minimum_count - ctx.diff.total)
    return finding(Status.NEGATIVE, f"no atypical cells or clusters seen among {ctx.diff.total} counted cells "
                                    f"(a smear can miss focal disease: trephine if clinically suspected)")


def diagnose(diff: Differential, rules: RuleSet, trained: Collection[str], *, specimen: str = MARROW,
             evidence: CaseEvidence | None = None, confusion: Confusion | None = None) -> tuple[Finding, ...]:
    """Findings of the rules for ``specimen``; with a specimen the rule set does not know
    ("unspecified"), every marrow rule is reported not assessed rather than guessed."""
    if specimen not in rules.specimens:
        base = rules.specimens.get(MARROW) or next(iter(rules.specimens.values()))
        ctx = Context(diff, Specimen("", "unspecified", (), "", ""), trained, rules.minimum_count)
        return tuple(_Maker(r, ctx, None)(Status.NOT_ASSESSED, "not assessed: the specimen type was not given "
                                                             "(bone marrow aspirate or peripheral blood)")
                     for r in rules.rules_for(base.code))
    ctx = Context(diff, rules.specimens[specimen], trained, rules.minimum_count, evidence or CaseEvidence(), confusion)
    findings: dict[str, Finding] = {}
    for rule in rules.rules_for(specimen):
        if rule.kind == "tier":
            findings[rule.code] = evaluate_tier(rule, ctx)
        elif rule.kind == "review":
            findings[rule.code] = evaluate_review(rule, ctx)
        else:
            findings[rule.code] = evaluate_threshold(rule, ctx, findings)
    return tuple(findings.values())


def conclusion(findings: tuple[Finding, ...], not_assessed: Collection[str] = (), specimen: str = "") -> str:
    """One paragraph: urgent results first, then what the screen found, what it could not
    decide, and what it does not assess."""
    parts = [f.explanation.split(". ", 1)[0] + "." for f in findings if f.urgent]
    where = {MARROW: "bone marrow aspirate", BLOOD: "peripheral blood"}.get(specimen, "")
    if where:
        parts.append(f"Screen by morphology ({where} rules).")
    elif specimen:
        parts.append("Screen by morphology: the specimen type was not given (bone marrow aspirate or "
                     "peripheral blood), so no rule was applied.")
    else:
        parts.append("Screen by morphology.")
    positive = [f.label + (f" [{f.tier}]" if f.tier else "") for f in findings if f.status is Status.POSITIVE]
    undecided = [f.code + (f" [{f.tier}]" if f.tier else "") for f in findings if f.status is Status.INDETERMINATE]
    unassessed = [f.code for f in findings if f.status is Status.NOT_ASSESSED]
    if positive:
        parts.append("Positive: " + "; ".join(positive) + ".")
    elif not undecided and not unassessed:
        parts.append("No finding met by the rules applied; this does not exclude disease.")
    else:
        parts.append("No positive finding.")
    if undecided:
        parts.append("Indeterminate or not excluded: " + ", ".join(undecided) + " (see findings).")
    if unassessed:
        parts.append("Not assessed: " + ", ".join(unassessed) + ".")
    if not_assessed:
        parts.append("Not assessed by this software, for the reviewer to complete: " + ", ".join(not_assessed) + ".")
    return " ".join(parts) + " Research use only; requires review by a qualified haematologist."
