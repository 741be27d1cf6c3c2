"""Amortized forward-KL training of a distribution transformer, with checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from numpyro.handlers import seed, trace

from ..core.arguments import count
from ..infer.checkpoint import CheckpointError, check_target, load_checkpoint, save_checkpoint
from ..sharding import constrain
from .gmm import GMM, as_transform
from .network import DistributionTransformer


def _getter(spec, what: str) -> Callable[[dict], Any]:
    if callable(spec):
        return spec
    if isinstance(spec, str):

        def get(values):
            if spec not in values:
                raise ValueError(
                    f"amortized_forward_kl: the simulator has no sample site '{spec}' ({what}); "
                    f"its sites are {sorted(values)}"
                )
            return values[spec]

        return get
    raise TypeError(f"amortized_forward_kl: {what} must be a site name or a function of the sites")


class AmortizedForwardKL(eqx.Module):
    """E[log q(θ | prior, data)] + c · E[log q(θ | prior, ∅)] (maximize)."""

    simulator: Callable = eqx.field(static=True)
    latent: Callable = eqx.field(static=True)
    data: Callable = eqx.field(static=True)
    prior: Callable = eqx.field(static=True)
    mask: Callable | None = eqx.field(static=True)
    transform: Any = eqx.field(static=True)
    consistency: float = eqx.field(static=True)
    num_problems: int = eqx.field(static=True)
    sequential: float = eqx.field(static=True, default=0.0)

    def simulate(self, key, *args, **kwargs) -> dict:
        """``num_problems`` independent runs of the simulator: {site: values stacked on axis 0}.

        Inside a :func:`ppl.sharding.shard` context the problems are split over its
        ``data`` axis (each device simulates and scores its share; problem ``i`` uses key
        ``split(key, num_problems)[i]`` whatever the number of devices).
        """

        def one(k):
            tr = trace(seed(self.simulator, k)).get_trace(*args, **kwargs)
            return {n: s["value"] for n, s in tr.items() if s["type"] == "sample"}

        keys = constrain(jax.random.split(key, self.num_problems), "data")
        return constrain(jax.vmap(one)(keys), "data")

    def terms(self, net: DistributionTransformer, values: dict) -> dict:
        """Per problem: log q(θ | prior, data), log q(θ | prior, ∅), log q_prior(θ) if encoded."""
        t = self.transform

        def log_q(gmm: GMM, theta):
            z = t.inv(theta)
            return gmm.log_prob(z) - jnp.sum(t.log_abs_det_jacobian(z, theta))

        def one(v):
            theta = jnp.reshape(self.latent(v), (net.dim,))
            prior = self.prior(v)
            if not isinstance(prior, GMM):
                prior = net.encode_prior(prior)
            data = jnp.asarray(self.data(v))
            data = data.reshape(data.shape[0], -1)
            mask = None if self.mask is None else self.mask(v)
            out = {"posterior": log_q(net(prior, data, mask), theta)}
            if self.sequential:
                valid = jnp.ones(data.shape[:1], bool) if mask is None else jnp.asarray(mask)
                first = valid & (jnp.cumsum(valid) <= valid.sum() // 2)
                middle = net(prior, data, first)  # posterior after the first half, as prior
                out["sequential"] = log_q(net(middle, data, valid & ~first), theta)
            if self.consistency:
                empty = jnp.zeros((data.shape[0],), bool)
                out["consistency"] = log_q(net(prior, data, empty), theta)
                if net.prior_encoder is not None:
                    out["prior"] = log_q(prior, theta)
            return out

        return jax.vmap(one)(constrain(jax.lax.stop_gradient(values), "data"))

    def value(self, net: DistributionTransformer, key, *args, **kwargs) -> jax.Array:
        """Monte Carlo estimate of the objective (to maximize) on fresh simulated problems."""
        terms = self.terms(net, self.simulate(key, *args, **kwargs))
        total = terms["posterior"].mean()
        for name in ("consistency", "prior"):
            if name in terms:
                total = total + self.consistency * terms[name].mean()
        if "sequential" in terms:
            total = total + self.sequential * terms["sequential"].mean()
        return total

    def loss(self, net: DistributionTransformer, key, *args, **kwargs) -> jax.Array:
        """The negated :meth:`value` (what an optimizer minimizes)."""
        return -self.value(net, key, *args, **kwargs)


def amortized_forward_kl(
    simulator: Callable,
    *,
    latent: str | Callable,
    data: str | Callable,
    prior: str | Callable,
    mask: str | Callable | None = None,
    transform=None,
    consistency: float = 1.0,
    num_problems: int = 64,
    sequential: float = 0.0,
) -> AmortizedForwardKL:
    """Amortized forward KL: max E_{φ, θ, z}[log q(θ | φ, z)] = −E KL(p(θ | φ, z) ‖ q) + const.

    ``simulator`` is an ordinary NumPyro program (meta-prior over priors φ, prior θ | φ,
    likelihood z | θ). ``latent``, ``data``, ``prior`` and ``mask`` name its sites or are
    functions of the dict of its sample values: ``prior`` gives the network's prior (a
    :class:`GMM`, or parameters for ``net.encode_prior``), ``data`` an (N, obs_dim) array,
    ``mask`` an optional (N,) bool array of valid observations. θ is scored through
    ``transform`` (as in :func:`ppl.dt.constrained`, log-Jacobian included). The
    prior-consistency term, weighted by ``consistency``, scores θ under dt(prior, no data)
    (and under an encoded prior itself). ``sequential`` > 0 adds, with that weight, θ
    scored under dt(dt(prior, first half of the data), second half): it trains the network
    on its own posteriors as priors, which :func:`filter` needs.
    """
    num_problems = count(num_problems, "num_problems", "amortized_forward_kl")
    if consistency < 0 or sequential < 0:
        raise ValueError(
            f"consistency and sequential must be >= 0, got {consistency}, {sequential}"
        )
    return AmortizedForwardKL(
        simulator,
        _getter(latent, "latent"),
        _getter(data, "data"),
        _getter(prior, "prior"),
        None if mask is None else _getter(mask, "mask"),
        as_transform(transform) if transform is not None else _identity(),
        float(consistency),
        num_problems,
        float(sequential),
    )


def _identity():
    from numpyro.distributions.transforms import IdentityTransform

    return IdentityTransform()


def dt_optimizer(total_steps: int, learning_rate: float = 1e-3) -> optax.GradientTransformation:
    """AdamW, linear warm-up then cosine decay over ``total_steps``, gradient norm clipped at 1."""
    warmup = max(1, min(200, total_steps // 10))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup, max(total_steps, warmup + 1), learning_rate * 0.05
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))


_CHUNKS: list = []  # [(key objects, jitted chunk)], most recent last; compared by identity


def _chunk_fn(objective, optimizer, static, args, kwargs):
    """The jitted ``n``-step scan; reused (no recompilation) when ``train`` is called again
    with the same objective and optimizer objects, an equal network skeleton and no args."""
    leaves, treedef = jax.tree.flatten(static)
    ident = (objective, optimizer, *leaves)
    cacheable = not args and not kwargs
    if cacheable:
        for key, fn, td in _CHUNKS:
            if td == treedef and len(key) == len(ident):
                if all(
                    a is b or (type(a) in (int, float, bool, str) and a == b)
                    for a, b in zip(key, ident, strict=True)
                ):
                    return fn

    def loss_fn(p, k):
        return objective.loss(eqx.combine(p, static), k, *args, **kwargs)

    def body(carry, _):
        p, opt_state, k = carry
        k, sub = jax.random.split(k)
        loss, grads = jax.value_and_grad(loss_fn)(p, sub)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state, k), loss

    fn = jax.jit(lambda s, n: lax.scan(body, s, None, length=n), static_argnums=1)
    if cacheable:
        _CHUNKS.append((ident, fn, treedef))
        del _CHUNKS[:-4]
    return fn


class TrainResult(NamedTuple):
    """A trained network, the optimizer state, the RNG key to continue from, and per-step losses."""

    net: DistributionTransformer
    opt_state: Any
    key: jax.Array
    losses: np.ndarray


def train(
    net: DistributionTransformer,
    objective: AmortizedForwardKL,
    key,
    num_steps: int,
    *args,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float = 1e-3,
    checkpoint: str | Path | None = None,
    every: int = 100,
    progress: bool = False,
    **kwargs,
) -> TrainResult:
    """Minimize ``objective.loss`` with optax for ``num_steps`` steps (fresh problems each step).

    The state (network arrays, optimizer state, RNG key) is saved with
    :func:`ppl.save_checkpoint` to ``checkpoint`` every ``every`` steps; when the file
    exists, training resumes from it, bit-identical to an uninterrupted run. The default
    optimizer is ``dt_optimizer(num_steps, learning_rate)``: its schedule depends on
    ``num_steps``, so pass ``optimizer`` explicitly when resuming with another count.
    ``progress=True`` shows a tqdm bar. ``args``/``kwargs`` go to the simulator.
    """
    num_steps = count(num_steps, "num_steps", "train", minimum=0)
    every = count(every, "every", "train")
    if checkpoint is not None:
        check_target(checkpoint)  # before any work
    optimizer = dt_optimizer(num_steps, learning_rate) if optimizer is None else optimizer
    params, static = eqx.partition(net, eqx.is_inexact_array)
    state = (params, optimizer.init(params), key)
    step, losses = 0, [np.zeros((0,), np.float32)]
    if checkpoint is not None and Path(checkpoint).exists():
        state, step, saved = load_checkpoint(checkpoint, like=state)
        losses = [saved]
        if step > num_steps:
            raise CheckpointError(f"{checkpoint} is at step {step}, past num_steps={num_steps}")

    chunk = _chunk_fn(objective, optimizer, static, args, kwargs)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=step, desc="dt train")
    try:
        while step < num_steps:
            n = min(every, num_steps - step)
            state, chunk_losses = chunk(state, n)
            chunk_losses = np.asarray(chunk_losses)
            if not np.all(np.isfinite(chunk_losses)):
                bad = step + int(np.argmin(np.isfinite(chunk_losses)))
                raise FloatingPointError(f"train: the loss is not finite at step {bad}")
            step += n
            losses.append(chunk_losses)
            if checkpoint is not None:
                save_checkpoint(checkpoint, state, step, np.concatenate(losses))
            if bar is not None:
                bar.update(n)
                bar.set_postfix(loss=float(chunk_losses.mean()))
    finally:
        if bar is not None:
            bar.close()
    params, opt_state, key = state
    return TrainResult(eqx.combine(params, static), opt_state, key, np.concatenate(losses))
