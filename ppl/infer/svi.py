"""NumPyro SVI glue: an objective program becomes an SVI loss (its negation)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from numpyro.handlers import substitute, trace

from ..core.expectation import Expectation


class Objective:
    """A variational objective, ``program(model, guide, *args, **kwargs) -> scalar``.

    Maximized; as an SVI loss it hands NumPyro ``-estimate``. Satisfies SVI's loss
    contract (``loss``, ``loss_with_mutable_state``, ``can_infer_discrete``), and is
    itself callable with the program's signature, so objectives compose (an objective
    can call another inside its own program). ``num_estimates`` averages that many
    independent estimates (vectorized with ``vmap``; each keeps the program's own
    Rao-Blackwellization and plate fast path).
    """

    can_infer_discrete = True

    def __init__(
        self,
        program: Callable,
        name: str | None = None,
        additive: bool = False,
        rao_blackwellize: bool = True,
        stick_the_landing: bool = False,
        num_estimates: int = 1,
    ):
        if not isinstance(num_estimates, int) or num_estimates < 1:
            raise ValueError(f"num_estimates must be a positive int, got {num_estimates!r}")
        self.num_estimates = num_estimates
        self.program = program
        self.additive = additive
        self.rao_blackwellize = rao_blackwellize
        self.stick_the_landing = stick_the_landing
        self.name = name or getattr(program, "__name__", "objective")
        functools.update_wrapper(self, program, updated=[])

    def __call__(self, model, guide, *args, **kwargs):
        return self.program(model, guide, *args, **kwargs)

    def __repr__(self) -> str:
        return f"ppl.Objective({self.name})"

    def expectation(self, model, guide, params=None) -> Expectation:
        """The :class:`~ppl.Expectation` of this objective for ``model`` and ``guide``.

        ``params`` (constrained values by name) are substituted into both programs.
        """

        def program(*args, **kwargs):
            return self.program(model, guide, *args, **kwargs)

        program.__name__ = self.name
        if params is not None:
            program = substitute(program, data=params)
        return Expectation(
            program,
            additive=self.additive,
            rao_blackwellize=self.rao_blackwellize,
            stick_the_landing=self.stick_the_landing,
        )

    def estimate(self, rng_key, params, model, guide, *args, **kwargs):
        """Differentiable unbiased estimate of the objective at ``params``."""
        return self.estimate_with_updates(rng_key, params, model, guide, *args, **kwargs)[0]

    def estimate_with_updates(self, rng_key, params, model, guide, *args, **kwargs):
        """(estimate, next states of the running baselines read, by mutable-site name)."""
        E = self.expectation(model, guide, params)
        if self.num_estimates == 1:
            return E.with_updates(rng_key, *args, **kwargs)
        keys = jax.random.split(rng_key, self.num_estimates)
        values, updates = jax.vmap(lambda k: E.with_updates(k, *args, **kwargs))(keys)
        return jnp.mean(values), jax.tree.map(lambda u: jnp.mean(u, axis=0), updates)

    def loss(self, rng_key, param_map, model, guide, *args, **kwargs):
        """SVI loss: the negated objective estimate."""
        return -self.estimate(rng_key, param_map, model, guide, *args, **kwargs)

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        """SVI loss plus the ``numpyro.mutable`` state written by model and guide."""
        mutable = _mutable_sites(rng_key, param_map, model, guide, args, kwargs)
        value, updates = self.estimate_with_updates(
            rng_key, param_map, model, guide, *args, **kwargs
        )
        mutable.update(updates)
        return {"loss": -value, "mutable_state": mutable or None}


def _mutable_sites(rng_key, params, model, guide, args, kwargs):
    """Values of mutable sites after one plain run of guide then model."""
    from numpyro.handlers import replay, seed

    guide_tr = trace(substitute(seed(guide, rng_key), data=params)).get_trace(*args, **kwargs)
    model_tr = trace(replay(substitute(seed(model, rng_key), data=params), guide_tr)).get_trace(
        *args, **kwargs
    )
    state = {}
    for tr in (model_tr, guide_tr):
        for name, site in tr.items():
            if site["type"] == "mutable":
                state[name] = jax.lax.stop_gradient(site["value"])
    return state


def objective(program: Callable | None = None, *, name: str | None = None, additive=False):
    """Decorator: ``@ppl.objective`` turns ``program(model, guide, *args)`` into an SVI loss.

    ``additive=True`` declares an ELBO-like program (value = density terms - simulate log
    probabilities), enabling O(N |support|) per-element corrections in plates
    (see :func:`ppl.expectation`).

    Example::

        @ppl.objective
        def my_elbo(model, guide, *args, **kwargs):
            q = ppl.simulate(guide, *args, **kwargs)
            return ppl.density(model, q.values, *args, **kwargs) - q.log_prob

        svi = SVI(model, guide, optax.adam(1e-2), loss=my_elbo)
    """
    if program is None:
        return lambda p: Objective(p, name=name, additive=additive)
    return Objective(program, name=name, additive=additive)
