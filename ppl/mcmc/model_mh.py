"""``MH``: Metropolis–Hastings on a NumPyro model with an independence proposal written as a
NumPyro program over a subset of the model's latent sites."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.distributions import biject_to
from numpyro.infer.gibbs import GIBBS_SITES_KWARG
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import log_density

from .adapters import ModelKernel
from .base import Kernel, State, mh_accept


class MH(ModelKernel):
    """Independence Metropolis–Hastings with a proposal *program*: ``proposal(*model_args,
    **model_kwargs)`` samples some of the model's latent sites (constrained values, like a
    guide); the other sites are kept. In the model's unconstrained space u = T⁻¹(v) the
    proposal density is q(T(u)) |det ∂T/∂u|, and a move is accepted with probability
    min(1, π(y) q(x) / (π(x) q(y))). No step size is adapted.

    Example::

        def proposal(y):
            numpyro.sample("mu", dist.Normal(y.mean(), 0.5))

        mcmc = MCMC(ppl.mcmc.MH(model, proposal), num_warmup=200, num_samples=2000)
    """

    def __init__(
        self,
        model: Callable,
        proposal: Callable,
        init_strategy: Callable = init_to_uniform,
    ):
        super().__init__(model, adapt_step_size=False, init_strategy=init_strategy)
        self._proposal = proposal
        self._proposal_args = ((), {})

    def _logdensity_fn(self, model_args, model_kwargs):
        # the proposal program takes the model's arguments, without Gibbs conditioning values
        kwargs = {k: v for k, v in (model_kwargs or {}).items() if k != GIBBS_SITES_KWARG}
        self._proposal_args = (model_args, kwargs)
        return super()._logdensity_fn(model_args, model_kwargs)

    def _transforms(self, sites):
        missing = set(sites) - set(self._model_trace)
        if missing:
            raise ValueError(f"the proposal samples sites the model lacks: {sorted(missing)}")
        return {n: biject_to(self._model_trace[n]["fn"].support) for n in sites}

    def build(self, logdensity_fn: Callable, step_size) -> Kernel:
        args, kwargs = self._proposal_args
        proposal = self._proposal

        def log_q(u, transforms):
            """log density of the proposal at unconstrained values u (with the Jacobian)."""
            v = {n: t(u[n]) for n, t in transforms.items()}
            log_jac = sum(
                jnp.sum(t.log_abs_det_jacobian(u[n], v[n])) for n, t in transforms.items()
            )
            return log_density(proposal, args, kwargs, v)[0] + log_jac

        def init(position):
            return State(position, jnp.asarray(logdensity_fn(position)))

        def step(key, state):
            k_prop, k_acc = jax.random.split(key)
            tr = handlers.trace(handlers.seed(proposal, k_prop)).get_trace(*args, **kwargs)
            sites = {
                n: s["value"]
                for n, s in tr.items()
                if s["type"] == "sample" and not s["is_observed"]
            }
            transforms = self._transforms(sites)
            u_new = {n: transforms[n].inv(v) for n, v in sites.items()}
            y = {**state.position, **u_new}
            new = State(y, jnp.asarray(logdensity_fn(y)))
            log_ratio = (
                new.logdensity
                - state.logdensity
                + log_q(state.position, transforms)
                - log_q(y, transforms)
            )
            return mh_accept(k_acc, log_ratio, new, state)

        return Kernel(init, step)

    def adapt_statistic(self, info) -> jax.Array:
        return info.acceptance_rate
