"""ppl's NUTS is BlackJAX's iterative NUTS re-expressed for a small loop body: from the same
state and key it must return BlackJAX's transition (proposal, number of leapfrog steps,
acceptance statistic, divergence), on a pytree position with a diagonal mass matrix, at a
small step size (trees up to the maximum depth) and a large one (many divergences)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.flatten_util import ravel_pytree

from ppl import mcmc

SCALES = jnp.array([0.3, 1.0, 3.0, 10.0])
IMM = jnp.array([0.1, 1.0, 4.0, 50.0])


def logdensity(z):
    """A funnel-flavoured target on a dict: Gaussian scales over 1.5 decades, plus a
    log-scale coupling (so the energy error, and the divergences, depend on the state)."""
    x = jnp.concatenate([z["a"], z["b"][None]])
    return -0.5 * jnp.sum((x / SCALES) ** 2) - 0.5 * jnp.exp(-z["b"]) * z["a"][0] ** 2


START = {"a": jnp.array([0.1, -0.5, 2.0]), "b": jnp.array(0.3)}


def one_step_both(step_size, positions, keys):
    """One transition of each kernel from each (position, key)."""
    from blackjax.mcmc import hmc as bj_hmc
    from blackjax.mcmc import nuts as bj_nuts

    ours = mcmc.nuts(logdensity, step_size, IMM, max_num_doublings=6)
    theirs = bj_nuts.build_kernel()

    def both(z, key):
        state = ours.init(z)
        new, info = ours.step(key, state)
        bj_new, bj_info = theirs(key, bj_hmc.HMCState(*state), logdensity, step_size, IMM, 6)
        flat = lambda s: ravel_pytree(s.position)[0]
        return (
            (flat(new), new.logdensity, info.num_steps, info.acceptance_rate, info.is_divergent),
            (
                flat(bj_new),
                bj_new.logdensity,
                bj_info.num_integration_steps,
                bj_info.acceptance_rate,
                bj_info.is_divergent,
            ),
        )

    return jax.jit(jax.vmap(both))(positions, keys)


@pytest.mark.parametrize("step_size", [pytest.param(0.1, marks=pytest.mark.slow), 1.0])
def test_nuts_transition_is_blackjaxs(step_size):
    """200 states along a chain, one transition each from the same key: identical numbers of
    leapfrog steps and divergence flags, the same proposal and acceptance statistic."""
    kernel = mcmc.nuts(logdensity, step_size, IMM, max_num_doublings=6)
    chain = jax.jit(
        lambda key: jax.lax.scan(
            lambda s, k: (kernel.step(k, s)[0],) * 2, kernel.init(START), jax.random.split(key, 200)
        )[1]
    )
    positions = chain(jax.random.key(0)).position
    keys = jax.random.split(jax.random.key(1), 200)
    (x, ld, n, acc, div), (bx, bld, bn, bacc, bdiv) = one_step_both(step_size, positions, keys)
    np.testing.assert_array_equal(n, bn)
    np.testing.assert_array_equal(div, bdiv)
    np.testing.assert_allclose(x, bx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ld, bld, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(acc, bacc, rtol=1e-5, atol=1e-7)
    # trees of many lengths (up to the maximum at the small ε), some divergent, not all
    assert n.min() >= 1 and n.max() <= 2**6 - 1 and len(np.unique(n)) >= 5
    assert bool(div.any()) and not bool(div.all())


def normal_model():
    numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]))


@pytest.mark.slow  # ~4 s: an MCMC compile per case
@pytest.mark.parametrize("step_size, expected", [(500.0, 30), (0.05, 0)])
def test_nuts_adapter_reports_divergences_like_numpyro(step_size, expected):
    """``MCMC(ppl.mcmc.NUTS(model))`` collects ``diverging`` by default, as NumPyro's NUTS,
    and ``diagnose`` counts it: at ε = 500 on a 3-d standard normal the first leapfrog
    step's energy error is far above 1000 (below it only if all three momenta nearly
    cancel the gradient kick), at ε = 0.05 no trajectory comes near."""
    from numpyro.infer import MCMC

    kernel = mcmc.NUTS(
        normal_model,
        step_size=step_size,
        adapt_step_size=False,
        adapt_mass_matrix=False,
        max_num_doublings=4,
    )
    m = MCMC(kernel, num_warmup=0, num_samples=30, progress_bar=False)
    m.run(jax.random.key(0))
    diverging = np.asarray(m.get_extra_fields()["diverging"])
    assert diverging.dtype == bool and diverging.shape == (30,)
    assert diverging.sum() == expected
    assert mcmc.diagnose(m, warn=False).num_divergences == expected
