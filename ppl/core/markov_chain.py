"""The time axis of a ``scan`` Markov chain, contracted by ``jax.lax.scan``.

NumPyro's ``compute_markov_factors`` contracts it with funsor's
``sequential_sum_product``, a parallel prefix product unrolled in Python: the traced
program grows with log2 T. Here a first-order chain's transition factors are multiplied in
log space by one ``lax.scan`` over time,

    M = T_0 ⊗ T_1 ⊗ … ⊗ T_{n-1},   (A ⊗ B)[p, c] = log Σ_k exp(A[p, k] + B[k, c]),

the same funsor as ``sequential_sum_product(logaddexp, add, ...)``, from a program whose
size does not depend on T; where the chain's group reduces to a vector α over its first
step, ``Chain.forward`` carries that vector instead (the forward algorithm,
log Σ α T_0 … T_{n-1}, O(T S²)). Higher-order chains keep NumPyro's
``sarkka_bilmes_product``.
"""

from __future__ import annotations

import functools
import operator
from collections import OrderedDict
from typing import NamedTuple

import funsor
import jax
import jax.numpy as jnp
import numpy as np
from numpyro.contrib.funsor.infer_util import _get_shift, _shift_name, compute_markov_factors


def _with_inputs(f: funsor.Tensor, needed: OrderedDict) -> funsor.Tensor:
    """``f`` broadcast to every input of ``needed`` it lacks (constant along them)."""
    missing = OrderedDict((k, d) for k, d in needed.items() if k not in f.inputs)
    if not missing:
        return f
    shape = tuple(d.size for d in missing.values())
    return f + funsor.Tensor(jnp.zeros(shape, f.data.dtype), missing)


def _log_matmul(a, b):
    """(…, P, K) ⊗ (…, K, C) in log space. Small matrices (K ≤ 8): logsumexp over the
    broadcast sum; larger: a matrix product of exp(a − row max) and exp(b − column max),
    2 exps per entry instead of one per (p, k, c) triple (measured on a 2-core CPU, HMM
    gradient at T = 1000: S = 16 54 → 13 ms; S = 4 1.8 ms broadcast vs 5–6 ms matmul)."""
    if a.shape[-1] <= 8:
        return jax.nn.logsumexp(a[..., :, :, None] + b[..., None, :, :], axis=-2)
    a_max = jax.lax.stop_gradient(jnp.max(a, axis=-1, keepdims=True))
    b_max = jax.lax.stop_gradient(jnp.max(b, axis=-2, keepdims=True))
    a_max = jnp.where(jnp.isfinite(a_max), a_max, 0.0)
    b_max = jnp.where(jnp.isfinite(b_max), b_max, 0.0)
    return jnp.log(jnp.exp(a - a_max) @ jnp.exp(b - b_max)) + a_max + b_max


def _shift(m):
    """A running product's per-step normalizer: its max (0 where not finite), held out of
    the gradient. Carrying the product minus it and summing the shifts once at the end
    (``jnp.sum``, a tree reduction) keeps float32 rounding at the size of one step's
    terms; a carried log-product grows like T and each step then rounds at eps·|log p|
    (float32, T = 5000: 3e-2 off against NumPyro's 6e-4)."""
    m = jax.lax.stop_gradient(m)
    return jnp.where(jnp.isfinite(m), m, 0.0)


