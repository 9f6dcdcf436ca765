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
        if item.count == 0:
            continue
        flag = "" if item.trained else "  (untrained class)"
        lines.append(f"  {item.label:<30}{item.count:>5}{item.percent:>8.1f}   "
                     f"{item.ci_low_percent:5.1f}-{item.ci_high_percent:5.1f}{flag}")
    zero = [i.label for i in report.differential if i.count == 0]
    if zero:
        lines.append(f"  (0 cells: {', '.join(zero)})")
    if report.excluded_counts:
        lines.append("  excluded: " + ", ".join(f"{k} {v}" for k, v in sorted(report.excluded_counts.items())))
    if report.HasField("myeloid_erythroid_ratio"):
        lines.append(f"  M:E ratio: {report.myeloid_erythroid_ratio:.2f}")
    lines += ["", "  findings:"]
    for f in report.findings:
        lines.append(f"  - [{STATUS.get(f.status, '?'):>13}] {f.label}")
        lines.append(f"      {f.explanation}  (rule {f.rule_id}, {f.source})")
    lines += ["", f"  conclusion: {report.conclusion}",
              f"  models: detector {report.models.detector}, classifier {report.models.classifier}, "
              f"taxonomy {report.models.taxonomy}, rules {report.models.rule_set}",
              f"  thresholds: detection {report.thresholds.detection_score:.2f}, "
              f"reject below p={report.thresholds.reject_probability:.2f}, overlap IoU {report.thresholds.overlap_iou:.2f}",
              f"  time: {report.timings.total_ms:.0f} ms (decode {report.timings.decode_ms:.0f}, "
              f"detect {report.timings.detect_ms:.0f}, classify {report.timings.classify_ms:.0f})"]
    return "\n".join(lines)
