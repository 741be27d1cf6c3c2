"""Zoo pairs whose ELBO is random: a subsampled plate and stochastic guides.

``models.enum_zoo.STATISTICAL_ZOO`` completes the family of ``test_elbo_family.py``.
Each estimate (value and gradient of the loss) is run over many keys in one compiled
program, and its mean is compared with a reference to 4 standard errors per coordinate:

* ``mixture_subsampled`` (8 of 20 points per step, ``AutoDelta``): ppl's ``elbo()`` and
  ``TraceEnum_ELBO`` are each unbiased for the exact full-data loss (plain JAX);
* ``continuous_parent_autonormal`` (``AutoNormal`` over the 1-d parent of the enumerated
  sites): each is unbiased for the exact ELBO, by Gauss-Hermite quadrature;
* ``mixture_autonormal`` (``AutoNormal`` over a simplex and three locations): ppl's mean
  equals ``TraceEnum_ELBO``'s to 4 combined standard errors.

Power: the same compiled program also runs ppl on a model with the planted bug each test
is for (the minibatch not scaled up by N/M; the enumerated sites' continuous parent not
differentiated), and that estimate must be rejected beyond 8 SE.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import TraceEnum_ELBO, autoguide

import ppl
from models import enum_zoo
from models.enum_zoo import STATISTICAL_ZOO, SUBSAMPLE
from ppl.validate import estimator_stats

_spec = importlib.util.spec_from_file_location(
    "enum_reference", Path(__file__).with_name("reference.py")
)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

CASES = {c.name: c for c in STATISTICAL_ZOO}
NUM_KEYS = 2000
E = {"enumerate": "parallel"}

PARAMS = {  # constrained values, away from any symmetry
    "mixture_subsampled": {
        "w_auto_loc": jnp.array([0.5, 0.3, 0.2]),
        "locs_auto_loc": jnp.array([-1.5, 0.3, 2.2]),
    },
    "mixture_autonormal": {
        "w_auto_loc": jnp.array([0.3, -0.2]),
        "w_auto_scale": jnp.array([0.4, 0.6]),
        "locs_auto_loc": jnp.array([-1.5, 0.3, 2.2]),
        "locs_auto_scale": jnp.array([0.5, 0.3, 0.7]),
    },
    "continuous_parent_autonormal": {
        "mu_auto_loc": jnp.array(0.4),
        "mu_auto_scale": jnp.array(0.7),
    },
}


# --- planted bugs, as models ---------------------------------------------------------
def unscaled_minibatch(x):
    """The bug: the minibatch's log likelihood is not scaled up by N / M."""
    w = numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))
    locs = numpyro.sample("locs", dist.Normal(0.0, 3.0).expand([3]).to_event(1))
    with numpyro.plate("data", x.shape[0], subsample_size=SUBSAMPLE) as idx:
        with numpyro.handlers.scale(scale=SUBSAMPLE / x.shape[0]):
            z = numpyro.sample("z", dist.Categorical(w), infer={**E})
            numpyro.sample("x", dist.Normal(locs[z], 1.0), obs=x[idx])


