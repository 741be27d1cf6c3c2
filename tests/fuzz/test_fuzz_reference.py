"""The program fuzzer's exact reference on fixed programs (fast; the fuzzing itself is slow).

The per-element IWAE bound (NumPyro's ``RenyiELBO``: every site in the plate, the bound
taken per plate element and summed) has its own path in ``exact_value``. Stop 21's CI
fuzz run drew such a program (one Bernoulli latent in a plate of 2, a plated Normal
observation, ``iwae(2)``) and the reference crashed on it: ``exact_value`` added the
(absent) factor terms, shape (m,), to per-element log weights of shape (m, n).
"""

import dataclasses
import itertools

import jax
import numpy as np
from scipy.special import expit
from scipy.stats import norm

import ppl.validate.fuzz as fuzz
from ppl.validate.fuzz import Obs, ProgramSpec, Site

FUZZ_KEY = jax.random.PRNGKey(0)  # the fuzzer compiles for raw uint32 keys
NUM_SAMPLES = 4000
N_SIGMA = 4.0


def _bernoulli(theta):
    return Site("bernoulli", 2, True, None, (), theta, ())


def _plated_iwae(thetas, coefs):
    """The shrunk CI program: guide z0 ~ Bernoulli(phi), model z0 ~ Bernoulli(psi[0]),
    x0 ~ Normal(psi[1] + c[0] z0, c[1]) observed at (c[2], c[3]), all in plate("p", 2)."""
    spec = ProgramSpec(
        objective="iwae",
        plate_size=2,
        sites=(_bernoulli(0),),
        terms=(),
        model_sites=(_bernoulli(1),),
        observations=(Obs(True, ((0, "id"),), 2, (0,), 1, (2, 3)),),
        num_particles=2,
        num_phi=1,
        slot_kinds=("coef", "scale", "data", "data"),
    )
    return [dataclasses.replace(spec, theta=t, coef=c) for t, c in zip(thetas, coefs, strict=True)]


SPECS = _plated_iwae(
    [(0.3, -0.5, 0.2), (0.5, -0.3, 0.0)],
    [(3.0, 0.6, 3.1, -0.2), (2.5, 0.5, 2.6, -0.1)],
)


def _brute_force_bounds(theta, c):
    """(per-element, joint) IWAE(2) values of one program by direct enumeration (numpy)."""
    phi, psi0, psi1 = theta
    data = np.array([c[2], c[3]])
    z = np.array([0.0, 1.0])
    q = np.where(z == 1, expit(phi), expit(-phi))  # (2,) per element
    p = np.where(z == 1, expit(psi0), expit(-psi0))
    log_w = np.log(p / q)[:, None] + norm.logpdf(data[None, :], psi1 + c[0] * z[:, None], c[1])
    pairs = list(itertools.product(range(2), repeat=2))  # the two particles' values
    per_element = sum(
        q[a] * q[b] * np.logaddexp(log_w[a], log_w[b]).sum() for a, b in pairs
    ) - 2 * np.log(2)
    joint_values = list(itertools.product(range(2), repeat=2))  # (z_1, z_2) per particle
    joint_q = {v: q[v[0]] * q[v[1]] for v in joint_values}
    joint_w = {v: log_w[v[0], 0] + log_w[v[1], 1] for v in joint_values}
    joint = sum(
        joint_q[u] * joint_q[v] * np.logaddexp(joint_w[u], joint_w[v])
        for u in joint_values
        for v in joint_values
    ) - np.log(2)
    return per_element, joint


def test_per_element_iwae_reference_matches_ppl():
    """ppl's iwae(2) value and gradient are within 4 SE of the fuzzer's exact per-element
    bound, whose value equals a direct enumeration and is far from the joint bound."""
    results = fuzz.check_programs(SPECS, FUZZ_KEY, NUM_SAMPLES, n_sigma=N_SIGMA)
    assert all(r.ok for r in results)
    for spec, r in zip(SPECS, results, strict=True):
        per_element, joint = _brute_force_bounds(spec.theta, spec.coef)
        np.testing.assert_allclose(r.exact[0], per_element, rtol=1e-5)
        assert abs(r.mean[0] - joint) > N_SIGMA * r.stderr[0]  # the check can tell them apart
