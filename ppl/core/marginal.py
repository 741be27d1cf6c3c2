"""Density estimation constructs: ``marginal`` (importance-sampled marginals) and
``normalize`` (sampling-importance-resampling).

Both are *samplers with estimated densities*: ``ppl.simulate(m, *args)`` returns a
:class:`~ppl.Simulation` whose ``log_prob`` is an estimate of the log density of the
returned values, and they compose with the strategies (their sample sites are random
choices of the enclosing expectation) and with each other.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpyro
from jax import lax

from .arguments import count
from .constructs import Simulation, density, particles, simulate


def _callables(who, **fns):
    for name, fn in fns.items():
        if not callable(fn):
            raise TypeError(f"{who}: {name} must be a program (callable), got {type(fn).__name__}")


def _log_mean_exp(x):
    return jax.nn.logsumexp(x, axis=0) - jnp.log(x.shape[0])


class Marginal:
    """q(keep) = integral of q(keep, aux) d aux, its density estimated by importance sampling.

    ``simulate``: (aux_0, keep) ~ q, aux_1..M ~ reverse(aux | keep); log q^(keep) =
    log (1/(M+1)) sum_m q(keep, aux_m) / r(aux_m | keep). E[log q^] >= log q(keep), so an
    ELBO with -log q^ stays a lower bound (HVI for M = 0, IWHVI for M > 0; Sobolev &
    Vetrov 2019). ``reverse(keep_values, *args, **kwargs)`` is a NumPyro program over the
    auxiliary sites.
    """

    def __init__(self, program: Callable, keep: Sequence[str], reverse: Callable, num_samples=0):
        if isinstance(keep, str):
            keep = (keep,)
        num_samples = count(num_samples, "num_samples", "ppl.marginal", minimum=0)
        _callables("ppl.marginal", program=program, reverse=reverse)
        self.program, self.keep, self.reverse, self.num_samples = (
            program,
            tuple(keep),
            reverse,
            num_samples,
        )

    def simulate(self, *args, **kwargs) -> Simulation:
        q = simulate(self.program, *args, **kwargs)
        missing = [k for k in self.keep if k not in q.values]
        if missing:
            raise ValueError(f"ppl.marginal: the program has no sample sites {missing}")
        kept = {k: q.values[k] for k in self.keep}
        aux = {k: v for k, v in q.values.items() if k not in self.keep}
        first = q.log_prob - density(self.reverse, aux, kept, *args, **kwargs)
        if self.num_samples == 0:
            return Simulation(kept, first, q.trace, first)

        def one():
            r = simulate(self.reverse, kept, *args, **kwargs)
            joint = density(self.program, {**kept, **r.values}, *args, **kwargs)
            return joint - r.log_prob

        rest = particles(one, self.num_samples)()
        log_q = _log_mean_exp(jnp.concatenate([first[None], rest]))
        return Simulation(kept, log_q, q.trace, log_q)


def marginal(program: Callable, keep, reverse: Callable, num_samples: int = 0) -> Marginal:
    """``ppl.marginal(guide, keep=["z"], reverse=r, num_samples=M)``; see :class:`Marginal`."""
    return Marginal(program, keep, reverse, num_samples)


class Normalize:
    """Sampling-importance-resampling from an unnormalized ``target`` with ``proposal``.

    ``simulate``: z_1..K ~ proposal, w_k = p~(z_k) / q(z_k), Z^ = mean w (an unbiased
    estimate of the normalizing constant, also in ``log_normalizer``); returns z_j with
    j ~ Categorical(w) and ``log_prob`` = log p~(z_j) - log Z^, whose exponential's
    reciprocal is unbiased for Z / p~(z_j) averaged over the draw. Resampling itself is
    not differentiated: gradients flow through the particles and their weights.
    ``target(*args)`` is a NumPyro model whose latent sites are the proposal's.
    """

    def __init__(self, target: Callable, proposal: Callable, num_particles: int):
        num_particles = count(num_particles, "num_particles", "ppl.normalize")
        _callables("ppl.normalize", target=target)
        if not (callable(proposal) or hasattr(proposal, "simulate")):
            raise TypeError(
                "ppl.normalize: proposal must be a program or a sampler, got "
                f"{type(proposal).__name__}"
            )
        self.target, self.proposal, self.num_particles = target, proposal, num_particles

    def _particles(self, args, kwargs):
        def one():
            q = simulate(self.proposal, *args, **kwargs)
            return q.values, density(self.target, q.values, *args, **kwargs) - q.log_prob

        return particles(one, self.num_particles)()

    def simulate(self, *args, **kwargs) -> Simulation:
        values, log_w = self._particles(args, kwargs)
        log_z = _log_mean_exp(log_w)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Cannot generate JAX PRNG key")
            key = numpyro.prng_key()
        if key is None:
            raise RuntimeError("ppl.normalize needs a random key (inside ppl.expectation or seed)")
        j = jax.random.categorical(key, lax.stop_gradient(log_w))
        chosen = jax.tree.map(lambda v: v[j], values)
        log_prob = density(self.target, chosen, *args, **kwargs) - log_z
        return Simulation(chosen, log_prob, None, log_prob)

    def log_normalizer(self, *args, **kwargs):
        """log Z^, with E[Z^] = Z (the normalizing constant of the target)."""
        _, log_w = self._particles(args, kwargs)
        return _log_mean_exp(log_w)


def normalize(target: Callable, proposal: Callable, num_particles: int) -> Normalize:
    """``ppl.normalize(target, proposal, K)``; see :class:`Normalize`."""
    return Normalize(target, proposal, num_particles)