def parent_not_differentiated(x):
    """The bug: the enumerated factors do not pass the gradient to their parent ``mu``."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    fixed = jax.lax.stop_gradient(mu)
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Bernoulli(logits=fixed), infer={**E})
        numpyro.sample("x", dist.Normal(jnp.where(z == 1, fixed, -fixed), 1.0), obs=x)


BUGGY = {
    "mixture_subsampled": unscaled_minibatch,
    "continuous_parent_autonormal": parent_not_differentiated,
}


# --- exact references ----------------------------------------------------------------
def _normal_lp(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - jnp.log(scale) - 0.5 * jnp.log(2 * jnp.pi)


def full_data_mixture_loss(params, x):
    """-log p(x_1..N, w, locs) of ``mixture`` with every z summed out (Dirichlet(1) = log 2)."""
    w, locs = params["w_auto_loc"], params["locs_auto_loc"]
    prior = jnp.log(2.0) + jnp.sum(_normal_lp(locs, 0.0, 3.0))
    per_point = jax.nn.logsumexp(jnp.log(w) + _normal_lp(x[:, None], locs, 1.0), -1)
    return -(prior + jnp.sum(per_point))


def continuous_parent_loss(params, x, num_nodes):
    """-ELBO of ``continuous_parent`` under q(mu) = N(loc, scale): E_q[log p(x, mu)] + H[q]."""
    loc, scale = params["mu_auto_loc"], params["mu_auto_scale"]
    lj = ref.continuous_parent_log_joint(x)
    entropy = 0.5 * jnp.log(2 * jnp.pi * jnp.e) + jnp.log(scale)
    return -(ref.gaussian_expectation(lj, loc, scale, num_nodes) + entropy)


# --- the shared harness --------------------------------------------------------------
def _guide(case, model):
    return ref.continuous_guide(model, getattr(autoguide, case.guide))


def _stats(case, with_bug):
    """Means, SEs and samples of (ppl, TraceEnum[, ppl on the buggy model]) value-and-grads
    over ``NUM_KEYS`` keys: one compilation."""
    params, args = PARAMS[case.name], case.args
    programs = [(ppl.objectives.elbo(), case.model), (TraceEnum_ELBO(), case.model)]
    if with_bug:
        programs.append((ppl.objectives.elbo(), BUGGY[case.name]))
    guides = [_guide(case, model) for _, model in programs]

    def estimator(key):
        return [
            jax.value_and_grad(lambda p, o=o, m=m, g=g: o.loss(key, p, m, g, *args))(params)
            for (o, m), g in zip(programs, guides, strict=True)
        ]

    mean, se, samples = estimator_stats(estimator, jax.random.PRNGKey(0), NUM_KEYS)
    size = mean.size // len(programs)
    split = [slice(i * size, (i + 1) * size) for i in range(len(programs))]
    return [(mean[s], se[s], samples[:, s]) for s in split]


def _flat(value_and_grad):
    leaves = jax.tree.leaves(value_and_grad)
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in leaves])


def _z(mean, se, exact):
    return (mean - exact) / se


def test_subsampled_mixture_is_unbiased_for_the_full_data_loss():
    case = CASES["mixture_subsampled"]
    loss_and_grad = jax.jit(jax.value_and_grad(full_data_mixture_loss))
    exact = _flat(loss_and_grad(PARAMS[case.name], *case.args))
    (ours, se_ours, _), (te, se_te, _), (bug, se_bug, _) = _stats(case, with_bug=True)
    assert np.all(se_ours > 0)  # a minibatch estimate really varies
    z_ours, z_te = _z(ours, se_ours, exact), _z(te, se_te, exact)
    assert np.max(np.abs(z_ours)) < 4, z_ours
    assert np.max(np.abs(z_te)) < 4, z_te
    z_bug = _z(bug, se_bug, exact)
    assert np.max(np.abs(z_bug)) > 8, z_bug


def test_stochastic_guide_on_continuous_parent_equals_quadrature():
    case = CASES["continuous_parent_autonormal"]
    params, (x,) = PARAMS[case.name], case.args
    with jax.enable_x64(True):
        p64 = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
        x64 = jnp.asarray(x, jnp.float64)
        loss_and_grad = jax.jit(jax.value_and_grad(continuous_parent_loss), static_argnums=2)
        exact = _flat(loss_and_grad(p64, x64, 1001))
        coarse = _flat(loss_and_grad(p64, x64, 501))
    np.testing.assert_allclose(coarse, exact, rtol=1e-10)  # the quadrature has converged
    (ours, se_ours, _), (te, se_te, _), (bug, se_bug, _) = _stats(case, with_bug=True)
    assert np.all(se_ours > 0)
    z_ours, z_te = _z(ours, se_ours, exact), _z(te, se_te, exact)
    assert np.max(np.abs(z_ours)) < 4, z_ours
    assert np.max(np.abs(z_te)) < 4, z_te
    z_bug = _z(bug, se_bug, exact)
    assert np.max(np.abs(z_bug)) > 8, z_bug


@pytest.mark.slow
def test_stochastic_guide_on_mixture_equals_trace_enum():
    (ours, se_ours, _), (te, se_te, _) = _stats(CASES["mixture_autonormal"], with_bug=False)
    assert np.all(se_ours > 0)
    z = (ours - te) / np.hypot(se_ours, se_te)
    assert np.max(np.abs(z)) < 4, z


def test_the_zoo_has_25_pairs():
    assert len(enum_zoo.ZOO) + len(STATISTICAL_ZOO) >= 25
