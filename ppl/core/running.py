"""Running-average baselines for ``reinforce``, carried in NumPyro's mutable state."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax
from numpyro.primitives import mutable

from .arguments import count


class RunningBaseline(NamedTuple):
    """Exponential moving average of the cost a score multiplies (bias-corrected).

    ``mean_t = decay mean_{t-1} + (1 - decay) cost_t`` and ``weight_t`` likewise for 1, so
    the baseline ``mean / weight`` is the plain average of the costs seen so far, weighted
    towards recent ones (0 before the first update). The state lives in the mutable site
    ``name``; ``SVI`` carries it from step to step.
    """

    name: str
    decay: float
    state: dict

    @property
    def value(self):
        """The baseline: mean / weight (0 before any update); no gradient."""
        mean, weight = self.state["mean"], self.state["weight"]
        return lax.stop_gradient(jnp.where(weight > 0, mean / jnp.where(weight > 0, weight, 1), 0))

    def updated(self, cost) -> dict:
        """The next state after observing ``cost`` (broadcast or averaged to the state's shape)."""
        mean = self.state["mean"]
        cost = lax.stop_gradient(jnp.asarray(cost, mean.dtype)).reshape(-1)
        if cost.size == mean.size:
            cost = cost.reshape(mean.shape)
        elif cost.size == 1:
            cost = jnp.broadcast_to(cost.reshape(()), mean.shape)
        else:  # per-element costs into a scalar baseline: their mean
            cost = jnp.broadcast_to(jnp.mean(cost), mean.shape)
        d = self.decay
        return {"mean": d * mean + (1 - d) * cost, "weight": d * self.state["weight"] + (1 - d)}


def running_baseline(name: str, decay: float = 0.9, shape: tuple = ()) -> RunningBaseline:
    """A running-average baseline for ``ppl.reinforce(baseline=...)``, state in ``name``.

    Call it in the guide, before the site it serves; each SVI step moves it towards the
    cost that site's score multiplies (its Rao-Blackwellized downstream terms in an ELBO,
    else the program's value). ``shape=()`` keeps one number (per-element costs are
    averaged); ``shape`` = the site's batch shape keeps one per plate element.

    Example::

        def guide(x):
            p = numpyro.param("p", 0.5, constraint=dist.constraints.unit_interval)
            b = ppl.running_baseline("z_baseline", decay=0.9)
            numpyro.sample("z", dist.Bernoulli(p), infer={"grad": ppl.reinforce(baseline=b)})
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"running_baseline: name must be a non-empty str, got {name!r}")
    number = isinstance(decay, (int, float, np.integer, np.floating))
    if isinstance(decay, (bool, np.bool_)) or not number or not 0.0 <= decay < 1.0:
        raise ValueError(f"running_baseline '{name}': decay must be in [0, 1), got {decay!r}")
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"running_baseline '{name}': shape must be a tuple of ints, got {shape!r}")
    shape = tuple(count(n, "shape", f"running_baseline '{name}'") for n in shape)
    init = {"mean": jnp.zeros(shape), "weight": jnp.zeros(())}
    state = mutable(name, init)
    if state is None:
        state = init
    return RunningBaseline(name, float(decay), state)
