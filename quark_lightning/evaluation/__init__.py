"""Evaluating models against a matrix outside training (`evaluate.py`): the run, its reports, HealthBench."""