def scan_sum_product(trans: funsor.Funsor, time: funsor.Variable, step: dict) -> funsor.Funsor:
    """``funsor.sum_product.sequential_sum_product(logaddexp, add, trans, time, step)`` by
    a ``lax.scan``: ``trans`` has inputs ``time``, the previous-step variables (keys of
    ``step``), the current ones (its values) and batch inputs (plates, globals)."""
    if not isinstance(trans, funsor.Tensor):
        return funsor.sum_product.sequential_sum_product(
            funsor.ops.logaddexp, funsor.ops.add, trans, time, step
        )
    prevs = sorted(step)
    currs = [step[p] for p in prevs]
    domains = {}
    for p, c in zip(prevs, currs, strict=True):
        domains[p] = domains[c] = trans.inputs.get(p, trans.inputs.get(c))
    needed = OrderedDict([(time.name, time.output)])
    needed.update((v, domains[v]) for v in prevs + currs if domains[v] is not None)
    trans = _with_inputs(trans, needed)  # constant along a variable it does not read
    if any(domains[v] is None for v in prevs + currs):  # a pair no factor reads: drop it
        keep = [i for i, p in enumerate(prevs) if domains[p] is not None]
        prevs, currs = [prevs[i] for i in keep], [currs[i] for i in keep]
    batch = [k for k in trans.inputs if k not in (time.name, *prevs, *currs)]
    data = trans.align((time.name, *batch, *prevs, *currs)).data
    num_steps = data.shape[0]
    batch_shape = data.shape[1 : 1 + len(batch)]
    sizes = tuple(trans.inputs[p].size for p in prevs)
    size = int(np.prod(sizes))
    mats = data.reshape((num_steps, *batch_shape, size, size))

    def step(acc, m):
        acc = _log_matmul(acc, m)
        shift = _shift(jnp.max(acc, axis=(-2, -1), keepdims=True))
        return acc - shift, shift

    first = _shift(jnp.max(mats[0], axis=(-2, -1), keepdims=True))
    product, shifts = jax.lax.scan(step, mats[0] - first, mats[1:])
    product = product + (first + jnp.sum(shifts, axis=0))
    product = product.reshape(batch_shape + sizes + sizes)
    inputs = OrderedDict((k, trans.inputs[k]) for k in (*batch, *prevs, *currs))
    return funsor.Tensor(product, inputs)


class Chain(NamedTuple):
    """A first-order chain not yet contracted: ``trans`` over (time, prev, curr, ...); or,
    where ``trans`` would only add factors that read nothing but time, prev and curr, those
    ``parts`` (``trans`` None: their sum is built only if :meth:`product` needs it)."""

    trans: funsor.Funsor | None
    time: funsor.Variable
    step: dict  # previous-step variable -> current-step variable
    parts: tuple = ()

    @property
    def inputs(self):
        if self.trans is not None:
            return self.trans.inputs
        inputs = OrderedDict([(self.time.name, self.time.output)])
        for f in self.parts:
            inputs.update(f.inputs)
        return inputs

    @property
    def dtype(self):
        return (self.parts[0] if self.trans is None else self.trans).data.dtype

    def product(self) -> funsor.Funsor:
        """The chain's transition product over time (a funsor over prev, curr, batch)."""
        trans = self.trans
        if trans is None:  # every step adds the parts that do not read time
            trans = functools.reduce(operator.add, self.parts)
            trans = _with_inputs(trans, OrderedDict([(self.time.name, self.time.output)]))
        return scan_sum_product(trans, self.time, self.step)

    def forward(self, alpha: funsor.Funsor):
        """log Σ alpha(prev) Π_t T_t, carrying a vector (O(T S²), the forward algorithm),
        or None where ``trans`` has inputs besides time, prev and curr, or ``alpha``
        besides prev (then contract :meth:`product` instead)."""
        prevs = sorted(self.step)
        currs = [self.step[p] for p in prevs]
        trans, inputs = self.trans, self.inputs
        if trans is not None and not isinstance(trans, funsor.Tensor):
            return None
        if not isinstance(alpha, funsor.Tensor):
            return None
        if set(inputs) != {self.time.name, *prevs, *currs}:
            return None
        if not set(alpha.inputs) <= set(prevs):
            return None
        sizes = tuple(inputs[p].size for p in prevs)
        size = int(np.prod(sizes))
        alpha = _with_inputs(alpha, OrderedDict((p, inputs[p]) for p in prevs))
        v = alpha.align(tuple(prevs)).data.reshape(size)
        return self._forward_parts(v, self.parts if trans is None else (trans,), prevs, currs)

    def _forward_parts(self, v, parts, prevs, currs):
        """:meth:`forward` from the factors one by one, as a hand-written forward algorithm:
        v' = logsumexp_prev(v + P + P_t) + c + c_t, with P the factors that read the previous
        state (P_t those that also read time), c (c_t) those that read only the current one:
        a time-homogeneous transition matrix stays (S, S), never stacked to (T, S, S). In
        float32 the carried v is less its max at every step (:func:`_shift`), the shifts
        summed once at the end."""
        time, n, size = self.time.name, self.time.output.size, v.shape[0]
        dims = OrderedDict((k, self.inputs[k]) for k in (time, *prevs, *currs))
        pair, curr, const = {False: 0.0, True: 0.0}, {False: 0.0, True: 0.0}, 0.0
        for f in parts:
            timed = time in f.inputs
            if set(f.inputs) & set(prevs):
                keys, shape = (*prevs, *currs), (size, size)
                target = pair
            elif set(f.inputs) & set(currs):
                keys, shape, target = tuple(currs), (size,), curr
            else:  # a constant per step (time-only or none): T of them in the chain
                const = const + (jnp.sum(f.data) if timed else n * f.data)
                continue
            keys = (time, *keys) if timed else keys
            data = _with_inputs(f, OrderedDict((k, dims[k]) for k in keys)).align(keys).data
            target[timed] = target[timed] + data.reshape(((n,) if timed else ()) + shape)
        xs = (pair[True], curr[True])
        xs = tuple(x if jnp.ndim(x) else jnp.zeros((n, 0)) for x in xs)  # placeholders

        def step(v, x):
            m = pair[False] + (x[0] if jnp.ndim(pair[True]) else 0.0)
            c = curr[False] + (x[1] if jnp.ndim(curr[True]) else 0.0)
            v = jax.nn.logsumexp(v[:, None] + m, axis=0) + c
            shift = _shift(jnp.max(v))
            return v - shift, shift

        first = _shift(jnp.max(v))
        v, shifts = jax.lax.scan(step, v - first, xs)
        return jax.nn.logsumexp(v) + (first + jnp.sum(shifts)) + const


