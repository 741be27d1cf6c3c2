"""Exact and statistical checkers, usable on your own estimators."""

from .fuzz import (
    ProgramSpec,
    bonferroni_sigma,
    check_programs,
    describe,
    exact_value_and_grad,
    programs,
)
from .invariance import (
    InvarianceReport,
    StationarityReport,
    check_binned_invariance,
    check_geweke,
    check_invariance,
    check_kernel_invariance,
    check_stationarity,
    target_probs,
    transition_matrix,
)
from .sbc import SBCReport, check_sbc, kernel_inference, sbc_ranks
from .unbiased import UnbiasedReport, check_unbiased, estimator_stats

__all__ = [
    "ProgramSpec",
    "programs",
    "check_programs",
    "describe",
    "exact_value_and_grad",
    "bonferroni_sigma",
    "UnbiasedReport",
    "check_unbiased",
    "estimator_stats",
    "InvarianceReport",
    "StationarityReport",
    "transition_matrix",
    "target_probs",
    "check_invariance",
    "check_kernel_invariance",
    "check_stationarity",
    "check_binned_invariance",
    "check_geweke",
    "SBCReport",
    "check_sbc",
    "sbc_ranks",
    "kernel_inference",
]
