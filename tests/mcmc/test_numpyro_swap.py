"""Swapping NumPyro's HMC / NUTS for ppl's: NumPyro's keywords and extra-field names work,
what ppl cannot honour is refused by name."""

import pickle

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC
from numpyro.infer.util import potential_energy

from ppl import mcmc

Y = jnp.array([0.3, -1.2, 2.1, 0.8])


def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def run(kernel, extra_fields=(), num_warmup=100, num_samples=50, seed=0):
    m = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, progress_bar=False)
    m.run(jax.random.PRNGKey(seed), Y, extra_fields=extra_fields)
    return m


def test_numpyro_extra_field_names():
    """potential_energy / z_grad are −log p and its gradient at each draw (checked against
    NumPyro's potential_energy), the adapted step size is fixed after warm-up, acceptance
    probabilities are probabilities, num_steps and diverging are collected."""
    fields = (
        "potential_energy",
        "z_grad",
        "accept_prob",
        "mean_accept_prob",
        "num_steps",
        "diverging",
        "adapt_state.step_size",
    )
    m = run(mcmc.NUTS(model), extra_fields=fields)
    extra, mu = m.get_extra_fields(), m.get_samples()["mu"]
    pe = jax.vmap(lambda v: potential_energy(model, (Y,), {}, {"mu": v}))(mu)
    grad = jax.vmap(jax.grad(lambda v: potential_energy(model, (Y,), {}, {"mu": v})))(mu)
    np.testing.assert_allclose(extra["potential_energy"], pe, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(extra["z_grad"]["mu"], grad, rtol=1e-4, atol=1e-4)
    step = np.asarray(extra["adapt_state.step_size"])
    assert step.shape == (50,) and np.all(step == step[0]) and step[0] > 0
    accept = np.asarray(extra["accept_prob"])
    assert np.all((accept >= 0) & (accept <= 1)) and np.ptp(accept) > 0
    assert np.all(np.asarray(extra["num_steps"]) >= 1)
    assert extra["diverging"].dtype == bool


def test_unknown_extra_field_is_named():
    with pytest.raises(ValueError, match="no field 'energy'"):
        run(mcmc.HMC(model, num_steps=3), extra_fields=("energy",), num_warmup=5, num_samples=5)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: mcmc.NUTS(model, dense_mass="mu"), "dense_mass"),
        (lambda: mcmc.HMC(model, dense_mass=[("mu",), ("mu",)]), "more than one block"),
        (lambda: mcmc.NUTS(model, kinetic_fn=lambda m, r: 0.0), "kinetic_fn"),
        (lambda: mcmc.NUTS(model, forward_mode_differentiation=True), "forward_mode"),
        (lambda: mcmc.NUTS(model, max_tree_depth=(8, 10, 12)), "pair"),
        (lambda: mcmc.NUTS(model, max_tree_depth=(0, 10)), r"max_tree_depth\[0\]"),
        (lambda: mcmc.NUTS(model, max_tree_depth=4, max_num_doublings=6), "same bound"),
        (lambda: mcmc.HMC(model, trajectory_length=0.0), "trajectory_length"),
        (lambda: mcmc.HMC(model, trajectory_length=-1.0), "trajectory_length"),
        (lambda: mcmc.HMC(model, trajectory_length="2pi"), "trajectory_length"),
        (lambda: mcmc.hmc(lambda x: -x @ x, 0.1, 5, trajectory_length=1.0), "one of"),
        (lambda: mcmc.hmc(lambda x: -x @ x, 0.1), "one of"),
    ],
)
def test_numpyro_options_ppl_cannot_honour_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_pure_hmc_trajectory_length_takes_ceil_steps_of_equal_length():
    """trajectory_length τ at ε: ⌈τ/ε⌉ = 4 steps of τ/4, the fixed-count kernel's draw."""
    ld = lambda x: -0.5 * jnp.sum(x**2 / jnp.array([1.0, 4.0]))
    key, x0 = jax.random.key(3), jnp.array([0.5, -1.0])
    by_length = mcmc.hmc(ld, 0.4, trajectory_length=1.3)
    by_count = mcmc.hmc(ld, 1.3 / 4, 4)
    state, info = jax.jit(by_length.step)(key, by_length.init(x0))
    expected, _ = jax.jit(by_count.step)(key, by_count.init(x0))
    np.testing.assert_allclose(state.position, expected.position, rtol=1e-6)
    assert int(info.num_steps) == 4


