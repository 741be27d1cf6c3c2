"""NumPyro's ``examples/hmm_enum.py`` models (``scan`` form), with only ``loss=`` changed.

The five models of NumPyro's HMM example, as written there: the carry holds the previous
hidden state(s) and a step counter, the body opens the ``sequences`` plate (dim -2) and a
``tones`` plate, ``mask(t < lengths)`` pads sequences of different lengths, ``Vindex``
indexes a transition table, and model 5 is second order (``scan(..., history=2)``). The
discrete sites carry ``infer={"enumerate": "parallel"}`` (what an SVI user adds; the
example itself runs HMC, which enumerates them unmarked), and the guide is ``AutoDelta``
of the continuous sites, so the ELBO is -log p(y, probs) with the chains summed out.

The reference is NumPyro's own enumerated log density (``numpyro.contrib.funsor``'s
``log_density`` under ``enum``: the potential its HMC samples), value and gradient, and,
for model 1, a forward algorithm written here. ``TraceEnum_ELBO`` is not the reference:
on these ``scan`` models it returns another number (model 1: 366.9 against 99.6 from
both references; ``test_elbo_family.py::test_trace_enum_scan_differs``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.contrib.control_flow import scan
from numpyro.contrib.funsor import enum
from numpyro.contrib.funsor import log_density as enum_log_density
from numpyro.infer.autoguide import AutoDelta
from numpyro.ops.indexing import Vindex

import ppl

E = {"enumerate": "parallel"}  # copied per site ({**E}): NumPyro writes into a site's infer dict
H = 4  # hidden states (models 3 and 4: 2 x 2)


def model_1(sequences, lengths):
    num_sequences, _, data_dim = sequences.shape
    probs_x = numpyro.sample("probs_x", dist.Dirichlet(0.9 * jnp.eye(H) + 0.1).to_event(1))
    probs_y = numpyro.sample("probs_y", dist.Beta(0.1, 0.9).expand([H, data_dim]).to_event(2))

    def transition_fn(carry, y):
        x_prev, t = carry
        with numpyro.plate("sequences", num_sequences, dim=-2):
            with handlers.mask(mask=(t < lengths)[..., None]):
                x = numpyro.sample("x", dist.Categorical(probs_x[x_prev]), infer={**E})
                with numpyro.plate("tones", data_dim, dim=-1):
                    numpyro.sample("y", dist.Bernoulli(probs_y[x.squeeze(-1)]), obs=y)
        return (x, t + 1), None

    x_init = jnp.zeros((num_sequences, 1), dtype=jnp.int32)
    scan(transition_fn, (x_init, 0), jnp.swapaxes(sequences, 0, 1))


def model_2(sequences, lengths):
    """y[t] also depends on y[t-1]."""
    num_sequences, _, data_dim = sequences.shape
    probs_x = numpyro.sample("probs_x", dist.Dirichlet(0.9 * jnp.eye(H) + 0.1).to_event(1))
    probs_y = numpyro.sample("probs_y", dist.Beta(0.1, 0.9).expand([H, 2, data_dim]).to_event(3))

    def transition_fn(carry, y):
        x_prev, y_prev, t = carry
        with numpyro.plate("sequences", num_sequences, dim=-2):
            with handlers.mask(mask=(t < lengths)[..., None]):
                x = numpyro.sample("x", dist.Categorical(probs_x[x_prev]), infer={**E})
                with numpyro.plate("tones", data_dim, dim=-1) as tones:
                    y = numpyro.sample(
                        "y", dist.Bernoulli(probs_y[x, y_prev, tones]), obs=y
                    ).astype(jnp.int32)
        return (x, y, t + 1), None

    x_init = jnp.zeros((num_sequences, 1), dtype=jnp.int32)
    y_init = jnp.zeros((num_sequences, data_dim), dtype=jnp.int32)
    scan(transition_fn, (x_init, y_init, 0), jnp.swapaxes(sequences, 0, 1))


def _factorial(sequences, lengths, *, dbn):
    """Model 3 (factorial HMM: w and x independent chains) or model 4 (``dbn``: x[t]
    also depends on w[t], through ``Vindex``)."""
    num_sequences, _, data_dim = sequences.shape
    k = 2
    probs_w = numpyro.sample("probs_w", dist.Dirichlet(0.9 * jnp.eye(k) + 0.1).to_event(1))
    base = dist.Dirichlet(0.9 * jnp.eye(k) + 0.1)
    probs_x = numpyro.sample(
        "probs_x", base.expand_by([k]).to_event(2) if dbn else base.to_event(1)
    )
    probs_y = numpyro.sample("probs_y", dist.Beta(0.1, 0.9).expand([k, k, data_dim]).to_event(3))

    def transition_fn(carry, y):
        w_prev, x_prev, t = carry
        with numpyro.plate("sequences", num_sequences, dim=-2):
            with handlers.mask(mask=(t < lengths)[..., None]):
                w = numpyro.sample("w", dist.Categorical(probs_w[w_prev]), infer={**E})
                px = Vindex(probs_x)[w, x_prev] if dbn else probs_x[x_prev]
                x = numpyro.sample("x", dist.Categorical(px), infer={**E})
                with numpyro.plate("tones", data_dim, dim=-1) as tones:
                    numpyro.sample("y", dist.Bernoulli(probs_y[w, x, tones]), obs=y)
        return (w, x, t + 1), None

    z = jnp.zeros((num_sequences, 1), dtype=jnp.int32)
    scan(transition_fn, (z, z, 0), jnp.swapaxes(sequences, 0, 1))


def model_3(sequences, lengths):
    _factorial(sequences, lengths, dbn=False)


def model_4(sequences, lengths):
    _factorial(sequences, lengths, dbn=True)


def model_5(sequences, lengths):
    """Second order: x[t] depends on x[t-1] and x[t-2] (``history=2``)."""
    num_sequences, _, data_dim = sequences.shape
    probs_x = numpyro.sample(
        "probs_x", dist.Dirichlet(0.9 * jnp.eye(H) + 0.1).expand([H, H]).to_event(2)
    )
    probs_y = numpyro.sample("probs_y", dist.Beta(0.1, 0.9).expand([H, data_dim]).to_event(2))

    def transition_fn(carry, y):
        x_prev, x_curr, t = carry
        with numpyro.plate("sequences", num_sequences, dim=-2):
            with handlers.mask(mask=(t < lengths)[..., None]):
                probs_x_t = Vindex(probs_x)[x_prev, x_curr]
                x_prev, x_curr = (
                    x_curr,
                    numpyro.sample("x", dist.Categorical(probs_x_t), infer={**E}),
                )
                with numpyro.plate("tones", data_dim, dim=-1):
                    numpyro.sample("y", dist.Bernoulli(probs_y[x_curr.squeeze(-1)]), obs=y)
        return (x_prev, x_curr, t + 1), None

    z = jnp.zeros((num_sequences, 1), dtype=jnp.int32)
    scan(transition_fn, (z, z, 0), jnp.swapaxes(sequences, 0, 1), history=2)


MODELS = [model_1, model_2, model_3, model_4, model_5]
N, T, D = 3, 7, 5
SEQUENCES = jnp.asarray(np.random.default_rng(0).integers(0, 2, (N, T, D)), jnp.int32)
LENGTHS = jnp.array([7, 5, 3])


def _point(model):
    """AutoDelta's guide and a point in its params: a draw from the model's prior."""
    guide = AutoDelta(handlers.block(model, hide=["x", "w"]))
    tr = handlers.trace(handlers.seed(model, 3)).get_trace(SEQUENCES, LENGTHS)
    values = {
        k: s["value"] for k, s in tr.items() if k.startswith("probs") and s["type"] == "sample"
    }
    return guide, values


def _numpyro_log_density(model, values):
    conditioned = enum(handlers.substitute(model, data=values), first_available_dim=-3)
    return enum_log_density(conditioned, (SEQUENCES, LENGTHS), {}, {})[0]


def _forward_model_1(values):
    """log p(y, probs) of model 1 by a forward algorithm per sequence; a masked step's
    factors are 1, so it sums its state out with weight 1."""
    px, py = values["probs_x"], values["probs_y"]
    lp = dist.Dirichlet(0.9 * jnp.eye(H) + 0.1).log_prob(px).sum()
    lp += dist.Beta(0.1, 0.9).log_prob(py).sum()
    for n in range(N):
        alpha = jnp.where(jnp.arange(H) == 0, 0.0, -jnp.inf)
        for t in range(T):
            if t < int(np.asarray(LENGTHS)[n]):
                emit = dist.Bernoulli(py).log_prob(SEQUENCES[n, t]).sum(-1)
                alpha = jax.nn.logsumexp(alpha[:, None] + jnp.log(px), 0) + emit
            else:
                alpha = jax.nn.logsumexp(alpha[:, None] + jnp.zeros((H, H)), 0)
        lp += jax.nn.logsumexp(alpha)
    return lp


# models 1 (first order) and 5 (second order) in the fast suite; 2-4 (same paths, more
# sites) in the slow step
CASES = [
    pytest.param(m, id=m.__name__, marks=() if m in (model_1, model_5) else pytest.mark.slow)
    for m in MODELS
]


@pytest.mark.parametrize("model", CASES)
def test_elbo_is_numpyros_enumerated_log_density(model):
    """-elbo and its gradient equal NumPyro's enumerated log density and its gradient
    (float32: rtol 1e-5 on the value, 1e-4 of the largest gradient entry)."""
    guide, values = _point(model)
    params = {f"{k}_auto_loc": v for k, v in values.items()}
    loss, grads = jax.jit(
        jax.value_and_grad(
            lambda p: ppl.objectives.elbo().loss(
                jax.random.PRNGKey(0), p, model, guide, SEQUENCES, LENGTHS
            )
        )
    )(params)
    ref, ref_grads = jax.jit(jax.value_and_grad(lambda v: _numpyro_log_density(model, v)))(values)
    np.testing.assert_allclose(-loss, ref, rtol=1e-5)
    for k, g in ref_grads.items():
        scale = float(jnp.max(jnp.abs(g)))
        np.testing.assert_allclose(-grads[f"{k}_auto_loc"], g, rtol=1e-4, atol=1e-4 * scale)


def test_model_1_matches_a_forward_algorithm():
    guide, values = _point(model_1)
    params = {f"{k}_auto_loc": v for k, v in values.items()}
    loss = jax.jit(
        lambda p: ppl.objectives.elbo().loss(
            jax.random.PRNGKey(0), p, model_1, guide, SEQUENCES, LENGTHS
        )
    )(params)
    np.testing.assert_allclose(-loss, jax.jit(_forward_model_1)(values), rtol=1e-5)
