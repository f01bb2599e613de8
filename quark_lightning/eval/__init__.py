"""Evaluation: observable metrics per dimension / category / area, attributable diagnosis, reports."""
