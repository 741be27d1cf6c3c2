"""The transformation: expectations, strategies, continuations, surrogates."""

from .consistency import ModelGuideMismatch
from .constructs import Simulation, density, particles, simulate
from .expectation import Expectation, expectation
from .finite import NonFiniteError, check_finite
from .marginal import Marginal, Normalize, marginal, normalize
from .model_enum import EnumerationError
from .running import RunningBaseline, running_baseline
from .strategies import (
    MVD,
    Enum,
    Implicit,
    Reinforce,
    Reparam,
    Strategy,
    StrategyError,
    enum,
    implicit,
    mvd,
    reinforce,
    reparam,
    strategy,
)

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
    "NonFiniteError",
    "ModelGuideMismatch",
    "EnumerationError",
    "check_finite",
]
