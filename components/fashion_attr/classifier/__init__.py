"""Attribute/category classifiers (docs/method.md section 5)."""

from fashion_attr.classifier.model import (
    AttributeClassifier,
    ClassifierArch,
    build_classifier,
)

__all__ = ["AttributeClassifier", "ClassifierArch", "build_classifier"]
