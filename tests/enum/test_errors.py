"""Inconsistent programs are refused by name, at trace time (no wrong number)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import Trace_ELBO

import ppl

KEY = jax.random.PRNGKey(0)
X = jnp.array([0.3, -1.2, 2.0, 0.7])


def loss(model, guide, *args, objective=None, params=None):
    objective = objective or ppl.objectives.elbo()
    return objective.loss(KEY, params or {}, model, guide, *args)


def plated_model(x):
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def plated_guide(x):
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Normal(0.1, 1.0))


# --- model/guide consistency ------------------------------------------------------------
def test_guide_site_missing_from_model():
    def guide(x):
        plated_guide(x)
        numpyro.sample("extra", dist.Normal(0.0, 1.0))

    with pytest.raises(ppl.ModelGuideMismatch, match="'extra'.*model has no sample site"):
        loss(plated_model, guide, X)


def test_auxiliary_guide_site_is_allowed():
    def guide(x):
        u = numpyro.sample("u", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Normal(0.1 * u, 1.0))

    value = loss(plated_model, guide, X)
    assert np.isfinite(float(value))


@pytest.mark.parametrize("shape", ["scalar", "plate_of_1"])
def test_guide_shape_smaller_than_model(shape):
    def guide(x):
        if shape == "scalar":
            numpyro.sample("z", dist.Normal(0.1, 1.0))
        else:
            with numpyro.plate("data", 1):
                numpyro.sample("z", dist.Normal(0.1, 1.0))

    with pytest.raises(ppl.ModelGuideMismatch, match="shapes disagree at site 'z'.*\\(4,\\)"):
        loss(plated_model, guide, X)


def test_plate_size_differs():
    def model(x):
        with numpyro.plate("data", 4, dim=-1):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([5, 1]).to_event(0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with numpyro.plate("data", 5, dim=-2):
            numpyro.sample("z", dist.Normal(0.1, 1.0).expand([5, 4]).to_event(0))

    with pytest.raises(ppl.ModelGuideMismatch, match="site 'z'"):
        loss(model, guide, X)


def test_guide_samples_an_observed_site():
    def guide(x):
        plated_guide(x)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ppl.ModelGuideMismatch, match="'x' is observed in the model"):
        loss(plated_model, guide, X)


def test_user_objective_with_values_dict_is_checked_too():
    @ppl.objective
    def my_elbo(model, guide, *args):
        q = ppl.simulate(guide, *args)
        return ppl.density(model, q.values, *args) - q.log_prob

    def guide(x):
        numpyro.sample("z", dist.Normal(0.1, 1.0))

    with pytest.raises(ppl.ModelGuideMismatch, match="site 'z'"):
        loss(plated_model, guide, X, objective=my_elbo)


def test_consistent_guide_matches_trace_elbo():
    """The check does not change a consistent program's value (deterministic guide)."""

    def guide(x):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Delta(0.25 * x))

    ours = loss(plated_model, guide, X)
    theirs = Trace_ELBO().loss(KEY, {}, plated_model, guide, X)
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-6)


# --- enumeration errors -----------------------------------------------------------------
def test_enumerated_continuous_site():
    def model(x):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0), infer={"enumerate": "parallel"})
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ppl.EnumerationError, match="site 'z'.*Normal has no finite support"):
        loss(model, lambda x: None, X[0])


def test_enumerated_site_with_event_dims():
    """``.to_event()`` on a marked site: NumPyro's ``enumerate_support`` raises a bare
    NotImplementedError (no site, no message); ppl names the site and the remedy."""

    def model(x):
        z = numpyro.sample(
            "z", dist.Bernoulli(0.4).expand([4]).to_event(1), infer={"enumerate": "parallel"}
        )
        numpyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    with pytest.raises(ppl.EnumerationError, match=r"site 'z'.*event shape \(4,\).*plate"):
        loss(model, lambda x: None, X)


def test_enumerated_site_with_sample_shape():
    """``sample_shape=(4,)`` on a marked site: NumPyro's enum gives it one value per state
    (not per sample), so ``TraceEnum_ELBO`` returns a wrong number (3 samples: 5.063 where
    brute force gives 5.973); ppl refuses it by name (NumPyro's MCMC refuses it too)."""

    def model(x):
        z = numpyro.sample(
            "z", dist.Bernoulli(0.4), sample_shape=(4,), infer={"enumerate": "parallel"}
        )
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ppl.EnumerationError, match=r"site 'z'.*sample_shape=\(4,\).*plate"):
        loss(model, lambda x: None, X)


@pytest.mark.parametrize("expand", [False, True], ids=["vector_probs", "expand"])
def test_enumerated_site_with_unplated_batch_dims(expand):
    """Three independent Bernoullis outside any plate: NumPyro's enum gives them one shared
    value per state. ppl summed that shared value (6.99 where brute force gives 3.80);
    now refused by name (TraceEnum_ELBO, which treats the dim as a plate, gets 3.80)."""

    def model(x):
        fn = (
            dist.Bernoulli(0.3).expand([3])
            if expand
            else dist.Bernoulli(jnp.array([0.2, 0.5, 0.7]))
        )
        z = numpyro.sample("z", fn, infer={"enumerate": "parallel"})
        numpyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)

    with pytest.raises(ppl.EnumerationError, match=r"site 'z'.*batch dims \(-1,\).*plate"):
        loss(model, lambda x: None, X[:3])


