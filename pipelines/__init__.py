"""Kubeflow Pipelines definitions of the fashion attribute retraining pipeline."""