def markov_factors(time_factors, time_init, time_markov, sum_vars, prod_vars, history):
    """NumPyro's ``compute_markov_factors`` (log semiring); first-order chains come back
    as :class:`Chain` (contracted later: by :meth:`Chain.forward` where the rest of
    their group reduces to a vector over the first step, else :meth:`Chain.product`)."""
    # a factor constant in time has no time input: broadcast it where funsor's products
    # need one (higher orders), else it is added at every step (Chain)
    if history > 1:
        time_factors = {
            t: [_with_inputs(f, OrderedDict([(t.name, t.output)])) for f in fs]
            for t, fs in time_factors.items()
        }
        return compute_markov_factors(
            time_factors,
            time_init,
            time_markov,
            sum_vars,
            prod_vars,
            history,
            funsor.ops.logaddexp,
            funsor.ops.add,
        )
    factors = []
    for time_var, log_factors in time_factors.items():
        eliminate = (sum_vars | prod_vars) - time_markov[time_var]
        step = {k: _shift_name(k, -_get_shift(k)) for k in time_init[time_var]}
        chain_vars = {time_var.name, *step, *step.values()}
        read = set().union(*(f.inputs for f in log_factors)) | {time_var.name}
        if (
            read == chain_vars
            and not read & eliminate
            and all(isinstance(f, funsor.Tensor) for f in log_factors)
        ):  # the sum of the factors, nothing to eliminate: keep them apart (Chain.forward)
            factors.append(Chain(None, time_var, step, tuple(log_factors)))
            continue
        with funsor.interpretations.lazy:
            lazy = funsor.sum_product.sum_product(
                funsor.ops.logaddexp,
                funsor.ops.add,
                log_factors,
                eliminate=eliminate,
                plates=prod_vars,
            )
        trans = funsor.optimizer.apply_optimizer(lazy)
        if isinstance(trans, funsor.Tensor):
            trans = _with_inputs(trans, OrderedDict([(time_var.name, time_var.output)]))
        factors.append(Chain(trans, time_var, step))
    return factors
