"""The objective library: each objective a short program in ppl's DSL."""

from .annealed import annealed, annealing_params
from .brain import brain, dpg, gdcpp
from .dpo import dpo
from .elbo import elbo
from .fdiv import fdiv
from .forward_kl import forward_kl
from .hierarchical import diwhvi, hvi, iwhvi
from .importance import cubo, iwae, renyi, vimco
from .ppo import ppo
from .score_climbing import msc, msc_chain
from .wake_sleep import rws, tail_adaptive
from .weights import element_log_weights, log_mean_exp, log_weight, log_weights

__all__ = [
    "elbo",
    "iwae",
    "renyi",
    "vimco",
    "cubo",
    "rws",
    "tail_adaptive",
    "hvi",
    "iwhvi",
    "diwhvi",
    "forward_kl",
    "annealed",
    "annealing_params",
    "msc",
    "msc_chain",
    "brain",
    "dpg",
    "gdcpp",
    "fdiv",
    "ppo",
    "dpo",
    "log_weight",
    "log_weights",
    "element_log_weights",
    "log_mean_exp",
]
