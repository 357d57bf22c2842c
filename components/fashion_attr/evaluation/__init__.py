"""Evaluation: the metrics of docs/method.md section 6 and the report writer.

:mod:`.metrics` holds the streaming accumulators (attribute top-k recall per group,
class-balanced accuracy, AP/mAP, tail restriction; category top-k accuracy and
confusion matrix); :mod:`.report` turns their results into JSON, Markdown, CSV and
PNG files.
"""

from fashion_attr.evaluation.metrics import (
    ALL_GROUP,
    TAIL_GROUP,
    AttributeMetrics,
    CategoryMetrics,
    average_precision,
)
from fashion_attr.evaluation.report import (
    markdown_report,
    plot_confusion,
    plot_group_recall,
    plot_prob_vs_frequency,
    write_metrics_json,
    write_per_attribute_csv,
    write_report,
)

__all__ = [
    "ALL_GROUP",
    "TAIL_GROUP",
    "AttributeMetrics",
    "CategoryMetrics",
    "average_precision",
    "markdown_report",
    "plot_confusion",
    "plot_group_recall",
    "plot_prob_vs_frequency",
    "write_metrics_json",
    "write_per_attribute_csv",
    "write_report",
]
