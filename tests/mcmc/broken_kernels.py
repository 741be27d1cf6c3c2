"""Deliberately broken kernels that the checkers must catch (shared by the MCMC tests)."""

import jax
import jax.numpy as jnp

from ppl import mcmc


def ula(logdensity_fn, step_size):
    """MALA with the MH correction dropped (the unadjusted Langevin algorithm)."""
    k = mcmc.mala(logdensity_fn, step_size)

    def step(key, state):
        x = state.position
        y = x + step_size * state.logdensity_grad
        y = y + jnp.sqrt(2 * step_size) * jax.random.normal(key, x.shape)
        return k.init(y), mcmc.Info(jnp.asarray(1.0), jnp.asarray(True))

    return mcmc.Kernel(k.init, step)


def scale_move_no_jacobian(logdensity_fn, c):
    """An involutive scale move x ↦ x·c^{±1} whose acceptance ratio omits the Jacobian
    |det J| = c^{±d} of the (non-volume-preserving) involution."""
    import numpyro.distributions as dist

    return mcmc.involutive(
        logdensity_fn,
        lambda x: dist.Bernoulli(0.5),
        lambda x, v: (x * c ** (2 * v - 1), 1 - v),
        jacobian=False,
    )
