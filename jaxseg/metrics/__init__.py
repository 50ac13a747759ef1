"""Segmentation and detection metrics of the field, their summaries and reports (see docs/EVALUATION.md)."""
