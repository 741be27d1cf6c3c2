"""Gradient evaluations per iteration, NumPyro's ``num_steps`` extra field, for ppl's kernels
inside ``numpyro.infer.MCMC``: NUTS's count against an independent count of the gradient
evaluations the compiled program runs; the fixed counts of HMC, MALA and random walk; the
jittered count ChEES shares across chains."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from ppl import mcmc
from ppl.mcmc.chees import _num_steps, halton
from tests.mcmc.runs import run_mcmc


def run(kernel, num_warmup=0, num_samples=40, num_chains=1, **kwargs):
    m = run_mcmc(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        extra_fields=("num_steps",),
        **kwargs,
    )
    return m, np.asarray(m.get_extra_fields(group_by_chain=True)["num_steps"])


def test_nuts_counts_every_gradient_evaluation():
    """Each evaluation of the potential (hence of its gradient: value_and_grad evaluates it
    once) is counted on the host: one at ``init``, then exactly the reported steps."""
    calls = []

    def potential(z):
        jax.debug.callback(lambda: calls.append(1))
        return 0.5 * jnp.sum(z["x"] ** 2 / jnp.array([1.0, 9.0]))

    kernel = mcmc.NUTS(potential_fn=potential, step_size=0.4, max_num_doublings=4)
    _, num_steps = run(kernel, init_params={"x": jnp.ones(2)})
    jax.effects_barrier()
    assert num_steps.dtype == np.int32 and num_steps.shape == (1, 40)
    assert len(calls) == 1 + num_steps.sum()
    assert num_steps.min() >= 1 and num_steps.max() <= 2**4 - 1
    assert len(np.unique(num_steps)) > 1  # the path length adapts


def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    s = numpyro.sample("s", dist.HalfNormal(2.0))
    numpyro.sample("y", dist.Normal(mu, s), obs=y)


Y = jnp.array([1.0, 2.0, 0.5, 3.0])


@pytest.mark.slow
def test_fixed_counts():
    """HMC takes its ``num_steps`` leapfrog steps (ε jittered, not the count), MALA one
    gradient, the random walk none; per chain, warm-up draws not collected."""
    for kernel, expected in [
        (mcmc.HMC(model, num_steps=3), 3),
        (mcmc.MALA(model), 1),
        (mcmc.RandomWalk(model), 0),
    ]:
        _, num_steps = run(kernel, num_warmup=10, num_samples=5, num_chains=2, y=Y)
        assert num_steps.shape == (2, 5)
        np.testing.assert_array_equal(num_steps, expected)


@pytest.mark.slow
def test_chees_counts_the_shared_jittered_steps():
    """Every chain takes ⌈halton(t)·T/ε⌉ steps at iteration t (after warm-up: the final ε, T)."""
    m, num_steps = run(mcmc.ChEES(model), num_warmup=20, num_samples=10, num_chains=4, y=Y)
    eps, length, _ = m.last_state.adapt.parameters
    t = jnp.arange(20, 30)
    expected = np.asarray(jax.vmap(lambda i: _num_steps(halton(i), eps, length))(t))
    assert num_steps.shape == (4, 10) and expected.min() >= 1
    np.testing.assert_array_equal(num_steps, np.broadcast_to(expected, (4, 10)))
