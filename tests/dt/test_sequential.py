"""filter (posterior -> next prior), linear-Gaussian prediction, GMMs inside NumPyro programs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl.dt import GMM, filter, linear_gaussian


def test_filter_equals_a_loop_feeding_posteriors_back(small_net, prior2d):
    _, net = small_net
    stream = jax.random.normal(jax.random.key(7), (3, 4, 3))
    mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], bool)
    predict = linear_gaussian(jnp.array([[0.9, 0.1], [0.0, 0.8]]), 0.3 * jnp.eye(2))
    posts = eqx.filter_jit(filter)(net, prior2d, stream, mask, predict)
    assert posts.batch_shape == (3,)
    q = prior2d
    for t in range(3):
        q = net(predict(q), stream[t], mask[t])
        np.testing.assert_allclose(posts.means[t], q.means, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(posts.log_weights[t], q.log_weights, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"data_stream must have shape \(T, N, obs_dim=3\)"):
        filter(net, prior2d, jnp.zeros((3, 4, 2)))
    with pytest.raises(ValueError, match="mask has shape"):
        filter(net, prior2d, stream, mask[:2])


def test_linear_gaussian_prediction_matches_the_kalman_formula(prior2d):
    A = jnp.array([[1.0, 0.5], [0.0, 1.0]])
    Q_tril = jnp.array([[0.2, 0.0], [0.1, 0.3]])
    out = linear_gaussian(A, Q_tril)(prior2d)
    for k in range(4):
        cov = prior2d.scale_tril[k] @ prior2d.scale_tril[k].T
        want = A @ cov @ A.T + Q_tril @ Q_tril.T
        np.testing.assert_allclose(out.scale_tril[k] @ out.scale_tril[k].T, want, rtol=1e-5)
        np.testing.assert_allclose(out.means[k], A @ prior2d.means[k], rtol=1e-6)
    np.testing.assert_array_equal(out.log_weights, prior2d.log_weights)


def test_untrained_filter_keeps_a_static_prior(small_net):
    net, _ = small_net
    prior = GMM.from_logits(
        jnp.array([0.0, 1.0, -1.0, 0.5]),
        jnp.arange(8.0).reshape(4, 2),
        jnp.broadcast_to(jnp.eye(2), (4, 2, 2)),
    )
    posts = eqx.filter_jit(filter)(net, prior, jnp.ones((2, 3, 3)))
    np.testing.assert_allclose(posts.means[-1], prior.means, rtol=1e-5)
