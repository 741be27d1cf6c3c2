"""Jointly enumerated sites of an additive program, summed out by variable elimination.

For a program whose value is a sum of log-density terms (ppl's ELBO family), the exact
expectation over its jointly enumerated guide sites z needs, for each term, only the
enumerated sites that term reads:

    E_q[sum_i c_i(z_(S_i))] = d/dt log sum_z exp(sum_k log q_k(z_(P_k)) + t sum_i c_i(z_(S_i)))

at t = 0 (``jax.jvp``), a sum-product over factors on small sets of sites, contracted by
funsor's variable elimination: O(K S^(w+1)) for a guide of tree-width w instead of the
S^K joint assignments. Its gradient is autodiff through that exact sum (as
``TraceEnum_ELBO``).

The sets S_i (a term) and P_k (a site's log q) come from provenance tracking, with every
enumerated value an input of its own. Their tables come from seeded replays of the whole
program on few *rows*: the sites are coloured so that no two sites read by one factor
share a colour, and the rows range over the values of each colour, S^(colours) rows (4
for a chain or a tree of binary sites); a factor's table entry is read from a row that
gives its sites those values (the factor does not read the others). No broadcasting
discipline is asked of the program: each row is an ordinary run with scalar values.

The derivative is taken as a jvp along the cost tables, and an entry of probability 0
contributes 0 whatever its cost (``_exp``): a guide value of probability 0 where the
model's log density is -inf (or the guide's own -log q = +inf) gives a finite ELBO and
gradient, not NaN from 0 * inf.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import funsor
import jax
import jax.numpy as jnp
import numpy as np

funsor.set_backend("jax")


class Scope(NamedTuple):
    """A table over the enumerated sites ``sites`` (positions among the joint sites)."""

    sites: tuple
    index: tuple  # basic index into the rows laid out by colour: its sites' values
    perm: tuple  # then the axes in the order of ``sites``


class FactoredPlan(NamedTuple):
    """Static plan: the rows to replay and how each factor's table is read from them.

    Factors are added up per *scope*, a maximal set of sites read together (a factor on
    fewer sites is constant along the others), so funsor sees one table per scope.
    """

    rows: np.ndarray  # (R, J) support index of each joint site in each row
    ranges: tuple  # the rows are the grid of one digit per colour, of these ranges
    sizes: tuple  # support size of each joint site
    scopes: list  # Scope: the maximal sets read by the factors
    terms: list  # per log-density term: (scope index or -1 if it reads none, sign)
    weights: list  # per joint site (its log q): scope index


def plan_rows(sizes, term_sets, weight_sets, signs) -> FactoredPlan | None:
    """Colour the sites (greedily, in execution order) and lay out the rows; None when the
    rows would be no fewer than the joint assignments (nothing to gain)."""
    n = len(sizes)
    neighbours = [set() for _ in range(n)]
    for group in list(term_sets) + list(weight_sets):
        for a in group:
            neighbours[a] |= set(group) - {a}
    colour = []
    for j in range(n):
        used = {colour[k] for k in neighbours[j] if k < j}
        colour.append(min(set(range(n + 1)) - used))
    ranges = [max(sizes[j] for j in range(n) if colour[j] == c) for c in range(max(colour) + 1)]
    if int(np.prod(ranges)) >= int(np.prod(sizes)):
        return None
    digits = np.indices(ranges).reshape(len(ranges), -1).T  # row r: its digit per colour
    rows = np.stack([digits[:, colour[j]] % sizes[j] for j in range(n)], axis=1)

    def scope(group):  # a table over ``group``: other colours' digits at 0
        by_colour = {colour[j]: j for j in group}
        index = tuple(
            slice(0, sizes[by_colour[c]]) if c in by_colour else 0 for c in range(len(ranges))
        )
        kept = [by_colour[c] for c in sorted(by_colour)]  # axes after indexing
        return Scope(group, index, tuple(kept.index(j) for j in group))

    groups = {frozenset(g) for g in list(term_sets) + list(weight_sets) if g}
    maximal = sorted(tuple(sorted(g)) for g in groups if not any(g < h for h in groups))

    def home(group):
        return next(i for i, h in enumerate(maximal) if set(group) <= set(h)) if group else -1

    return FactoredPlan(
        rows.astype(np.int32),
        tuple(ranges),
        tuple(sizes),
        [scope(h) for h in maximal],
        [(home(g), sign) for g, sign in zip(term_sets, signs, strict=True)],
        [home(g) for g in weight_sets],
    )


def expected_value(plan: FactoredPlan, term_lps, weight_lps):
    """E_q[sum_i sign_i sum(term_i)] from the rows' terms (R, *shape) and log q's (R,)."""
    n_rows = plan.rows.shape[0]
    constant = jnp.zeros(())
    costs = [jnp.zeros(n_rows) for _ in plan.scopes]
    weights = [jnp.zeros(n_rows) for _ in plan.scopes]
    for (home, sign), lp in zip(plan.terms, term_lps, strict=True):
        c = sign * jnp.sum(jnp.reshape(lp, (n_rows, -1)), axis=1)
        if home < 0:  # reads no enumerated site: the same in every row
            constant = constant + c[0]
        else:
            costs[home] = costs[home] + c
    for home, lq in zip(plan.weights, weight_lps, strict=True):
        weights[home] = weights[home] + lq
    names = frozenset(_name(j) for j in range(len(plan.sizes)))

    def log_total(tables):
        factors = [
            _tensor(jnp.reshape(w, plan.ranges)[s.index].transpose(s.perm), s.sites, plan.sizes)
            for s, w in zip(plan.scopes, tables, strict=True)
        ]
        with funsor.interpretations.lazy:
            total = funsor.sum_product.sum_product(
                funsor.ops.logaddexp, funsor.ops.add, factors, eliminate=names, plates=frozenset()
            )
            path = funsor.optimizer.apply_optimizer(total)  # funsor's elimination order
        return _evaluate(path).data

    # d/dt log_total(weights + t costs) at t = 0, as a jvp along the costs: no t * cost
    # in the primal (0 * inf where a cost is infinite)
    _, expected = jax.jvp(log_total, (weights,), (costs,))
    return constant + expected


def _name(j: int) -> str:
    return f"_enum{j}"


def _tensor(data, sites, sizes) -> funsor.Tensor:
    inputs = OrderedDict((_name(j), funsor.Bint[sizes[j]]) for j in sites)
    return funsor.Tensor(data, inputs)


def _evaluate(expr):
    """Evaluate funsor's optimized contraction path by broadcast sums and log-sum-exps
    (funsor's ``Tensor`` ops): its default einsum lowers each step to a ``dot_general``,
    which XLA:CPU compiles ~2x slower than the whole rest of the program here."""
    if isinstance(expr, funsor.Tensor):
        return expr
    ops = funsor.ops
    if isinstance(expr, funsor.cnf.Contraction) and expr.bin_op is ops.add:
        if expr.reduced_vars and expr.red_op is not ops.logaddexp:
            return funsor.interpreter.reinterpret(expr)  # anything else: funsor's own evaluation
        terms = [_evaluate(t) for t in expr.terms]
        out = terms[0]
        for t in terms[1:]:
            out = out + t
        return _logsumexp(out, expr.reduced_vars) if expr.reduced_vars else out
    if isinstance(expr, funsor.terms.Reduce) and expr.op is ops.logaddexp:
        return _logsumexp(_evaluate(expr.arg), expr.reduced_vars)
    return funsor.interpreter.reinterpret(expr)  # anything else: funsor's own evaluation


def zero_probability(p):
    """Whether each probability ``p`` counts as 0: at most twice the smallest normal float.

    That is 0 itself, log 0 clipped to the float minimum (NumPyro's ``Categorical(probs)``),
    an underflow, and NumPyro's ``clamp_probs`` of a probability of exactly 0, the smallest
    normal float (``Bernoulli(probs=0.0)``; exp(log(tiny)) rounds up to 1.0000000000000275
    tiny in float64).
    """
    return p <= 2 * jnp.finfo(jnp.result_type(p)).tiny


@jax.custom_jvp
def _exp(x):
    """``jnp.exp`` whose tangent is 0 wherever the value counts as 0
    (:func:`zero_probability`): an entry of probability 0 contributes 0 to the expectation
    whatever its cost (+-inf from log 0, or NaN): the convention 0 * log 0 = 0, the limit
    as its probability goes to 0 with the cost held. A cost of -inf where the probability
    is positive still gives -inf. The masked tangent (double where) keeps reverse mode
    through this rule finite."""
    return jnp.exp(x)


@_exp.defjvp
def _exp_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = jnp.exp(x)
    return y, y * jnp.where(zero_probability(y), 0.0, dx)


def _logsumexp(f: funsor.Tensor, reduced) -> funsor.Tensor:
    """``f.reduce(logaddexp, reduced)`` with a plain max shift: jax's logsumexp, with its
    masks for infinities, compiles ~2x slower. A slice of probability 0 gives -inf with a
    zero tangent (``_exp``; ``log`` guarded by a double where, so no 0 / 0)."""
    names = {v.name if isinstance(v, funsor.Variable) else v for v in reduced}
    axes = tuple(i for i, k in enumerate(f.inputs) if k in names)
    shift = jax.lax.stop_gradient(jnp.max(f.data, axis=axes, keepdims=True))
    shift = jnp.maximum(shift, jnp.finfo(f.data.dtype).min)
    total = jnp.sum(_exp(f.data - shift), axis=axes)
    positive = total > 0
    log_total = jnp.where(positive, jnp.log(jnp.where(positive, total, 1.0)), -jnp.inf)
    data = log_total + jnp.squeeze(shift, axes)
    inputs = OrderedDict((k, d) for k, d in f.inputs.items() if k not in names)
    return funsor.Tensor(data, inputs)
