"""Every kernel: the same key gives a bit-identical chain across separate compilations,
and a different key a different chain."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from ppl import mcmc


def logp(x):
    return -0.5 * jnp.sum(x**2) - 0.1 * jnp.sum(x**4)


def logq(x):
    return -0.4 * jnp.sum(x) + 0.2 * jnp.sum(x == 2)


KERNELS = {
    "random_walk": lambda: (mcmc.random_walk(logp, 0.8), jnp.zeros(2)),
    "mala": lambda: (mcmc.mala(logp, 0.3), jnp.zeros(2)),
    "hmc": lambda: (mcmc.hmc(logp, 0.2, 5), jnp.zeros(2)),
    "hmc_unadjusted": lambda: (mcmc.hmc(logp, 0.2, 5, adjusted=False), jnp.zeros(2)),
    "independence": lambda: (mcmc.independence(logp, dist.Normal(jnp.zeros(2), 1.5)), jnp.zeros(2)),
    "enum_gibbs": lambda: (mcmc.enum_gibbs(logq, jnp.arange(4)), jnp.zeros(3, jnp.int32)),
    "cycle": lambda: (mcmc.cycle(mcmc.mala(logp, 0.3), mcmc.random_walk(logp, 1.0)), jnp.zeros(2)),
    "mixture": lambda: (
        mcmc.mixture([mcmc.mala(logp, 0.3), mcmc.random_walk(logp, 1.0)], jnp.array([0.3, 0.7])),
        jnp.zeros(2),
    ),
    "repeat": lambda: (mcmc.repeat(mcmc.random_walk(logp, 0.8), 3), jnp.zeros(2)),
}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_same_key_same_chain(name, fresh_compilation):
    kernel, x0 = KERNELS[name]()

    def chain(key):
        state, _ = jax.lax.scan(
            lambda s, k: kernel.step(k, s), kernel.init(x0), jax.random.split(key, 50)
        )
        return jax.tree.leaves(state)[0]

    compiled = jax.jit(chain)
    a = np.asarray(compiled(jax.random.PRNGKey(1)))
    with fresh_compilation():  # not read from the persistent compilation cache
        b = np.asarray(jax.jit(lambda k: chain(k))(jax.random.PRNGKey(1)))  # separate compile
    c = np.asarray(compiled(jax.random.PRNGKey(2)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c), "the chain ignores its key"
