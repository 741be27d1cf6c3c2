"""Hierarchical variational objectives over a guide with auxiliary variables: HVI, IWHVI,
DIWHVI (Ranganath et al. 2016; Sobolev & Vetrov 2019), built from ``ppl.marginal``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..core.arguments import count
from ..core.marginal import marginal
from ..infer.svi import Objective, numpyro_loss_options
from .weights import log_mean_exp, log_weight, log_weights


@numpyro_loss_options
def hvi(keep: Sequence[str], reverse: Callable) -> Objective:
    """E[log p(x, z) + log r(u | z) - log q(u, z)] <= ELBO(q(z)) <= log p(x).

    ``keep``: the guide's sites that are the model's latents; the others are auxiliary,
    and ``reverse(kept_values, *args, **kwargs)`` is a program over them.
    """

    def program(model, guide, *args, **kwargs):
        return log_weight(model, marginal(guide, keep, reverse, 0), *args, **kwargs)

    return Objective(program, name="hvi")


@numpyro_loss_options
def iwhvi(keep: Sequence[str], reverse: Callable, num_samples: int = 5) -> Objective:
    """HVI with an importance-weighted bound on log q(z) from ``num_samples`` reverse draws."""
    num_samples = count(num_samples, "num_samples", "iwhvi")

    def program(model, guide, *args, **kwargs):
        return log_weight(model, marginal(guide, keep, reverse, num_samples), *args, **kwargs)

    return Objective(program, name=f"iwhvi(num_samples={num_samples})")


@numpyro_loss_options
def diwhvi(
    keep: Sequence[str], reverse: Callable, num_particles: int = 5, num_samples: int = 5
) -> Objective:
    """Doubly importance-weighted HVI: IWAE over ``num_particles`` IWHVI weights."""
    num_particles = count(num_particles, "num_particles", "diwhvi")
    num_samples = count(num_samples, "num_samples", "diwhvi", minimum=0)

    def program(model, guide, *args, **kwargs):
        q = marginal(guide, keep, reverse, num_samples)
        return log_mean_exp(log_weights(model, q, num_particles, *args, **kwargs))

    return Objective(
        program,
        name=f"diwhvi(num_particles={num_particles}, num_samples={num_samples})",
        subsampling=False,
    )
