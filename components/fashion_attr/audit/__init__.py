"""What each new catalog batch teaches, before training: label issues, drift, tags.

Scheduled retraining folds new catalog batches into the dataset
(:mod:`fashion_attr.data.ingest.batch`). The champion has never seen them, so its
predictions on them are out of sample: what label-error detection needs. The audit
(the ``audit`` step, :mod:`fashion_attr.steps.audit`) reads the records a run folded in
and writes, beside the dataset version (``<version>/audit/``):

- ``label_issues.jsonl``: the records whose labels the champion disputes (wrong
  category, missing or spurious attributes), most suspicious first
  (:mod:`~fashion_attr.audit.issues`, with cleanlab's confident learning);
- ``drift.json``: the batch's label and category distribution against the base, new
  and vanished labels, the tail set's change, and image-feature drift in the
  champion's feature space, with ``flagged`` and why (:mod:`~fashion_attr.audit.drift`);
- ``tags.jsonl`` and ``to_label.jsonl``: the champion's tags for images that came
  without labels, and the order to label them in (:mod:`~fashion_attr.audit.tags`);
- ``report.md`` / ``report.html``: all of it for a person, with thumbnails of the top
  issues (:mod:`~fashion_attr.audit.report`).

``audit.label_issues = report | exclude | downweight`` says what becomes of flagged
train records; ``exclude`` and ``downweight`` publish a derived version that says what
it left out (:mod:`~fashion_attr.audit.policy`). :mod:`~fashion_attr.audit.recall_change`
gives the per-attribute recall change of challenger vs champion for the gate record.

This package imports the data, classifier, evaluation, hardness, storage and config
layers, never the steps, the orchestration or kfp.
"""

from fashion_attr.audit.drift import drift_report, feature_drift, label_drift
from fashion_attr.audit.issues import ISSUE_KINDS, IssueSearch, LabelIssue, find_label_issues
from fashion_attr.audit.policy import POLICIES, PolicyOutcome, apply_policy
from fashion_attr.audit.recall_change import (
    paired_recall_change,
    recall_change,
    render_recall_change,
)
from fashion_attr.audit.records import AuditRecord, BatchSet, collect_batch
from fashion_attr.audit.runner import FILES, AuditOutcome, audit_version
from fashion_attr.audit.scoring import Champion, ChampionOutputs, load_champion, score_members
from fashion_attr.audit.tags import labelling_queue, tag_records

__all__ = [
    "FILES",
    "ISSUE_KINDS",
    "POLICIES",
    "AuditOutcome",
    "AuditRecord",
    "BatchSet",
    "Champion",
    "ChampionOutputs",
    "IssueSearch",
    "LabelIssue",
    "PolicyOutcome",
    "apply_policy",
    "audit_version",
    "collect_batch",
    "drift_report",
    "feature_drift",
    "find_label_issues",
    "label_drift",
    "labelling_queue",
    "load_champion",
    "paired_recall_change",
    "recall_change",
    "render_recall_change",
    "score_members",
    "tag_records",
]
