"""DistributionTransformer: identity at init, permutation symmetries, symmetric priors, errors."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl.dt import GMM, DistributionTransformer, SymmetricPriorWarning, is_symmetric


def _data(n=7, seed=3):
    return jax.random.normal(jax.random.key(seed), (n, 3))


def test_untrained_network_returns_its_prior(small_net, prior2d):
    net, _ = small_net
    post = net(prior2d, _data())
    for a, b in zip(jax.tree.leaves(prior2d), jax.tree.leaves(post), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # (the fast suite's 6-minute budget)
def test_trained_stand_in_uses_the_data(small_net, prior2d):
    _, net = small_net
    p1, p2 = net(prior2d, _data(seed=3)), net(prior2d, _data(seed=4))
    assert float(jnp.abs(p1.means - p2.means).max()) > 1e-3
    # the number of observations matters (the sink token), even for identical observations
    one, many = net(prior2d, jnp.ones((1, 3))), net(prior2d, jnp.ones((5, 3)))
    assert float(jnp.abs(one.means - many.means).max()) > 1e-3


def test_permuting_components_permutes_the_output(small_net, prior2d):
    _, net = small_net
    perm = np.array([2, 0, 3, 1])
    permuted = jax.tree.map(lambda x: x[perm], prior2d)
    a, b = net(prior2d, _data()), net(permuted, _data())
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x[perm], y, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # (the fast suite's 6-minute budget)
def test_permuting_observations_and_padding_leaves_the_output_unchanged(small_net, prior2d):
    _, net = small_net
    data = _data(9)
    mask = jnp.arange(9) < 6
    perm = np.random.default_rng(0).permutation(9)
    a, b = net(prior2d, data, mask), net(prior2d, data[perm], mask[perm])
    c = net(prior2d, data[:6])  # padding is ignored
    for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(x, z, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # (the fast suite's 6-minute budget)
def test_vmap_over_problems_equals_a_loop(small_net, prior2d):
    _, net = small_net
    priors = jax.tree.map(lambda x: jnp.stack([x, x * 1.0]), prior2d)
    priors = GMM(priors.log_weights, priors.means.at[1].add(0.5), priors.scale_tril, validate=False)
    data = jnp.stack([_data(seed=5), _data(seed=6)])
    batched = jax.jit(jax.vmap(net))(priors, data)
    for i in range(2):
        one = net(jax.tree.map(lambda x, i=i: x[i], priors), data[i])
        np.testing.assert_allclose(batched.means[i], one.means, rtol=1e-5, atol=1e-5)


def test_symmetric_prior_is_perturbed_with_a_warning_or_refused(small_net):
    net, trained = small_net
    sym = GMM(
        jnp.log(jnp.full(4, 0.25)), jnp.zeros((4, 2)), jnp.broadcast_to(jnp.eye(2), (4, 2, 2))
    )
    assert bool(is_symmetric(sym))
    with pytest.warns(SymmetricPriorWarning, match="identical"):
        post = trained(sym, _data())
    assert float(jnp.abs(post.means[0] - post.means[1]).max()) > 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = jax.jit(lambda p, d: trained(p, d))(sym, _data())  # under jit: perturbed silently
    np.testing.assert_allclose(out.means, post.means, rtol=1e-5, atol=1e-5)
    strict = DistributionTransformer(
        2, 3, 4, key=jax.random.key(0), d_model=16, num_layers=1, num_heads=2, on_symmetric="error"
    )
    with pytest.raises(ValueError, match="identical"):
        strict(sym, _data())


def test_bad_inputs_are_named(small_net, prior2d):
    net, _ = small_net
    with pytest.raises(ValueError, match=r"data must have shape \(N, obs_dim=3\)"):
        net(prior2d, jnp.zeros((5, 2)))
    with pytest.raises(ValueError, match="mask has shape"):
        net(prior2d, jnp.zeros((5, 3)), jnp.ones(4, bool))
    with pytest.raises(ValueError, match="dimension 1"):
        net(GMM(jnp.zeros(1), jnp.zeros((1, 1)), jnp.ones((1, 1, 1))), jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match="vmap"):
        net(jax.tree.map(lambda x: jnp.stack([x, x]), prior2d), jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match="no prior encoder"):
        net(jnp.zeros(2), jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match="divisible"):
        DistributionTransformer(1, 1, 2, key=jax.random.key(0), d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="on_symmetric"):
        DistributionTransformer(1, 1, 2, key=jax.random.key(0), on_symmetric="ignore")