def test_site_outside_a_plate_reading_its_enumerated_site():
    """A likelihood outside plate 'p' reading z from inside it: each z_i is its own
    variable, enumeration would give them one shared value (TraceEnum_ELBO: 7.06 where
    brute force gives 4.82). Refused by name; the same likelihood inside the plate runs."""

    def model(x, inside):
        with numpyro.plate("p", 3):
            z = numpyro.sample("z", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
            if inside:
                numpyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)
        if not inside:
            numpyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)

    with pytest.raises(
        ppl.EnumerationError, match=r"site 'x' reads the enumerated site 'z'.*\['p'\]"
    ):
        loss(model, lambda x, inside: None, X[:3], False)
    assert np.isfinite(float(loss(model, lambda x, inside: None, X[:3], True)))


def test_missing_discrete_site_hints_at_enumeration():
    def model(x):
        z = numpyro.sample("z", dist.Bernoulli(0.3))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ValueError, match="'z' of the model has no value.*enumerate"):
        loss(model, lambda x: None, X[0])


def test_obs_mask_site_missing_from_the_guide_names_obs_mask():
    """obs_mask makes the masked entries a latent site 'x_unobserved' (NumPyro's name);
    a hand-written guide without it is refused naming obs_mask and the observed site."""

    def model(x):
        with numpyro.plate("data", 3):
            numpyro.sample("x", dist.Normal(0.0, 1.0), obs=x, obs_mask=jnp.array([1, 0, 1]) > 0)

    with pytest.raises(
        ValueError, match="'x_unobserved' of the model has no value.*obs_mask on site 'x'"
    ):
        loss(model, lambda x: None, jnp.array([0.1, 0.2, 0.3]))


def test_global_enumerated_site_with_subsampled_children():
    """log sum_g of a subsample-scaled joint is not the scaled marginal: refused."""

    def model(x):
        g = numpyro.sample("g", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        with numpyro.plate("data", x.shape[0], subsample_size=2) as idx:
            numpyro.sample("x", dist.Normal(g * 1.0, 1.0), obs=x[idx])

    def guide(x):
        with numpyro.plate("data", x.shape[0], subsample_size=2):
            pass

    with pytest.raises(ppl.EnumerationError, match="different scales"):
        loss(model, guide, X)


def test_traced_scale_is_refused():
    def model(x, s):
        with numpyro.handlers.scale(scale=s):
            z = numpyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            numpyro.sample("x", dist.Normal(z * 1.0, 1.0), obs=x)

    with pytest.raises(ppl.EnumerationError, match="site 'z'"):
        jax.jit(lambda s: loss(model, lambda x, s: None, X[0], s))(jnp.array(0.5))


# --- an enumerated value used after the markov / scan context that enumerated it ----------
_INIT = jnp.array([0.5, 0.3, 0.2])
_TRANS = jnp.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])
_E = {"enumerate": "parallel"}


def _chain_then_y_after_scan(y, steps=3):
    from numpyro.contrib.control_flow import scan

    x0 = numpyro.sample("x0", dist.Categorical(_INIT), infer=_E)

    def step(x_prev, _):
        return numpyro.sample("x", dist.Categorical(_TRANS[x_prev]), infer=_E), None

    last, _ = scan(step, x0, None, length=steps)
    numpyro.sample("y", dist.Normal(last * 1.0, 0.5), obs=y)


def _chain_then_y_after_markov(y, steps=3, inside=False):
    from numpyro.contrib.funsor import markov

    x = numpyro.sample("x0", dist.Categorical(_INIT), infer=_E)
    for t in markov(range(steps)):
        x = numpyro.sample(f"x{t + 1}", dist.Categorical(_TRANS[x]), infer=_E)
        if inside and t == steps - 1:
            numpyro.sample("y", dist.Normal(x * 1.0, 0.5), obs=y)
    if not inside:
        numpyro.sample("y", dist.Normal(x * 1.0, 0.5), obs=y)


@pytest.mark.parametrize("model", [_chain_then_y_after_scan, _chain_then_y_after_markov])
def test_enumerated_value_read_after_its_chain_is_refused(model):
    """The carry a scan returns / the last value of a markov loop, read after the loop:
    its enumeration dim was released, and ppl summed y's log density along it (-5.217
    where log p(y) is -1.105; NumPyro's TraceEnum_ELBO fails with a reshape error)."""
    with pytest.raises(ppl.core.model_enum.EnumerationError, match="site 'y'.*outside the"):
        loss(model, lambda y: None, 1.3)


def test_value_read_inside_its_chain_is_the_marginal():
    """Control: y scored in the last markov step is exact (brute force over 3^4 paths)."""
    import itertools

    log_joint = []
    for path in itertools.product(range(3), repeat=4):
        steps = zip(path[:-1], path[1:], strict=True)
        lp = np.log(_INIT[path[0]]) + sum(np.log(_TRANS[a, b]) for a, b in steps)
        log_joint.append(lp + dist.Normal(path[-1] * 1.0, 0.5).log_prob(1.3))
    exact = jax.scipy.special.logsumexp(jnp.array(log_joint))

    def model(y):
        _chain_then_y_after_markov(y, inside=True)

    np.testing.assert_allclose(-loss(model, lambda y: None, 1.3), exact, rtol=1e-5)
