"""Exact and statistical checkers, usable on your own estimators."""

from .unbiased import UnbiasedReport, check_unbiased, estimator_stats

__all__ = ["UnbiasedReport", "check_unbiased", "estimator_stats"]
