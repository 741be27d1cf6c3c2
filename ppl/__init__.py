"""ppl: programmable inference for NumPyro.

Objectives written as programs become unbiased gradient estimators with a strategy per
sample site (pathwise, REINFORCE with baselines, enumeration, measure-valued
derivatives), usable as NumPyro ``SVI`` losses.
"""

from . import dt, jaxlib_check, mcmc, objectives, reward, sharding, validate
from .core import (
    MVD,
    Enum,
    EnumerationError,
    Expectation,
    Implicit,
    Marginal,
    ModelGuideMismatch,
    NonFiniteError,
    Normalize,
    Reinforce,
    Reparam,
    RunningBaseline,
    Simulation,
    Strategy,
    StrategyError,
    check_finite,
    density,
    enum,
    expectation,
    implicit,
    marginal,
    mvd,
    normalize,
    particles,
    reinforce,
    reparam,
    running_baseline,
    simulate,
    strategy,
)
from .infer import (
    CheckpointError,
    Objective,
    load_checkpoint,
    objective,
    resumable_run,
    save_checkpoint,
)

__version__ = "0.1.0"

jaxlib_check.warn_if_affected()

__all__ = [
    "Marginal",
    "marginal",
    "Normalize",
    "normalize",
    "Expectation",
    "expectation",
    "Simulation",
    "simulate",
    "density",
    "particles",
    "Strategy",
    "StrategyError",
    "Reparam",
    "Implicit",
    "Reinforce",
    "Enum",
    "MVD",
    "reparam",
    "implicit",
    "reinforce",
    "enum",
    "mvd",
    "strategy",
    "RunningBaseline",
    "running_baseline",
    "Objective",
    "objective",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "resumable_run",
    "NonFiniteError",
    "ModelGuideMismatch",
    "EnumerationError",
    "check_finite",
    "objectives",
    "validate",
    "mcmc",
    "dt",
    "reward",
    "sharding",
]
