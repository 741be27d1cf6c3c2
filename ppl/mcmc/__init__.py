"""Composable MCMC kernels: pure ``(init, step)`` pairs and NumPyro ``MCMCKernel`` adapters.

Pure kernels take an unnormalized log density of a position (an array or a pytree) and
return a :class:`Kernel`; they run under ``jax.jit``, ``jax.vmap`` and ``jax.lax.scan``.
"""

from .adapters import HMC, MALA, NUTS, AdaptState, KernelState, ModelKernel, RandomWalk
from .arviz import to_arviz
from .base import GradState, Info, Kernel, State, mh_accept, summarize
from .chees import (
    ChEES,
    ChEESParameters,
    ChEESState,
    chees,
    chees_adaptation,
    chees_warmup,
    halton,
)
from .combinators import block, cycle, mixture, repeat
from .diagnostics import Diagnostics, MixingWarning, diagnose
from .enum_gibbs import enum_gibbs
from .gibbs import EnumGibbs
from .gradient import hmc, leapfrog, mala
from .involutive import Involutive, hmc_involution, involutive, log_abs_det_jacobian
from .mh import independence, mh, random_walk
from .model_mh import MH
from .nuts import nuts
from .smc import SMCResult, SMCStages, data_annealed_smc, systematic_resample, tempered_smc
from .smc_model import SMC

__all__ = [
    "Kernel",
    "State",
    "GradState",
    "Info",
    "summarize",
    "mh_accept",
    "mh",
    "random_walk",
    "independence",
    "mala",
    "hmc",
    "leapfrog",
    "nuts",
    "chees",
    "chees_warmup",
    "chees_adaptation",
    "ChEESParameters",
    "halton",
    "enum_gibbs",
    "involutive",
    "hmc_involution",
    "log_abs_det_jacobian",
    "cycle",
    "mixture",
    "repeat",
    "block",
    "ModelKernel",
    "KernelState",
    "AdaptState",
    "RandomWalk",
    "MALA",
    "HMC",
    "NUTS",
    "ChEES",
    "ChEESState",
    "EnumGibbs",
    "MH",
    "Involutive",
    "tempered_smc",
    "data_annealed_smc",
    "systematic_resample",
    "SMC",
    "SMCResult",
    "SMCStages",
    "to_arviz",
    "diagnose",
    "Diagnostics",
    "MixingWarning",
]
