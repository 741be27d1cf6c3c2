"""``EnumGibbs``: a NumPyro kernel that redraws discrete sites from their exact conditionals
(enumerating the support) and, if the model also has continuous sites, moves those with
an inner gradient or random-walk kernel in unconstrained space."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.distributions import biject_to
from numpyro.infer.util import log_density
from numpyro.util import is_prng_key

from .adapters import ModelKernel
from .base import Kernel
from .combinators import block, cycle
from .enum_gibbs import enum_gibbs


def _latent_sites(model, key, model_args, model_kwargs):
    tr = handlers.trace(handlers.seed(model, key)).get_trace(*model_args, **model_kwargs)
    return {
        name: site
        for name, site in tr.items()
        if site["type"] == "sample" and not site["is_observed"]
    }


class EnumGibbs(ModelKernel):
    """Gibbs sampling for models with discrete latent sites: each element of each discrete
    site (all of them, or only ``sites``, the others held fixed) is redrawn from
    p(z_i = v | rest) ∝ p(model) by enumerating v over the support (vectorized);
    continuous sites, if any, are then updated by ``inner`` (a :class:`ModelKernel` such
    as ``HMC(num_steps=5)``, default ``MALA()``) in unconstrained space, its step size
    adapted during warm-up.

    Example::

        def model(y):
            mu = numpyro.sample("mu", dist.Normal(0, 3).expand([2]))
            with numpyro.plate("n", len(y)):
                z = numpyro.sample("z", dist.Bernoulli(0.5))
                numpyro.sample("y", dist.Normal(mu[z], 1.0), obs=y)

        mcmc = MCMC(ppl.mcmc.EnumGibbs(model, inner=ppl.mcmc.HMC(num_steps=5)), ...)
    """

    def __init__(
        self,
        model: Callable,
        sites: Sequence[str] | None = None,
        inner: ModelKernel | None = None,
        step_size: float | None = None,
        adapt_step_size: bool = True,
    ):
        inner = inner if inner is not None else _default_inner()
        super().__init__(
            model,
            step_size=inner._step_size if step_size is None else step_size,
            adapt_step_size=adapt_step_size,
            target_accept_prob=inner.target_accept_prob,
        )
        self._sites = None if sites is None else tuple(sites)
        self._inner = inner
        self._support = {}
        self._continuous = ()
        self._transforms = {}

    def _setup(self, key, init_params, model_args, model_kwargs):
        vectorized = not is_prng_key(key)
        one_key = key[0] if vectorized else key
        latent = _latent_sites(self._model, one_key, model_args, model_kwargs)
        discrete = [n for n, s in latent.items() if s["fn"].support.is_discrete]
        if self._sites is not None:
            missing = set(self._sites) - set(discrete)
            if missing:
                raise ValueError(f"not discrete latent sites of the model: {sorted(missing)}")
            discrete = list(self._sites)
        if not discrete:
            raise ValueError("EnumGibbs needs a model with discrete latent sites")
        self._support = {
            n: jnp.ravel(latent[n]["fn"].enumerate_support(expand=False)) for n in discrete
        }
        # discrete sites outside ``sites`` are held fixed (e.g. updated by another kernel)
        self._continuous = tuple(n for n in latent if not latent[n]["fn"].support.is_discrete)
        self._transforms = {n: biject_to(latent[n]["fn"].support) for n in self._continuous}
        if not self._continuous:
            self._adapt_step_size = False

        def unconstrained_init(k):
            sites = _latent_sites(self._model, k, model_args, model_kwargs)
            return {
                n: self._transforms[n].inv(s["value"]) if n in self._transforms else s["value"]
                for n, s in sites.items()
            }

        if init_params is None:
            init_params = (jax.vmap if vectorized else lambda f: f)(unconstrained_init)(key)
        return init_params

    def _constrain(self, position):
        return {
            n: self._transforms[n](v) if n in self._transforms else v for n, v in position.items()
        }

    def _logdensity_fn(self, model_args, model_kwargs):
        def logdensity(position):
            values = self._constrain(position)
            log_jac = sum(
                jnp.sum(self._transforms[n].log_abs_det_jacobian(position[n], values[n]))
                for n in self._continuous
            )
            return log_density(self._model, model_args, model_kwargs or {}, values)[0] + log_jac

        return logdensity

    def build(self, logdensity_fn: Callable, step_size) -> Kernel:
        gibbs = enum_gibbs(logdensity_fn, self._support)
        if not self._continuous:
            return gibbs
        move = block(lambda ld: self._inner.build(ld, step_size), logdensity_fn, self._continuous)
        return cycle(gibbs, move)

    def adapt_statistic(self, info) -> jax.Array:
        if not self._continuous:
            return jnp.asarray(1.0)
        return jnp.mean(info[1].acceptance_rate)

    def gradient_evaluations(self, info):
        if not self._continuous:
            return 0
        return self._inner.gradient_evaluations(info[1])

    def divergence(self, info):
        return self._inner.divergence(info[1]) if self._continuous else None

    def postprocess_fn(self, model_args, model_kwargs):
        model_kwargs = model_kwargs or {}

        def constrain(position):
            values = self._constrain(position)
            tr = handlers.trace(
                handlers.substitute(handlers.seed(self._model, 0), data=values)
            ).get_trace(*model_args, **model_kwargs)
            deterministic = {n: s["value"] for n, s in tr.items() if s["type"] == "deterministic"}
            return {**values, **deterministic}

        return constrain


def _default_inner():
    from .adapters import MALA

    return MALA()