def test_hmc_trajectory_length_alone_is_numpyros_adaptive_step_count():
    """NumPyro's ``HMC(model, trajectory_length=τ)``: every iteration takes ⌈τ/ε⌉ steps of
    the adapted ε (reported as num_steps), and the posterior is the exact one."""
    tau = 2 * np.pi  # NumPyro's default
    m = MCMC(
        mcmc.HMC(model, trajectory_length=tau, step_size_jitter=0.0),
        num_warmup=200,
        num_samples=1000,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    m.run(jax.random.PRNGKey(0), Y, extra_fields=("num_steps", "adapt_state.step_size"))
    extra = m.get_extra_fields(group_by_chain=True)
    step = np.asarray(extra["adapt_state.step_size"], np.float64)
    np.testing.assert_array_equal(extra["num_steps"], np.ceil(tau / step))
    counts = np.asarray(extra["num_steps"])
    assert np.all((counts >= 2) & (counts != 10)), np.unique(counts)  # followed ε, not 10
    mu = np.asarray(m.get_samples(group_by_chain=True)["mu"], np.float64)
    precision = 1 / 4 + len(Y)  # N(0, 2²) prior, unit-variance observations
    exact_mean, exact_sd = float(Y.sum()) / precision, precision**-0.5
    z_mean = (mu.mean() - exact_mean) / float(az.mcse(mu))
    z_sd = (mu.std(ddof=1) - exact_sd) / float(az.mcse(mu, method="sd"))
    assert abs(z_mean) < 4 and abs(z_sd) < 4, (z_mean, z_sd)


def test_hmc_num_steps_and_trajectory_length_fix_the_step_size_as_numpyro():
    """Both given: ε = τ / num_steps, not adapted (NumPyro's rule, and its warning)."""
    with pytest.warns(UserWarning, match="not adapted"):
        kernel = mcmc.HMC(model, num_steps=4, trajectory_length=1.2)
    m = run(kernel, extra_fields=("num_steps", "adapt_state.step_size"))
    np.testing.assert_allclose(m.get_extra_fields()["adapt_state.step_size"], 0.3, rtol=1e-6)
    assert np.all(np.asarray(m.get_extra_fields()["num_steps"]) == 4)


def test_misspelt_keyword_is_named():
    with pytest.raises(TypeError, match="max_tree_dept"):
        mcmc.NUTS(model, max_tree_dept=5)


def test_numpyro_defaults_are_accepted():
    """The keywords a NumPyro call passes with their defaults build a kernel."""
    kw = dict(
        kinetic_fn=None,
        dense_mass=False,
        forward_mode_differentiation=False,
        find_heuristic_step_size=True,
        regularize_mass_matrix=True,
    )
    mcmc.NUTS(model, max_tree_depth=10, trajectory_length=None, **kw)
    with pytest.warns(UserWarning, match="not adapted"):  # NumPyro warns the same
        mcmc.HMC(model, num_steps=5, trajectory_length=6.28, **kw)
    # and NumPyro's dense / structured mass matrices (tests/mcmc/test_dense_mass.py)
    mcmc.NUTS(model, **{**kw, "dense_mass": True})
    mcmc.HMC(model, num_steps=5, **{**kw, "dense_mass": [("mu",)]})


@pytest.mark.slow
def test_max_tree_depth_is_max_num_doublings():
    """Same key: max_tree_depth=2 gives max_num_doublings=2's draws, at most 3 steps each."""
    a = run(mcmc.NUTS(model, max_tree_depth=2), extra_fields=("num_steps",))
    b = run(mcmc.NUTS(model, max_num_doublings=2))
    np.testing.assert_array_equal(a.get_samples()["mu"], b.get_samples()["mu"])
    assert int(np.max(a.get_extra_fields()["num_steps"])) <= 3


def test_max_tree_depth_pair_bounds_warmup_then_sampling():
    """NumPyro's ``max_tree_depth=(d1, d2)``: at most 2^d1 - 1 leapfrog steps per warm-up
    iteration (here 1), at most 2^d2 - 1 after it, and longer trajectories do occur then."""
    m = MCMC(mcmc.NUTS(model, max_tree_depth=(1, 3)), num_warmup=30, num_samples=30)
    m._progress_bar = False
    m.warmup(jax.random.PRNGKey(0), Y, extra_fields=("num_steps",), collect_warmup=True)
    warm = np.asarray(m.get_extra_fields()["num_steps"])
    m.run(jax.random.PRNGKey(1), Y, extra_fields=("num_steps",))
    after = np.asarray(m.get_extra_fields()["num_steps"])
    assert warm.shape == after.shape == (30,)
    assert warm.max() == 1 and 1 < after.max() <= 7


@pytest.mark.slow
def test_regularize_mass_matrix_reaches_the_adapter():
    """Stan's shrinkage (n/(n+5)) var + 1e-3 (5/(n+5)) is applied only when asked."""
    inv = {}
    for flag in (True, False):
        m = run(mcmc.NUTS(model, regularize_mass_matrix=flag), num_warmup=200)
        inv[flag] = float(m.last_state.adapt.inverse_mass_matrix[0])
    assert inv[True] != inv[False]


def test_mcmc_pickles_and_continues():
    """``pickle.dumps(mcmc)`` works as with NumPyro's NUTS (vectorized chains included):
    the draws survive the round trip and the unpickled run continues from
    ``post_warmup_state``."""
    m = MCMC(
        mcmc.NUTS(model),
        num_warmup=10,
        num_samples=5,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    m.run(jax.random.PRNGKey(0), Y)
    m2 = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(m2.get_samples()["mu"], m.get_samples()["mu"])
    m2.post_warmup_state = m2.last_state
    m2.run(jax.random.PRNGKey(1), Y)
    mu = m2.get_samples(group_by_chain=True)["mu"]
    assert mu.shape == (2, 5) and np.all(np.isfinite(mu))


def test_numpyros_reported_inverse_mass_matrix_carries_over():
    """NumPyro's kernel reports a model's full diagonal (or dense) matrix as one block keyed
    by the sorted site names; given back as ``inverse_mass_matrix`` it is that array (the
    matrix every chain steps with), and a block of the wrong size is refused by name."""

    def fit(imm):
        kernel = mcmc.NUTS(model, inverse_mass_matrix=imm, adapt_mass_matrix=False)
        m = MCMC(kernel, num_warmup=5, num_samples=5, num_chains=2, chain_method="vectorized")
        m._progress_bar = False
        m.run(jax.random.PRNGKey(0), Y)
        return m

    with pytest.raises(ValueError, match=r"\('mu',\).*\(1,\) or \(1, 1\)"):
        fit({("mu",): jnp.array([0.3, 0.2])})
    m = fit({("mu",): jnp.array([0.3])})
    imm = m.last_state.adapt_state.inverse_mass_matrix
    np.testing.assert_array_equal(imm, np.full((2, 1), 0.3, np.float32))
    assert np.all(np.isfinite(m.get_samples()["mu"]))


def test_positional_arguments_mean_what_they_mean_in_numpyro():
    """NumPyro's positional order after (model, potential_fn): kinetic_fn, step_size,
    inverse_mass_matrix, adapt_step_size, ...; ppl's kernels read them the same way."""

    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    kernel = mcmc.NUTS(model, None, None, 0.5, None, False)
    assert kernel._step_size == 0.5 and kernel._adapt_step_size is False
    hmc = mcmc.HMC(model, None, None, 0.25, None, True, True, False, 0.7, 5)
    assert hmc._step_size == 0.25 and hmc._num_steps == 5 and hmc.target_accept_prob == 0.7
    with pytest.raises(ValueError, match="kinetic_fn is not supported"):
        mcmc.NUTS(model, None, lambda imm, r: 0.0)
    with pytest.raises(TypeError, match="multiple values for argument 'step_size'"):
        mcmc.NUTS(model, None, None, 0.5, step_size=0.1)
    with pytest.raises(TypeError, match="at most 15 positional arguments"):
        mcmc.NUTS(model, None, *([None] * 14))


def test_pure_hmc_flags_an_energy_error_above_1000():
    target = lambda x: -0.5 * jnp.sum(x**2) / 0.01  # sd 0.1
    for step_size, divergent in ((10.0, True), (0.01, False)):
        kernel = mcmc.hmc(target, step_size, 3)
        _, info = kernel.step(jax.random.key(0), kernel.init(jnp.ones(2)))
        assert bool(info.is_divergent) is divergent
        # what the NumPyro adapter collects as ``diverging``, by default as NumPyro's HMC
        adapter = mcmc.HMC(model, num_steps=3)
        assert adapter.divergence(info) is info.is_divergent
        assert "diverging" in adapter.default_fields


@pytest.mark.slow  # 10 s: two HMC compilations
def test_hmc_reports_divergences_as_numpyros_hmc():
    """NumPyro's HMC collects ``diverging`` by default (energy error above 1000, which
    print_summary counts): with a step size of 10 on a posterior of sd 0.5 every
    trajectory diverges, with 0.1 none does."""
    kernel = mcmc.HMC(model, num_steps=3, step_size=10.0, adapt_step_size=False)
    m = run(kernel, num_warmup=0, num_samples=10)
    diverging = np.asarray(m.get_extra_fields()["diverging"])
    assert diverging.dtype == bool and diverging.shape == (10,) and diverging.all()
    calm = run(mcmc.HMC(model, num_steps=3, step_size=0.1, adapt_step_size=False), num_warmup=0)
    assert not np.asarray(calm.get_extra_fields()["diverging"]).any()


@pytest.mark.parametrize("kernel", ["nuts", "hmc"])
def test_pure_kernels_step_an_empty_position_under_x64(kernel):
    """A model with no latent sites (NumPyro's MCMC gives ``{}`` draws): under x64
    ``ravel_pytree({})`` is float32 while the leapfrog carry turned float64 (the
    adapters' step size is a float64 array)."""
    with jax.enable_x64(True):
        eps = jnp.asarray(0.1, jnp.float64)
        make = {
            "nuts": lambda: mcmc.nuts(lambda z: 0.0, eps),
            "hmc": lambda: mcmc.hmc(lambda z: 0.0, eps, 2),
        }
        k = make[kernel]()
        state, _ = k.step(jax.random.key(0), k.init({}))
        assert state.position == {}


def test_chees_refuses_a_model_without_latent_sites():
    m = MCMC(
        mcmc.ChEES(lambda: None),
        num_warmup=5,
        num_samples=5,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    with pytest.raises(ValueError, match="no latent sites"):
        m.run(jax.random.PRNGKey(0))


def test_dict_inverse_mass_matrix_without_dense_mass_is_numpyros_block_diagonal():
    """NumPyro's ``NUTS(model, inverse_mass_matrix={("x",): diag})`` (dense_mass=False):
    that diagonal block for x, ones for the sites it leaves out, as NumPyro's state has it."""

    def two_sites():
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]))
        numpyro.sample("z", dist.Normal(0.0, 1.0).expand([2]))

    given = {("x",): jnp.arange(1.0, 4.0)}
    k = mcmc.NUTS(two_sites, inverse_mass_matrix=given, adapt_mass_matrix=False)
    imm = k.init(jax.random.key(0), 0, None, (), {}).adapt_state.inverse_mass_matrix
    assert set(imm) == {("x",), ("z",)}
    np.testing.assert_array_equal(imm[("x",)], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(imm[("z",)], [1.0, 1.0])
    with pytest.raises(ValueError, match="not latent sites"):
        mcmc.NUTS(two_sites, inverse_mass_matrix={("y",): jnp.ones(3)}).init(
            jax.random.key(0), 0, None, (), {}
        )


def test_chees_state_has_numpyros_extra_field_names():
    """``extra_fields`` on ChEES: NumPyro's names, each with a leading chain axis (NumPyro
    swaps the chain and draw axes of an ensemble kernel's every field), and an unknown
    name refused by name rather than by indexing the tuple with a string."""
    from operator import attrgetter

    from ppl.mcmc.base import GradState
    from ppl.mcmc.chees import ChEESAdaptState

    chains, ones = jnp.zeros(3), jnp.ones((3, 2))
    params = mcmc.ChEESParameters(jnp.array(0.2), jnp.array(1.5), jnp.ones(2))
    state = mcmc.ChEESState(
        jnp.array(0),
        GradState({"mu": jnp.ones((3, 2))}, jnp.array([-1.0, -2.0, -3.0]), {"mu": ones}),
        ChEESAdaptState(None, None, None, None, params, chains),
        chains,
        chains > 0,
        chains,
        jax.random.key(0),
        chains.astype(jnp.int32),
    )
    fields = ("potential_energy", "adapt_state.step_size", "mean_accept_prob", "z_grad")
    got = {f: attrgetter(f)(state) for f in fields}
    np.testing.assert_array_equal(got["potential_energy"], [1.0, 2.0, 3.0])
    assert got["adapt_state.step_size"].shape == (3,)
    np.testing.assert_allclose(got["adapt_state.step_size"], [0.2, 0.2, 0.2])
    assert got["mean_accept_prob"].shape == (3,) and got["z_grad"]["mu"].shape == (3, 2)
    assert float(got["z_grad"]["mu"][0, 0]) == -1.0
    with pytest.raises(ValueError, match="no field 'energy'"):
        attrgetter("energy")(state)


@pytest.mark.slow  # ChEES compilation
def test_chees_collects_numpyros_extra_fields():
    kernel = mcmc.ChEES(model)
    m = MCMC(kernel, num_warmup=20, num_samples=10, num_chains=4, chain_method="vectorized")
    m._progress_bar = False
    fields = ("potential_energy", "adapt_state.step_size", "mean_accept_prob", "diverging")
    m.run(jax.random.PRNGKey(0), Y, extra_fields=fields)
    extra = m.get_extra_fields(group_by_chain=True)
    assert all(extra[f].shape == (4, 10) for f in fields)
    mu = m.get_samples()["mu"]
    pe = jax.vmap(lambda v: potential_energy(model, (Y,), {}, {"mu": v}))(mu)
    np.testing.assert_allclose(m.get_extra_fields()["potential_energy"], pe, rtol=1e-5, atol=1e-5)
