"""The structures of NumPyro's ``examples/hmm_enum.py`` (``scan`` form), with only
``loss=`` changed.

Five polyphonic-music HMMs with that example's structure, written here: the carry holds
the previous hidden state(s) and a step counter, the body opens the ``sequences`` plate
(dim -2) and a ``notes`` plate, ``mask(t < lengths)`` pads sequences of different
lengths, ``Vindex`` indexes a transition table, notes may depend on the previous notes,
two chains may be factorial or coupled, and model 5 is second order
(``scan(..., history=2)``). The discrete sites carry ``infer={"enumerate": "parallel"}``
(what an SVI user adds; the example itself runs HMC, which enumerates them unmarked), and
the guide is ``AutoDelta`` of the continuous sites, so the ELBO is -log p(y, probs) with
the chains summed out.

The reference is NumPyro's own enumerated log density (``numpyro.contrib.funsor``'s
``log_density`` under ``enum``: the potential its HMC samples), value and gradient, and,
for model 1, a forward algorithm written here. One constant differs: where ``mask`` hides a
padded step, NumPyro's log density sums that step's states with weight 1 each (log H per
padded step and sequence), ppl with weight 1/H, so padding adds nothing and the ELBO is
the likelihood of the sequences as they are (as ``TraceEnum_ELBO`` on the ``markov`` form:
``test_masked_enumeration.py``); the gradients are the same. ``TraceEnum_ELBO`` is not the
reference: on these ``scan`` models it returns another number (model 1: 366.9 against 99.6
from both references; ``test_elbo_family.py::test_trace_enum_scan_differs``).
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


def _sticky(k):
    """Dirichlet rows that favour staying in the same state."""
    return dist.Dirichlet(0.1 + 0.9 * jnp.eye(k))


def _emission(*shape):
    return dist.Beta(0.1, 0.9).expand(list(shape)).to_event(len(shape))


def _run_chain(step, start, sequences, lengths, history=1):
    """``scan`` over time of ``step(state, notes_t)`` inside the sequences plate (dim -2)
    and ``mask(t < lengths)``; ``state`` is a tuple of carried values (the step counter
    is added here)."""
    n_seq = sequences.shape[0]

    def body(carry, notes_t):
        *state, t = carry
        with numpyro.plate("sequences", n_seq, dim=-2):
            with handlers.mask(mask=(t < lengths)[..., None]):
                state = step(*state, notes_t)
        return (*state, t + 1), None

    scan(body, (*start, 0), jnp.moveaxis(sequences, 1, 0), history=history)


def _notes_plate(sequences):
    return numpyro.plate("notes", sequences.shape[-1], dim=-1)


def _state0(sequences):
    return jnp.zeros((sequences.shape[0], 1), jnp.int32)


def model_1(sequences, lengths):
    """A hidden Markov chain, every note a Bernoulli given the state."""
    trans = numpyro.sample("probs_x", _sticky(H).to_event(1))
    emit = numpyro.sample("probs_y", _emission(H, sequences.shape[-1]))

    def step(prev, notes_t):
        state = numpyro.sample("x", dist.Categorical(trans[prev]), infer={**E})
        with _notes_plate(sequences):
            numpyro.sample("y", dist.Bernoulli(emit[state[..., 0]]), obs=notes_t)
        return (state,)

    _run_chain(step, (_state0(sequences),), sequences, lengths)


def model_2(sequences, lengths):
    """Model 1 with each note also depending on the same note one step earlier."""
    trans = numpyro.sample("probs_x", _sticky(H).to_event(1))
    emit = numpyro.sample("probs_y", _emission(H, 2, sequences.shape[-1]))

    def step(prev, prev_notes, notes_t):
        state = numpyro.sample("x", dist.Categorical(trans[prev]), infer={**E})
        with _notes_plate(sequences) as note:
            played = numpyro.sample("y", dist.Bernoulli(emit[state, prev_notes, note]), obs=notes_t)
        return state, played.astype(jnp.int32)

    start = (_state0(sequences), jnp.zeros(sequences.shape[::2], jnp.int32))
    _run_chain(step, start, sequences, lengths)


def _factorial(sequences, lengths, *, coupled):
    """Two hidden chains w and x emitting together; ``coupled``: x[t] also reads w[t]
    (a table indexed with ``Vindex``)."""
    k = 2
    trans_w = numpyro.sample("probs_w", _sticky(k).to_event(1))
    rows = _sticky(k).expand_by([k]).to_event(2) if coupled else _sticky(k).to_event(1)
    trans_x = numpyro.sample("probs_x", rows)
    emit = numpyro.sample("probs_y", _emission(k, k, sequences.shape[-1]))

    def step(prev_w, prev_x, notes_t):
        w = numpyro.sample("w", dist.Categorical(trans_w[prev_w]), infer={**E})
        row = Vindex(trans_x)[w, prev_x] if coupled else trans_x[prev_x]
        x = numpyro.sample("x", dist.Categorical(row), infer={**E})
        with _notes_plate(sequences) as note:
            numpyro.sample("y", dist.Bernoulli(emit[w, x, note]), obs=notes_t)
        return w, x

    _run_chain(step, (_state0(sequences), _state0(sequences)), sequences, lengths)


def model_3(sequences, lengths):
    _factorial(sequences, lengths, coupled=False)


def model_4(sequences, lengths):
    _factorial(sequences, lengths, coupled=True)


def model_5(sequences, lengths):
    """Second order: x[t] reads x[t-1] and x[t-2] (``scan(..., history=2)``)."""
    trans = numpyro.sample("probs_x", _sticky(H).expand([H, H]).to_event(2))
    emit = numpyro.sample("probs_y", _emission(H, sequences.shape[-1]))

    def step(before, prev, notes_t):
        state = numpyro.sample("x", dist.Categorical(Vindex(trans)[before, prev]), infer={**E})
        with _notes_plate(sequences):
            numpyro.sample("y", dist.Bernoulli(emit[state[..., 0]]), obs=notes_t)
        return prev, state

    start = (_state0(sequences), _state0(sequences))
    _run_chain(step, start, sequences, lengths, history=2)


MODELS = [model_1, model_2, model_3, model_4, model_5]
N, T, D = 3, 7, 5
SEQUENCES = jnp.asarray(np.random.default_rng(0).integers(0, 2, (N, T, D)), jnp.int32)
LENGTHS = jnp.array([7, 5, 3])
# NumPyro's log density counts each padded step's H joint states with weight 1, ppl with 1/H
PADDING = float(np.sum(T - np.asarray(LENGTHS)) * np.log(H))


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
    transition is uniform, so it sums its state out with weight 1/H (the padded steps
    leave the sequence's likelihood as it is)."""
    px, py = values["probs_x"], values["probs_y"]
    lp = _sticky(H).log_prob(px).sum()
    lp += dist.Beta(0.1, 0.9).log_prob(py).sum()
    for n in range(N):
        alpha = jnp.where(jnp.arange(H) == 0, 0.0, -jnp.inf)
        for t in range(T):
            if t < int(np.asarray(LENGTHS)[n]):
                emit = dist.Bernoulli(py).log_prob(SEQUENCES[n, t]).sum(-1)
                alpha = jax.nn.logsumexp(alpha[:, None] + jnp.log(px), 0) + emit
            else:
                alpha = jax.nn.logsumexp(alpha[:, None] + jnp.full((H, H), -np.log(H)), 0)
        lp += jax.nn.logsumexp(alpha)
    return lp


# model 1 in the fast suite (with the forward-algorithm check); 2-5 in the slow step (the
# zoo of test_elbo_family.py has fast second-order and factorial chains)
CASES = [
    pytest.param(m, id=m.__name__, marks=() if m is model_1 else pytest.mark.slow) for m in MODELS
]


@pytest.mark.parametrize("model", CASES)
def test_elbo_is_numpyros_enumerated_log_density(model):
    """-elbo and its gradient equal NumPyro's enumerated log density (less its count of
    the padded steps' states) and its gradient (float32: rtol 1e-5 on the value, 1e-4 of
    the largest gradient entry)."""
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
    np.testing.assert_allclose(-loss, ref - PADDING, rtol=1e-5)
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
