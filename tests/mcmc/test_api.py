"""ppl.mcmc's public names are documented, and the pure kernels compose with JAX transforms."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from ppl import mcmc


@pytest.mark.parametrize("name", mcmc.__all__)
def test_public_name_documented(name):
    doc = inspect.getdoc(getattr(mcmc, name))
    assert doc and doc.strip(), f"ppl.mcmc.{name} has no docstring"


def test_exported_from_ppl():
    assert ppl.mcmc is mcmc and "mcmc" in ppl.__all__


def test_kernel_under_jit_vmap_scan_and_grad():
    """A chain is a pure function: jit(vmap(scan)) runs, is reproducible, and unadjusted
    HMC is differentiable in its step size (pathwise through the leapfrog steps)."""
    logp = lambda x: -0.5 * jnp.sum(x**2)

    def chain(step_size, key, adjusted=True):
        k = mcmc.hmc(logp, step_size, 3, adjusted=adjusted)
        s, info = jax.lax.scan(
            lambda s, kk: k.step(kk, s), k.init(jnp.ones(2)), jax.random.split(key, 20)
        )
        return s.position, info

    keys = jax.random.split(jax.random.key(0), 4)
    run = jax.jit(jax.vmap(chain, in_axes=(None, 0)))
    a, info = run(0.3, keys)
    b, _ = run(0.3, keys)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 2) and info.acceptance_rate.shape == (4, 20)
    g = jax.grad(lambda e: jnp.sum(chain(e, keys[0], adjusted=False)[0] ** 2))(0.3)
    assert np.isfinite(g) and g != 0.0


def test_hmc_rejects_zero_steps():
    with pytest.raises(ValueError, match="num_steps"):
        mcmc.hmc(lambda x: -(x**2), 0.1, 0)
