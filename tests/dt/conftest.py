"""Shared helpers for the distribution-transformer tests."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from ppl.dt import GMM, DistributionTransformer


def randomize_zero_layers(net, key, scale=0.3):
    """The network with every all-zero weight/bias replaced by noise (a 'trained' stand-in)."""
    leaves, treedef = jax.tree.flatten(net, is_leaf=eqx.is_array)
    keys = jax.random.split(key, len(leaves))
    out = [
        scale * jax.random.normal(k, x.shape) if eqx.is_array(x) and not jnp.any(x) else x
        for k, x in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, out)


@pytest.fixture(scope="module")
def small_net():
    net = DistributionTransformer(
        2, 3, 4, key=jax.random.key(0), d_model=16, num_layers=2, num_heads=2
    )
    return net, randomize_zero_layers(net, jax.random.key(1))


@pytest.fixture(scope="module")
def prior2d():
    k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
    means = jax.random.normal(k1, (4, 2))
    L = jnp.tril(0.3 * jax.random.normal(k2, (4, 2, 2)), -1) + jnp.eye(2) * jnp.exp(
        0.2 * jax.random.normal(k3, (4, 1, 2))
    )
    return GMM.from_logits(jnp.array([0.1, -0.3, 0.5, 0.0]), means, L)
