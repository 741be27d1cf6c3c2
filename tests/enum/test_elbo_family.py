"""Model-side enumeration: ppl's ``elbo()`` equals ``TraceEnum_ELBO`` and brute force.

For every model of ``models.enum_zoo.ZOO`` (23 model/guide pairs: single sites, plates,
nested plates, global sites with plate-local children, two coupled plates, first- and
second-order Markov chains with ``markov`` and ``scan``, factorial HMMs, continuous
parents, mask, scale) with a deterministic guide (``AutoDelta`` over the continuous
latents), the ELBO is log p(x, delta) with the discrete sites summed out, and its value
and gradient must equal (float64, rtol 1e-5):

* NumPyro's ``TraceEnum_ELBO`` (not for ``scan``: see ``test_trace_enum_scan_differs``),
* an independent reference: brute-force enumeration of every joint assignment (short
  models), or a forward algorithm written in plain JAX (chains of length 50-60).

The pairs whose ELBO is random (a subsampled plate, ``AutoNormal`` guides: 3 more, 26 in
all) are compared in distribution in ``test_statistical_pairs.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
from jax import enable_x64
from numpyro.infer import SVI, TraceEnum_ELBO

import ppl
from models import enum_zoo
from models.enum_zoo import ZOO

_spec = importlib.util.spec_from_file_location(
    "enum_reference", Path(__file__).with_name("reference.py")
)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

RTOL = 1e-5


def _has_continuous(case):
    sites = numpyro_trace(case)
    return any(
        s["type"] == "sample" and not s["is_observed"] and not ref.is_enum(s)
        for s in sites.values()
    )


def numpyro_trace(case):
    from numpyro.handlers import seed, trace

    return trace(seed(case.model, 0)).get_trace(*case.args)


def _setup(case):
    args = tuple(jnp.asarray(np.asarray(a)) for a in case.args)
    guide = ref.continuous_guide(case.model) if _has_continuous(case) else (lambda *a: None)
    svi = SVI(case.model, guide, optax.adam(1e-2), ppl.objectives.elbo())
    params = svi.get_params(svi.init(jax.random.PRNGKey(1), *args))
    return args, guide, _perturbed(case.model, guide, params, args)


def _perturbed(model, guide, params, args):
    """Move every param by N(0, 0.3) in unconstrained space, so that no gradient is
    trivially symmetric (uniform simplexes, medians)."""
    from numpyro.distributions.transforms import biject_to
    from numpyro.handlers import seed, trace

    constraints = {}
    for program in (model, guide):
        for name, site in trace(seed(program, 0)).get_trace(*args).items():
            if site["type"] == "param":
                constraints[name] = site["kwargs"].get("constraint", dist.constraints.real)
    out = {}
    for i, (name, value) in enumerate(sorted(params.items())):
        t = biject_to(constraints[name])
        u = t.inv(value)
        noise = 0.3 * jax.random.normal(jax.random.PRNGKey(100 + i), jnp.shape(u))
        out[name] = t(u + noise)
    return out


def _reference_log_joint(case, guide, params, args, sites):
    values = ref.guide_values(guide, params, args) if _has_continuous(case) else {}
    model = _substituted(case.model, params)
    if case.model is enum_zoo.scaled:  # scale(0.5) multiplies the marginal, not the joint
        model = _substituted(enum_zoo.mixture, params)
        return 0.5 * ref.brute_force_log_joint(model, values, args, sites)
    if sites is not None:
        return ref.brute_force_log_joint(model, values, args, sites)
    (y,) = args
    if case.model in (enum_zoo.hmm_markov, enum_zoo.hmm_scan):
        trans, locs = values["trans"], values["locs"]
        prior = dist.Dirichlet(jnp.ones((3, 3))).to_event(1).log_prob(trans)
        prior = prior + dist.Normal(jnp.arange(3.0), 1.0).to_event(1).log_prob(locs)
        emit = dist.Normal(locs, 0.5).log_prob(y[:, None])
        return prior + ref.forward_log_marginal(jnp.log(trans[0]), jnp.log(trans), emit)
    assert case.model is enum_zoo.hmm2_scan
    trans2 = params["trans2"]
    emit = dist.Normal(jnp.arange(3.0), 0.5).log_prob(y[:, None])
    return ref.forward2_log_marginal(jnp.log(trans2), emit)


def _substituted(model, params):
    from numpyro.handlers import substitute

    return substitute(model, data=params)


def _close(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * max(1.0, float(np.max(np.abs(b)))))


FAST = {  # mixture and the scan HMM run in the slow step (fast siblings: the README's
    # mixture example, tests/enum/test_numpyro_idioms.py's scan HMM, test_jaxpr_size.py)
    "nested_dependent",
    "two_plates",
}
CASES = [c if c.name in FAST else pytest.param(c, marks=pytest.mark.slow) for c in ZOO]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in ZOO])
def test_elbo_equals_trace_enum_and_reference(case):
    with enable_x64(True):
        args, guide, params = _setup(case)
        key = jax.random.PRNGKey(0)

        def ours(p):
            return ppl.objectives.elbo().loss(key, p, case.model, guide, *args)

        value, grad = jax.jit(jax.value_and_grad(ours))(params)

        sites = None
        if not case.markov or case.name.endswith("short"):
            values = ref.guide_values(guide, params, args) if _has_continuous(case) else {}
            sites = ref.enumerated_shapes(_substituted(case.model, params), values, args)

        def reference(p):
            return -_reference_log_joint(case, guide, p, args, sites)

        ref_value, ref_grad = jax.jit(jax.value_and_grad(reference))(params)
        _close(value, ref_value)
        for k in params:
            _close(grad[k], ref_grad[k])
        if not case.scan:

            def theirs(p):
                return TraceEnum_ELBO().loss(key, p, case.model, guide, *args)

            te_value, te_grad = jax.jit(jax.value_and_grad(theirs))(params)
            _close(value, te_value)
            for k in params:
                _close(grad[k], te_grad[k])
        assert np.all(np.isfinite(np.asarray(value)))


@pytest.mark.slow  # a finding about NumPyro, not a check of ppl
def test_trace_enum_scan_differs():
    """NumPyro's TraceEnum_ELBO treats scan's time axis like a plate and gets a different
    number from the forward algorithm (ppl agrees with the forward algorithm, above, and
    with the same model written with ``markov``)."""
    case = next(c for c in ZOO if c.name == "hmm_scan_short")
    markov_case = next(c for c in ZOO if c.name == "hmm_markov_short")
    with enable_x64(True):
        args, guide, params = _setup(case)
        key = jax.random.PRNGKey(0)
        ours = ppl.objectives.elbo().loss(key, params, case.model, guide, *args)
        mguide = ref.continuous_guide(markov_case.model)
        ours_markov = ppl.objectives.elbo().loss(key, params, markov_case.model, mguide, *args)
        theirs = TraceEnum_ELBO().loss(key, params, case.model, guide, *args)
    _close(ours, ours_markov)
    assert abs(float(theirs) - float(ours)) > 1.0
