"""Autoregressive sequence policies as NumPyro programs, backed by a tiny causal Transformer
(Equinox): sampling position by position, teacher-forced log-probabilities in one pass."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import lax
from numpyro.contrib.control_flow import scan
from numpyro.contrib.module import eqx_module
from numpyro.distributions import constraints


class _Block(eqx.Module):
    attention: eqx.nn.MultiheadAttention
    norm1: eqx.nn.LayerNorm
    norm2: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, dim, heads, key):
        k1, k2 = jax.random.split(key)
        self.attention = eqx.nn.MultiheadAttention(heads, dim, key=k1)
        self.norm1, self.norm2 = eqx.nn.LayerNorm(dim), eqx.nn.LayerNorm(dim)
        self.mlp = eqx.nn.MLP(dim, dim, 2 * dim, 1, activation=jax.nn.gelu, key=k2)

    def __call__(self, x, mask):
        h = jax.vmap(self.norm1)(x)
        x = x + self.attention(h, h, h, mask=mask)
        return x + jax.vmap(self.mlp)(jax.vmap(self.norm2)(x))


class TinyTransformer(eqx.Module):
    """A small causal Transformer over prompt + response tokens (vocabulary ``vocab``; one
    extra id marks the start of the response). ``model(prompt (P,), response (L,))`` returns
    the teacher-forced logits (L, vocab): position t sees the prompt and response[:t]."""

    embed: eqx.nn.Embedding
    position: jax.Array
    blocks: list
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    vocab: int = eqx.field(static=True)

    def __init__(self, vocab, max_len, dim=32, heads=2, layers=1, *, key):
        keys = jax.random.split(key, layers + 3)
        self.vocab = vocab
        self.embed = eqx.nn.Embedding(vocab + 1, dim, key=keys[0])
        self.position = 0.02 * jax.random.normal(keys[1], (max_len + 1, dim))
        self.blocks = [_Block(dim, heads, k) for k in keys[3:]]
        self.norm = eqx.nn.LayerNorm(dim)
        self.head = eqx.nn.Linear(dim, vocab, key=keys[2])

    def __call__(self, prompt, response):
        p, length = prompt.shape[0], response.shape[0]
        start = jnp.full((1,), self.vocab, prompt.dtype)
        tokens = jnp.concatenate([prompt, start, response[:-1].astype(prompt.dtype)])
        n = tokens.shape[0]
        x = jax.vmap(self.embed)(tokens) + self.position[:n]
        mask = jnp.tril(jnp.ones((n, n), bool))
        for block in self.blocks:
            x = block(x, mask)
        x = jax.vmap(self.norm)(x)
        return jax.vmap(self.head)(x[p : p + length])


def teacher_forced_log_prob(net: Callable, prompts, responses):
    """log π(response | prompt) of a batch, (B,): one forward pass per sequence, every
    position scored at once (``net(prompt, response) -> logits (L, V)``)."""
    logits = jax.vmap(net)(prompts, responses)
    lp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.sum(jnp.take_along_axis(lp, responses[..., None], axis=-1)[..., 0], axis=-1)


class Autoregressive(dist.Distribution):
    """π(y | x) = Π_t π(y_t | x, y_<t) for a batch of prompts: batch shape (B,), event
    shape (length,). ``sample`` generates position by position (``lax.scan``);
    ``log_prob`` is teacher-forced (one pass)."""

    arg_constraints = {}
    pytree_data_fields = ("net", "prompts")
    pytree_aux_fields = ("length",)

    def __init__(self, net, prompts, length):
        self.net, self.prompts, self.length = net, prompts, length
        vocab = net.vocab if hasattr(net, "vocab") else None
        self._support = constraints.independent(
            constraints.integer_interval(0, (vocab or 2**30) - 1), 1
        )
        super().__init__(batch_shape=(prompts.shape[0],), event_shape=(length,))

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self):
        return self._support

    def sample(self, key, sample_shape=()):
        if sample_shape:
            raise ValueError("Autoregressive.sample: sample_shape is not supported; use a plate")
        b = self.prompts.shape[0]

        def step(tokens, inputs):
            t, k = inputs
            logits = jax.vmap(self.net)(self.prompts, tokens)[:, t]
            y = jax.random.categorical(k, logits).astype(tokens.dtype)
            return tokens.at[:, t].set(y), None

        keys = jax.random.split(key, self.length)
        init = jnp.zeros((b, self.length), jnp.int32)
        tokens, _ = lax.scan(step, init, (jnp.arange(self.length), keys))
        return tokens

    def log_prob(self, value):
        return teacher_forced_log_prob(self.net, self.prompts, value)


def sequence_policy(
    net: eqx.Module,
    length: int,
    name: str = "y",
    param: str | None = "policy",
    per_position: bool = False,
) -> Callable:
    """An autoregressive policy as a NumPyro program ``policy(prompts (B, P)) -> (B, length)``.

    ``param`` registers the network's weights as a NumPyro param (``eqx_module``; SVI
    trains it); ``param=None`` keeps them fixed (a reference policy). ``per_position=False``:
    one site ``name`` with an :class:`Autoregressive` distribution (value (B, length),
    teacher-forced log density in one pass). ``per_position=True``: a
    ``numpyro.contrib.control_flow.scan`` over positions, one Categorical per position in a
    plate over prompts (site value (length, B)), so positions can be conditioned or
    intervened on; the same distribution, scored through the scan.

    Example::

        net = ppl.reward.TinyTransformer(vocab=4, max_len=8, key=jax.random.key(0))
        policy = ppl.reward.sequence_policy(net, length=4)
        tokens = numpyro.handlers.seed(policy, 0)(prompts)  # (B, 4)
    """

    def program(prompts):
        module = eqx_module(param, net) if param else net
        b = prompts.shape[0]
        if not per_position:
            with numpyro.plate("prompts", b):
                return numpyro.sample(name, Autoregressive(module, prompts, length))

        def step(tokens, t):
            logits = jax.vmap(module)(prompts, tokens)[:, t]
            with numpyro.plate("prompts", b):
                y = numpyro.sample(name, dist.Categorical(logits=logits))
            return tokens.at[:, t].set(y.astype(tokens.dtype)), None

        tokens, _ = scan(step, jnp.zeros((b, length), jnp.int32), jnp.arange(length))
        return tokens

    program.__name__ = f"sequence_policy({param or 'fixed'})"
    return program


def all_sequences(vocab: int, length: int) -> np.ndarray:
    """Every response of the given length, (vocab**length, length): a finite response
    space for exact posteriors by enumeration."""
    return np.array(list(itertools.product(range(vocab), repeat=length)), np.int32)
