"""A case report as readable text (the CLI's default output)."""

from __future__ import annotations

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb

STATUS = {pb.FINDING_STATUS_POSITIVE: "POSITIVE", pb.FINDING_STATUS_NEGATIVE: "negative",
          pb.FINDING_STATUS_INDETERMINATE: "INDETERMINATE"}


def report_text(report: pb.CaseReport) -> str:
    lines = [
        f"marrowdx case report {report.report_id}   ({report.created_at})",
        f"  {report.disclaimer}",
        f"  images: {report.images_received}   cells counted: {report.cells_counted} "
        f"(target {report.target_count}, minimum {report.minimum_count})",
        "",
        f"  {'cell class':<30}{'n':>5}{'%':>8}   95% CI",
    ]
    for item in report.differential:
        if item.count == 0 or not item.trained:
            continue
        lines.append(f"  {item.label:<30}{item.count:>5}{item.percent:>8.1f}   "
                     f"{item.ci_low_percent:5.1f}-{item.ci_high_percent:5.1f}")
    # An untrained class is not assessed, which is not a zero: no number is shown for it.
    unassessed = [i.label for i in report.differential if not i.trained]
    called = [f"{i.label} {i.count}" for i in report.differential if not i.trained and i.count]
    zero = [i.label for i in report.differential if i.count == 0 and i.trained]
    if zero:
        lines.append(f"  (0 cells: {', '.join(zero)})")
    if unassessed:
        lines.append(f"  not assessed (class not trained): {', '.join(unassessed)}"
                     + (f"; cells called so anyway: {', '.join(called)}" if called else ""))
    if report.excluded_counts:
        lines.append("  excluded: " + ", ".join(f"{k} {v}" for k, v in sorted(report.excluded_counts.items())))
    if report.HasField("myeloid_erythroid_ratio"):
        ci = (f" (95% CI {report.myeloid_erythroid_ratio_ci_low:.2f}-{report.myeloid_erythroid_ratio_ci_high:.2f})"
              if report.HasField("myeloid_erythroid_ratio_ci_low") else "")
        lines.append(f"  M:E ratio: {report.myeloid_erythroid_ratio:.2f}{ci}")
    lines += ["", "  findings:"]
    for f in report.findings:
        state = "NOT ASSESSED" if f.not_assessed else STATUS.get(f.status, "?")
        tier = f" [{f.tier}]" if f.tier else ""
        lines.append(f"  - [{state:>13}] {'URGENT ' if f.urgent else ''}{f.label}{tier}")
        lines.append(f"      {f.explanation}  (rule {f.rule_id}, {f.source})")
    lines += ["", f"  conclusion: {report.conclusion}",
              f"  models: detector {report.models.detector}, classifier {report.models.classifier}, "
              f"taxonomy {report.models.taxonomy}, rules {report.models.rule_set}, "
              f"confusion {report.models.confusion or 'none (conservative bounds)'}",
              f"  thresholds: detection {report.thresholds.detection_score:.2f}, "
              f"reject below p={report.thresholds.reject_probability:.2f}, overlap IoU {report.thresholds.overlap_iou:.2f}",
              f"  time: {report.timings.total_ms:.0f} ms (decode {report.timings.decode_ms:.0f}, "
              f"detect {report.timings.detect_ms:.0f}, classify {report.timings.classify_ms:.0f})"]
    return "\n".join(lines)
