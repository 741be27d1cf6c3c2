"""The distribution transformer: GMM prior tokens attend to observation tokens."""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp

from .gmm import GMM, token_size


class SymmetricPriorWarning(UserWarning):
    """The prior's components are identical, so a permutation-equivariant network keeps them so."""


def _zero_linear(layer: eqx.nn.Linear) -> eqx.nn.Linear:
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.zeros_like(layer.weight))
    return eqx.tree_at(lambda m: m.bias, layer, jnp.zeros_like(layer.bias))


class _Attention(eqx.Module):
    """Multi-head attention with a learned sink token (so the output can depend on the count)."""

    qkv_q: eqx.nn.Linear
    qkv_kv: eqx.nn.Linear
    out: eqx.nn.Linear
    sink: jax.Array
    num_heads: int = eqx.field(static=True)

    def __init__(self, d_model: int, num_heads: int, key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.qkv_q = eqx.nn.Linear(d_model, d_model, key=k1)
        self.qkv_kv = eqx.nn.Linear(d_model, 2 * d_model, key=k2)
        self.out = _zero_linear(eqx.nn.Linear(d_model, d_model, key=k3))
        self.sink = 0.02 * jax.random.normal(k4, (1, d_model))
        self.num_heads = num_heads

    def __call__(self, x, context, mask):
        # x: (K, d); context: (N, d); mask: (N,) bool
        context = jnp.concatenate([self.sink, context], 0)
        mask = jnp.concatenate([jnp.ones((1,), bool), mask])
        h = self.num_heads
        q = jax.vmap(self.qkv_q)(x).reshape(x.shape[0], h, -1)
        k, v = jnp.split(jax.vmap(self.qkv_kv)(context), 2, -1)
        k, v = k.reshape(context.shape[0], h, -1), v.reshape(context.shape[0], h, -1)
        logits = jnp.einsum("khd,nhd->hkn", q, k) / jnp.sqrt(q.shape[-1])
        logits = jnp.where(mask[None, None, :], logits, -jnp.inf)
        att = jax.nn.softmax(logits, -1)
        o = jnp.einsum("hkn,nhd->khd", att, v).reshape(x.shape[0], -1)
        return jax.vmap(self.out)(o)


class _Block(eqx.Module):
    norm1: eqx.nn.LayerNorm
    self_att: _Attention
    norm2: eqx.nn.LayerNorm
    cross_att: _Attention
    norm3: eqx.nn.LayerNorm
    mlp1: eqx.nn.Linear
    mlp2: eqx.nn.Linear

    def __init__(self, d_model: int, num_heads: int, key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.norm1, self.norm2, self.norm3 = (eqx.nn.LayerNorm(d_model) for _ in range(3))
        self.self_att = _Attention(d_model, num_heads, k1)
        self.cross_att = _Attention(d_model, num_heads, k2)
        self.mlp1 = eqx.nn.Linear(d_model, 4 * d_model, key=k3)
        self.mlp2 = _zero_linear(eqx.nn.Linear(4 * d_model, d_model, key=k4))

    def __call__(self, x, obs, mask):
        y = jax.vmap(self.norm1)(x)
        x = x + self.self_att(y, y, jnp.ones((x.shape[0],), bool))
        x = x + self.cross_att(jax.vmap(self.norm2)(x), obs, mask)
        y = jax.nn.gelu(jax.vmap(self.mlp1)(jax.vmap(self.norm3)(x)))
        return x + jax.vmap(self.mlp2)(y)


def _mlp(d_in: int, d_out: int, width: int, key) -> eqx.nn.MLP:
    return eqx.nn.MLP(d_in, d_out, width, 2, activation=jax.nn.gelu, key=key)


def is_symmetric(prior: GMM, atol: float = 1e-6) -> jax.Array:
    """True when all K ≥ 2 components of ``prior`` have equal tokens (to ``atol``)."""
    t = prior.tokens()
    return jnp.logical_and(t.shape[-2] > 1, jnp.all(jnp.abs(t - t[..., :1, :]) <= atol))


class DistributionTransformer(eqx.Module):
    """q(θ | prior, data): a GMM posterior from a GMM prior and a set of observations.

    One token per prior component ([log w, μ, log diag L, lower L], embedded by an MLP)
    and one per observation (``obs_dim`` features, embedded by an MLP); a stack of
    pre-norm blocks where components self-attend and cross-attend to the observations
    (plus a learned sink token, so the update can depend on the number of observations),
    then a shared per-token head. No positional encoding: the output is equivariant to
    permutations of the components and invariant to permutations of the observations.
    A prior with identical components (which equivariance would keep identical) is
    perturbed with a :class:`SymmetricPriorWarning` (``on_symmetric="warn"``, silently
    under ``jit``/``vmap``) or refused (``on_symmetric="error"``, concrete priors).
    Residual branches are zero-initialized and the posterior tokens are
    ``prior tokens + head(h_L) − head(h_0)``, so an untrained network returns the prior.

    With ``prior_param_dim`` set, :meth:`encode_prior` maps a vector of prior parameters
    (e.g. the log shape and log scale of an inverse-gamma) to a K-component GMM prior.
    """

    embed: eqx.nn.MLP
    obs_embed: eqx.nn.MLP
    blocks: tuple[_Block, ...]
    head: eqx.nn.MLP
    prior_encoder: eqx.nn.MLP | None
    dim: int = eqx.field(static=True)
    obs_dim: int = eqx.field(static=True)
    num_components: int = eqx.field(static=True)
    jitter: float = eqx.field(static=True)
    on_symmetric: str = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        obs_dim: int,
        num_components: int,
        *,
        key,
        d_model: int = 64,
        num_layers: int = 3,
        num_heads: int = 4,
        prior_param_dim: int | None = None,
        jitter: float = 1e-6,
        on_symmetric: str = "warn",
    ):
        if on_symmetric not in ("warn", "error"):
            raise ValueError(f"on_symmetric must be 'warn' or 'error', got {on_symmetric!r}")
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        ks = jax.random.split(key, num_layers + 4)
        t = token_size(dim)
        self.embed = _mlp(t, d_model, d_model, ks[0])
        self.obs_embed = _mlp(obs_dim, d_model, d_model, ks[1])
        self.blocks = tuple(_Block(d_model, num_heads, k) for k in ks[4:])
        self.head = _mlp(d_model, t, d_model, ks[2])
        self.prior_encoder = (
            None
            if prior_param_dim is None
            else _mlp(prior_param_dim, num_components * t, d_model, ks[3])
        )
        self.dim, self.obs_dim, self.num_components = dim, obs_dim, num_components
        self.jitter, self.on_symmetric = jitter, on_symmetric

    def encode_prior(self, params) -> GMM:
        """A K-component GMM prior from a vector of prior parameters (MLP → K tokens)."""
        if self.prior_encoder is None:
            raise ValueError(
                "encode_prior: this network was built without prior_param_dim, so it has no "
                "prior encoder; pass a GMM prior instead"
            )
        t = self.prior_encoder(jnp.asarray(params)).reshape(self.num_components, -1)
        return GMM.from_tokens(t, self.dim, jitter=self.jitter)

    def __call__(self, prior, data=None, mask=None) -> GMM:
        """Posterior GMM of one problem: prior (GMM or encoder input), data (N, obs_dim)."""
        if not isinstance(prior, GMM):
            prior = self.encode_prior(prior)
        if prior.batch_shape:
            raise ValueError(
                f"DistributionTransformer: one problem at a time (prior batch shape "
                f"{prior.batch_shape}); batch with jax.vmap"
            )
        if prior.dim != self.dim:
            raise ValueError(f"prior has dimension {prior.dim}, the network expects {self.dim}")
        prior = self._break_symmetry(prior)
        if data is None:
            data = jnp.zeros((0, self.obs_dim))
        data = jnp.asarray(data)
        if data.ndim == 1 and self.obs_dim == 1:
            data = data[:, None]
        if data.ndim != 2 or data.shape[1] != self.obs_dim:
            raise ValueError(
                f"data must have shape (N, obs_dim={self.obs_dim}), got {data.shape}; "
                "batch problems with jax.vmap"
            )
        mask = jnp.ones(data.shape[:1], bool) if mask is None else jnp.asarray(mask, bool)
        if mask.shape != data.shape[:1]:
            raise ValueError(f"mask has shape {mask.shape}, data has {data.shape[0]} observations")
        tokens = prior.tokens()
        h0 = jax.vmap(self.embed)(tokens)
        obs = jax.vmap(self.obs_embed)(data)
        h = h0
        for block in self.blocks:
            h = block(h, obs, mask)
        delta = jax.vmap(self.head)(h) - jax.vmap(self.head)(h0)
        return GMM.from_tokens(tokens + delta, self.dim, jitter=0.0)

    def _break_symmetry(self, prior: GMM) -> GMM:
        if prior.num_components < 2:
            return prior
        sym = is_symmetric(prior)
        if isinstance(sym, jax.core.Tracer):  # cannot warn or raise under a trace
            return _perturb(prior, sym)
        if not bool(sym):
            return prior
        if self.on_symmetric == "error":
            raise ValueError(
                "the prior's components are identical; a permutation-equivariant network would "
                "keep them identical. Break the symmetry, or on_symmetric='warn' perturbs them"
            )
        warnings.warn(
            f"the prior's {prior.num_components} components are identical: a permutation-"
            "equivariant network keeps identical components identical, so they are perturbed "
            "deterministically (means spread by ±0.1 standard deviations)",
            SymmetricPriorWarning,
            stacklevel=3,
        )
        return _perturb(prior, sym)


def _perturb(prior: GMM, sym) -> GMM:
    """Spread identical components' means by ±0.1 standard deviations (deterministic)."""
    k = prior.num_components
    offsets = 0.1 * jnp.linspace(-1.0, 1.0, k)
    shift = offsets[:, None] * prior.scale_tril[:, :, 0]  # along L_k e_1 (unit Mahalanobis)
    means = jnp.where(sym, prior.means + shift, prior.means)
    return GMM(prior.log_weights, means, prior.scale_tril, validate=False)
