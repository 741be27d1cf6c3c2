"""Distribution transformers: a network maps a GMM prior plus data to a GMM posterior.

``GMM`` is the token set (one token per component), ``DistributionTransformer`` the
permutation-equivariant network, ``amortized_forward_kl`` + ``train`` the amortized
training objective and loop, ``filter`` sequential inference (posterior → next prior).
"""

from .gmm import GMM, as_transform, constrained, token_size
from .network import DistributionTransformer, SymmetricPriorWarning, is_symmetric
from .sequential import filter, linear_gaussian
from .training import (
    AmortizedForwardKL,
    TrainResult,
    amortized_forward_kl,
    dt_optimizer,
    train,
)

__all__ = [
    "GMM",
    "token_size",
    "constrained",
    "as_transform",
    "DistributionTransformer",
    "SymmetricPriorWarning",
    "is_symmetric",
    "AmortizedForwardKL",
    "amortized_forward_kl",
    "train",
    "TrainResult",
    "dt_optimizer",
    "filter",
    "linear_gaussian",
]
