"""GMM: round trips, densities against hand-computed formulas, bijections, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.handlers import seed, trace

from ppl.dt import GMM, as_transform, constrained, token_size


def _gmm2d():
    w = np.array([0.2, 0.5, 0.3])
    means = np.array([[0.0, 1.0], [-1.0, 0.5], [2.0, -1.0]])
    L = np.array([[[1.0, 0.0], [0.3, 0.7]], [[0.5, 0.0], [-0.2, 1.2]], [[2.0, 0.0], [0.0, 0.4]]])
    return w, means, L, GMM(np.log(w), means, L)


def test_log_prob_matches_hand_computed_mixture_density():
    w, means, L, g = _gmm2d()
    x = np.array([0.3, -0.4])
    dens = 0.0
    for k in range(3):
        cov = L[k] @ L[k].T
        r = x - means[k]
        quad = r @ np.linalg.solve(cov, r)
        dens += w[k] * np.exp(-0.5 * quad) / (2 * np.pi * np.sqrt(np.linalg.det(cov)))
    np.testing.assert_allclose(g.log_prob(x), np.log(dens), rtol=1e-5)
    np.testing.assert_allclose(g.to_distribution().log_prob(x), np.log(dens), rtol=1e-5)


def test_distribution_and_token_round_trips():
    _, _, _, g = _gmm2d()
    back = GMM.from_distribution(g.to_distribution())
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(back), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    t = g.tokens()
    assert t.shape == (3, token_size(2)) == (3, 6)
    back = GMM.from_tokens(t, 2)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(back), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    mvn = dist.MultivariateNormal(jnp.ones(2), scale_tril=jnp.eye(2) * 2)
    one = GMM.from_distribution(mvn)
    np.testing.assert_allclose(one.log_prob(jnp.zeros(2)), mvn.log_prob(jnp.zeros(2)), rtol=1e-6)


def test_moments_match_formulas():
    w, means, L, g = _gmm2d()
    m = (w[:, None] * means).sum(0)
    second = sum(w[k] * (L[k] @ L[k].T + np.outer(means[k], means[k])) for k in range(3))
    np.testing.assert_allclose(g.mean(), m, rtol=1e-5)
    np.testing.assert_allclose(g.covariance(), second - np.outer(m, m), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # (the fast suite's 6-minute budget)
def test_log_bijection_density_is_the_change_of_variables_and_integrates_to_one():
    g = GMM.from_logits(
        jnp.array([0.0, 0.7]), jnp.array([[-0.5], [1.0]]), jnp.array([[[0.4]], [[0.8]]])
    )
    p = constrained(g, "log")
    x = jnp.geomspace(1e-5, 500.0, 20_001)
    lp = p.log_prob(x[:, None])
    np.testing.assert_allclose(lp, g.log_prob(jnp.log(x)[:, None]) - jnp.log(x), rtol=1e-5)
    np.testing.assert_allclose(jnp.trapezoid(jnp.exp(lp), x), 1.0, atol=1e-3)
    one = GMM(jnp.zeros(1), jnp.array([[0.3]]), jnp.array([[[0.6]]]))
    np.testing.assert_allclose(
        constrained(one, "log").log_prob(jnp.array([[2.5]])),
        dist.LogNormal(0.3, 0.6).log_prob(2.5),
        rtol=1e-5,
    )


def test_logit_bijection_density_integrates_to_one():
    g = GMM.from_logits(
        jnp.array([0.0, 0.0]), jnp.array([[-1.0], [1.5]]), jnp.array([[[0.5]], [[0.3]]])
    )
    x = jax.nn.sigmoid(jnp.linspace(-14.0, 14.0, 20_001))
    lp = constrained(g, "logit").log_prob(x[:, None])
    z = jnp.log(x) - jnp.log1p(-x)
    np.testing.assert_allclose(
        lp, g.log_prob(z[:, None]) - jnp.log(x * (1 - x)), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(jnp.trapezoid(jnp.exp(lp), x), 1.0, atol=1e-3)
    assert isinstance(as_transform(dist.constraints.positive), dist.transforms.ExpTransform)


def test_guide_and_prior_inside_numpyro_programs():
    _, _, _, g = _gmm2d()

    def model():
        return numpyro.sample("z", g.to_distribution())

    tr = trace(seed(model, 0)).get_trace()
    np.testing.assert_allclose(
        tr["z"]["fn"].log_prob(tr["z"]["value"]), g.log_prob(tr["z"]["value"])
    )
    one = GMM(jnp.zeros(1), jnp.array([[0.3]]), jnp.array([[[0.6]]]))
    tr = trace(seed(one.guide("s", "log", scalar=False), 1)).get_trace()
    v = tr["s"]["value"]
    assert v.shape == (1,) and float(v[0]) > 0
    np.testing.assert_allclose(
        tr["s"]["fn"].log_prob(v), dist.LogNormal(0.3, 0.6).log_prob(v[0]), rtol=1e-5
    )

    # default for a 1-d GMM: a scalar site, usable as the guide of a model with a scalar latent
    def model():
        s = numpyro.sample("s", dist.InverseGamma(3.0, 2.0))
        numpyro.sample("x", dist.Normal(0.0, jnp.sqrt(s)), obs=0.5)

    guide = one.guide("s", "log")
    svi = numpyro.infer.SVI(model, guide, numpyro.optim.Adam(1e-2), numpyro.infer.Trace_ELBO())
    loss = svi.evaluate(svi.init(jax.random.key(0)))
    assert np.isfinite(loss)
    v = trace(seed(guide, 2)).get_trace()["s"]["value"]
    assert v.shape == ()


def test_batched_gmm_under_vmap_skips_value_checks():
    _, means, L, g = _gmm2d()
    make = jax.vmap(lambda lw: GMM(lw, means, L))
    gb = make(jnp.stack([g.log_weights] * 4))
    assert gb.batch_shape == (4,) and gb.log_prob(jnp.zeros(2)).shape == (4,)


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.log([0.5, 0.6]), np.zeros((2, 1)), np.ones((2, 1, 1))), "not normalized"),
        ((np.array([np.nan, 0.0]), np.zeros((2, 1)), np.ones((2, 1, 1))), "NaN"),
        (
            (np.log([0.5, 0.5]), np.zeros((2, 2)), np.array([[[1.0, 0.5], [0.0, 1.0]]] * 2)),
            "lower-triangular",
        ),
        (
            (np.log([0.5, 0.5]), np.zeros((2, 1)), np.array([[[1.0]], [[-1.0]]])),
            "positive diagonal",
        ),
        ((np.log([0.5, 0.5]), np.zeros((3, 1)), np.ones((3, 1, 1))), "log_weights has shape"),
        ((np.log([0.5, 0.5]), np.zeros((2, 2)), np.ones((2, 1, 1))), "scale_tril has shape"),
        ((np.log([1.0]), np.zeros(1), np.ones((1, 1))), "means must have shape"),
        ((np.log([0.5, 0.5]), np.array([[np.inf], [0.0]]), np.ones((2, 1, 1))), "means contain"),
    ],
)
def test_bad_gmms_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        GMM(*args)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="tokens have length 4"):
        GMM.from_tokens(jnp.zeros((2, 4)), 2)
    with pytest.raises(TypeError, match="MultivariateNormal"):
        GMM.from_distribution(dist.Normal(0.0, 1.0))
    with pytest.raises(TypeError, match="components must be MultivariateNormal"):
        GMM.from_distribution(
            dist.MixtureSameFamily(
                dist.Categorical(logits=jnp.zeros(2)), dist.Normal(jnp.zeros(2), 1.0)
            )
        )
    with pytest.raises(ValueError, match="unknown transform"):
        as_transform("exp")
    with pytest.raises(ValueError, match="logits contain NaN"):
        GMM.from_logits(jnp.array([jnp.nan, 0.0]), jnp.zeros((2, 1)), jnp.ones((2, 1, 1)))


def test_marginal_is_the_mixture_of_component_marginals():
    w, means, L, g = _gmm2d()
    sd = np.sqrt((L @ np.swapaxes(L, -1, -2))[:, [0, 1], [0, 1]])  # (K, D) marginal sds
    x = np.linspace(-4.0, 4.0, 7)
    other = jnp.linspace(-12.0, 12.0, 4001)

    @jax.jit
    def check(g):
        out = []
        for j in (0, 1):
            m = g.marginal(j)
            pts = jnp.stack([other, jnp.full_like(other, 0.3)][:: 1 if j == 1 else -1], -1)
            joint = jnp.trapezoid(jnp.exp(g.log_prob(pts)), other)  # ∫ q(x) dx_other
            out.append((m.log_prob(x[:, None]), jnp.exp(m.log_prob(jnp.array([0.3]))), joint))
        return out

    for j, (lp, at, joint) in enumerate(check(g)):
        dens = (w * np.exp(-0.5 * ((x[:, None] - means[:, j]) / sd[:, j]) ** 2) / sd[:, j]).sum(-1)
        np.testing.assert_allclose(lp, np.log(dens / np.sqrt(2 * np.pi)), rtol=1e-5)
        np.testing.assert_allclose(at, joint, rtol=1e-4)
    m10 = g.marginal([1, 0])
    assert m10.dim == 2 and m10.num_components == 3
    np.testing.assert_allclose(m10.covariance(), g.covariance()[::-1, ::-1], 1e-5)
    gb = jax.vmap(lambda lw: GMM(lw, means, L))(jnp.stack([g.log_weights] * 4))
    assert gb.marginal(1).batch_shape == (4,) and gb.marginal(1).means.shape == (4, 3, 1)
