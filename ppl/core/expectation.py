"""``ppl.expectation``: a program that samples -> a differentiable, unbiased estimate.

For ``f`` returning a scalar, ``E = expectation(f)`` and ``E(key, *args)`` returns a
surrogate S whose value is an unbiased estimate of E[f(*args)] and whose derivatives
(``jax.grad``, ``jax.jvp``; w.r.t. args and the params ``f`` reads) are unbiased estimates
of the derivatives of that expectation:

    S = sum_c w_c [V_c box(L_c) + B_c]                                       (main runs)
      + sum_c w_c^up sum_(s,j,i) (theta - sg theta) sg(coef sum_a sign_a K[c,s,a,i])
      + sum_c w_c^up sum_k (1 - box(l_k)) sg(K[c,k])                        (leave-one-out)

c ranges over the combinations of jointly enumerated sites (w_c their probability),
V_c is the program value, L_c the reinforce log probabilities, B_c user-baseline terms,
K the values of seeded replays with one element of one mvd / batched-enum site (or one
particle's output) changed. All main runs share one vmap and all replays another, so the
traced program stays linear in the number of sites.

For an *additive* program (value = sum of ``density`` terms - sum of ``simulate`` log
probabilities, like the ELBO) whose other sites are pathwise, the jointly enumerated sites
are summed out by variable elimination instead, from replays on a few rows
(:mod:`~ppl.core.factored_enum`); and a local site whose dependent terms all lie in its plates
(checked by provenance tracking) needs one replay per alternative with every element
changed at once, read per element: O(N |support|) work instead of O(N^2 |support|).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from numpyro.handlers import seed

from .arguments import check_key, named_plate_errors
from .factored_enum import FactoredPlan, expected_value, plan_rows, zero_probability
from .runtime import RunState, Target, apply_strategies, box

MAX_JOINT_COMBINATIONS = 1 << 16
_NO_TARGET = Target(jnp.int32(-1), jnp.int32(0), jnp.int32(0))


class TermInfo(NamedTuple):
    """Static description of a log-density term of an additive program."""

    plates: tuple  # (name, dim) of its plates
    sign: float
    name: str
    orders: set  # orders of the analysed sites it depends on (provenance)


class Plan(NamedTuple):
    """Static result of discovery: the random choices and, for additive programs, terms."""

    sites: list
    terms: list  # TermInfo per log-density term (additive programs)
    factored: FactoredPlan | None = None  # joint-enum sites by variable elimination


def _scalar(value, where):
    if value is None:
        raise TypeError(
            f"program {where!r} returned None; an expectation's program must return a "
            "scalar (a missing `return`?)"
        )
    value = jnp.asarray(value)
    if value.shape != ():
        raise ValueError(
            f"{where}: the program must return a scalar, got shape {value.shape}; "
            "sum or average it first"
        )
    if not jnp.issubdtype(value.dtype, jnp.floating):
        value = value.astype(jnp.result_type(float))
    return value


class Expectation:
    """The expectation of a program; build it with :func:`expectation`.

    ``additive=True`` here is the caller's guarantee that the program returns Σ density
    terms − Σ simulate log q (ppl's ELBO family and the tests that exercise that path);
    the public constructors refuse it for programs not additive by construction.
    """

    def __init__(
        self,
        fn: Callable,
        additive: bool = False,
        rao_blackwellize: bool = True,
        stick_the_landing: bool = False,
    ):
        if not callable(fn):
            raise TypeError(f"ppl.expectation needs a callable program, got {type(fn)}")
        if stick_the_landing and not additive:
            raise ValueError(
                "stick_the_landing needs an additive program (ELBO-like): use "
                "ppl.objectives.elbo(stick_the_landing=True); in other programs use "
                "ppl.simulate(...).log_prob_stl where it is valid"
            )
        self.fn = fn
        self.additive = additive
        self.rao_blackwellize = rao_blackwellize
        self.stick_the_landing = stick_the_landing

    # -- runs -----------------------------------------------------------------------
    def _run(self, state, key, args, kwargs):
        with named_plate_errors(), seed(rng_seed=key), apply_strategies(state=state):
            value = self.fn(*args, **kwargs)
        return _scalar(value, getattr(self.fn, "__name__", "program"))

    def discover(self, key, *args, **kwargs) -> Plan:
        """The static plan: random choices (strategies, sizes) in execution order."""
        check_key(key, "ppl.expectation")
        state = RunState("discover")
        jax.eval_shape(lambda: self._run(state, key, args, kwargs))
        sites, terms, factored = state.sites, [], None
        if self.additive:
            terms = self._term_plan(sites, key, args, kwargs)
            factored = self._factored_plan(sites, key, args, kwargs)
        return Plan(sites, terms, factored)

    def _factored_plan(self, sites, key, args, kwargs):
        """Additive program whose random choices are joint-enum and reparam sites only: the
        factors (terms, log q of each joint site) and the sites each reads (provenance),
        for variable elimination (:mod:`~ppl.core.factored_enum`); None where it does not
        apply or would not need fewer runs than joint enumeration."""
        from numpyro.ops.provenance import eval_provenance

        joint = [s for s in sites if s.kind == "joint_enum"]
        if len(joint) < 2 or self.stick_the_landing:
            return None
        if any(s.kind not in ("joint_enum", "reparam") for s in sites):
            return None
        position = {s.order: j for j, s in enumerate(joint)}
        signs = []

        def factors_of(**values):
            forced = {s.order: values[f"s{s.order}"] for s in joint}
            state = RunState("provenance", {}, _NO_TARGET, sites, forced=forced)
            self._run(state, key, args, kwargs)
            signs[:] = [t.sign for t in state.terms]
            return [t.lp for t in state.terms], [state.enum_lp[s.order] for s in joint]

        inputs = {f"s{s.order}": jnp.zeros(s.value_shape, s.value_dtype) for s in joint}
        term_deps, weight_deps = eval_provenance(factors_of, **inputs)

        def read(dep):
            return {position[int(d[1:])] for d in dep if d.startswith("s")}

        term_sets = [read(dep) for dep in term_deps]
        weight_sets = [read(dep) | {j} for j, dep in enumerate(weight_deps)]
        sizes = [s.support_size for s in joint]
        return plan_rows(sizes, term_sets, weight_sets, signs)

    def _term_plan(self, sites, key, args, kwargs):
        """Which log-density terms depend on which site (provenance); mark fast / RB sites.

        Returns per term (plates, sign, orders of the analysed sites it depends on).
        """
        from numpyro.ops.provenance import eval_provenance

        last_joint = max((s.order for s in sites if s.kind == "joint_enum"), default=-1)
        fast = [
            s
            for s in sites
            if s.kind == "local" and s.plate_aligned and not s.in_particles and s.order > last_joint
        ]
        rb = [s for s in sites if s.kind == "reinforce" and not s.in_particles]
        if not self.rao_blackwellize:
            rb = []
        other_local = [
            s for s in sites if s.kind == "local" and not s.in_particles and s not in fast
        ]
        analysed = fast + other_local + rb
        if not analysed and not self.stick_the_landing:
            return []
        combo = {s.order: jnp.int32(0) for s in sites if s.kind == "joint_enum"}
        meta = []

        def terms_of(**values):
            forced = {s.order: values[f"s{s.order}"] for s in analysed}
            state = RunState("provenance", combo, _NO_TARGET, sites, forced=forced)
            self._run(state, key, args, kwargs)
            meta[:] = [(t.plates, t.sign, t.name) for t in state.terms]
            return [t.lp for t in state.terms]

        inputs = {f"s{s.order}": jnp.zeros(s.value_shape, s.value_dtype) for s in analysed}
        deps = eval_provenance(terms_of, **inputs)
        terms = []
        for (plates, sign, name), dep in zip(meta, deps, strict=True):
            orders = {int(d[1:]) for d in dep if d.startswith("s")}
            terms.append(TermInfo(plates, sign, name, orders))

        def in_plates(s):
            return all(set(s.plates) <= set(t.plates) for t in terms if s.order in t.orders)

        for s in fast:
            s.fast = in_plates(s)
        for s in rb:
            s.rao_blackwell = True
        return terms

    # -- the estimate ---------------------------------------------------------------
    def __call__(self, key, *args, **kwargs):
        """Differentiable unbiased estimate of E[f(*args, **kwargs)] under ``key``."""
        return self._estimate(key, args, kwargs)[0]

    def with_updates(self, key, *args, **kwargs):
        """(estimate, updates): ``updates`` maps mutable-site names to their next values:
        each :func:`ppl.running_baseline` the program reads, and what it set with
        ``runtime.update_state`` (e.g. the chain of ``ppl.objectives.msc``)."""
        return self._estimate(key, args, kwargs)

    def _estimate(self, key, args, kwargs):
        plan = self.discover(key, *args, **kwargs)
        sites = plan.sites
        if plan.factored is not None:
            return self._factored_estimate(plan, key, args, kwargs)
        joint = [s for s in sites if s.kind == "joint_enum"]
        sizes = [s.support_size for s in joint]
        n_comb = int(np.prod(sizes)) if sizes else 1
        if n_comb > MAX_JOINT_COMBINATIONS:
            raise ValueError(
                f"joint enumeration of {[s.name for s in joint]} needs {n_comb} "
                "combinations; use 'mvd' or 'reinforce' for some of these sites"
            )
        combos = np.array(list(itertools.product(*[range(n) for n in sizes])), np.int32)
        combos = jnp.asarray(combos.reshape(n_comb, len(joint)))

        def state_for(mode, combo, target):
            forced = {s.order: combo[j] for j, s in enumerate(joint)}
            return RunState(mode, forced, target, sites)

        running = {}  # order -> running baseline (static name and decay; state per combo)

        def main(combo):
            st = state_for("main", combo, _NO_TARGET)
            value = self._run(st, key, args, kwargs)
            terms = [(t.lp, t.lp_fixed_value) for t in st.terms] if self.additive else []
            running.update(st.running)
            running_states = {o: b.state for o, b in st.running.items()}
            rb = (st.reinforce_lp, terms, st.learned, running_states, st.state_updates)
            return value, st.score, st.extra, st.enum_lw, st.local, st.loo, rb

        if n_comb == 1:
            outs = jax.tree.map(lambda x: x[None], main(combos[0]))
        else:
            outs = jax.vmap(main)(combos)
        value, score, extra, enum_lw, local, loo, rb = outs
        rb_lp, main_terms, learned, running_states, state_updates = rb
        weight = jnp.exp(enum_lw)
        # a combination of probability 0 contributes 0 whatever its value (+-inf, NaN):
        # its per-combination outputs are zeroed before any product with its weight
        live = _positive(weight)
        value, score, extra, rb_lp, main_terms, learned = _live_rows(
            live, (value, score, extra, rb_lp, main_terms, learned)
        )
        estimate = jnp.sum(weight * (value * box(score) + extra))
        # program-set mutable state: from the first enumeration combination
        updates = jax.tree.map(lambda x: x[0], state_updates)
        for s in sites:
            if s.kind != "reinforce":
                continue
            cost = value[:, None]  # what the score multiplies: the value, or its RB cost
            if s.rao_blackwell:
                term, cost = _rao_blackwell_term(s, plan.terms, rb_lp, main_terms, weight)
                estimate = estimate + term
            if s.order in learned:
                estimate = estimate + _baseline_fit_term(learned[s.order], cost, weight)
            if s.order in running:
                state = jax.tree.map(lambda x: x[0], running_states[s.order])
                baseline = running[s.order]._replace(state=state)
                expected_cost = jnp.sum(weight[:, None] * cost, axis=0)
                if baseline.name in updates:
                    raise ValueError(
                        f"running baseline '{baseline.name}' serves two sites; give each its own"
                    )
                updates[baseline.name] = baseline.updated(expected_cost)
        kinds = {"reinforce", "local"} if self.rao_blackwellize else set()
        if self.stick_the_landing:
            kinds.add("reparam")
        if self.additive and kinds:
            fixed = [t[1] for t in main_terms]
            estimate = estimate + _drop_own_score(sites, plan.terms, fixed, weight, kinds)

        def replays(rows, terms):
            """Seeded replays for every (combination, row): (C, R) values or terms."""
            if len(rows) == 0:
                return None

            def one(combo, row):
                st = state_for("replay", combo, Target(row[0], row[1], row[2]))
                value = self._run(st, key, args, kwargs)
                if terms:
                    return [lax.stop_gradient(t.lp) for t in st.terms]
                w_down = jnp.exp(st.lw_down)
                return lax.stop_gradient(w_down * _live_rows(_positive(w_down), value))

            rows = jnp.asarray(rows)
            return jax.vmap(lambda c: jax.vmap(lambda r: one(c, r))(rows))(combos)

        single = replays(_single_rows(sites), terms=False)  # (C, R)
        fast = replays(_fast_rows(sites), terms=True)  # per term (C, R_fast, *shape)
        offset = fast_offset = 0
        for s in sites:
            if s.kind == "local":
                if s.fast:
                    block = _fast_values(s, plan.terms, fast, fast_offset)
                    fast_offset += s.num_alternatives
                else:
                    n = s.num_elements * s.num_alternatives
                    block = single[:, offset : offset + n].reshape(n_comb, s.num_alternatives, -1)
                    offset += n
                theta, coef, lw_up = local[s.order]
                w_up = jnp.exp(lw_up)
                block, theta, coef = _live_rows(_positive(w_up), (block, theta, coef))
                estimate = estimate + _local_term(s, block, theta, coef, w_up)
            elif s.kind == "particles" and s.loo:
                baseline = single[:, offset : offset + s.num_particles]
                offset += s.num_particles
                loo_score, lw_up = loo[s.order]
                w_up = jnp.exp(lw_up)
                loo_score, baseline = _live_rows(_positive(w_up), (loo_score, baseline))
                term = jnp.sum((1.0 - box(loo_score)) * baseline, axis=1)
                estimate = estimate + jnp.sum(w_up * term)
        return estimate, updates

    def _factored_estimate(self, plan, key, args, kwargs):
        """The exact expectation over the joint-enum sites by variable elimination, from
        seeded replays on the plan's rows (the other sites are reparameterized)."""
        joint = [s for s in plan.sites if s.kind == "joint_enum"]

        def row(indices):
            combo = {s.order: indices[j] for j, s in enumerate(joint)}  # support indices
            st = RunState("main", combo, _NO_TARGET, plan.sites)
            self._run(st, key, args, kwargs)
            weights = [st.enum_lp[s.order] for s in joint]
            return [t.lp for t in st.terms], weights, st.state_updates

        terms, weights, state_updates = jax.vmap(row)(jnp.asarray(plan.factored.rows))
        updates = jax.tree.map(lambda x: x[0], state_updates)
        return expected_value(plan.factored, terms, weights), updates

    # -- conveniences ---------------------------------------------------------------
    def estimate(self, key, *args, **kwargs):
        """The value only (no gradient tracking)."""
        return lax.stop_gradient(self(key, *args, **kwargs))

    def grad(self, key, *args, argnums=0, **kwargs):
        """Unbiased estimate of the gradient w.r.t. ``args[argnums]``."""
        return jax.grad(lambda *a: self(key, *a, **kwargs), argnums=argnums)(*args)

    def value_and_grad(self, key, *args, argnums=0, **kwargs):
        """(estimate, gradient estimate) w.r.t. ``args[argnums]``."""
        return jax.value_and_grad(lambda *a: self(key, *a, **kwargs), argnums=argnums)(*args)


def _positive(weight):
    """Which weights count as positive probabilities (not :func:`zero_probability`)."""
    return ~zero_probability(weight)


def _live_rows(live, tree):
    """``tree`` with the rows (leading axis) where ``live`` is False set to 0.

    A combination of the jointly enumerated sites of probability 0 (:func:`_positive`)
    contributes 0 to the expectation whatever the program computed there (+-inf from
    log 0, or NaN): the convention 0 * log 0 = 0, the limit as its probability goes to 0
    with the value held; and 0 to the gradient. Zeroing the row before it meets its
    weight (a where on the inputs of the product, so no 0 * inf in reverse mode either)
    does that; a row of positive probability and value -inf still gives -inf. A value
    whose own derivative is infinite there (theta * log 0) still gives a NaN gradient:
    0 * inf inside the program's chain rule, out of reach here.
    """

    def one(x):
        if x is None or not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
            return x
        mask = jnp.reshape(live, jnp.shape(live) + (1,) * (jnp.ndim(x) - jnp.ndim(live)))
        return jnp.where(mask, x, jnp.zeros((), jnp.result_type(x)))

    return jax.tree.map(one, tree, is_leaf=lambda x: x is None)


def _single_rows(sites) -> np.ndarray:
    """Rows (order, element, alternative) of every single-element replay, grouped by site."""
    rows = []
    for s in sites:
        if s.kind == "local" and not s.fast:
            for a in range(s.num_alternatives):
                rows.extend((s.order, e, a) for e in range(s.num_elements))
        elif s.kind == "particles" and s.loo:
            rows.extend((s.order, k, 0) for k in range(s.num_particles))
    return np.array(rows, np.int32).reshape(-1, 3)


def _fast_rows(sites) -> np.ndarray:
    """Rows (order, -1, alternative): every element of a fast site changed at once."""
    rows = [
        (s.order, -1, a)
        for s in sites
        if s.kind == "local" and s.fast
        for a in range(s.num_alternatives)
    ]
    return np.array(rows, np.int32).reshape(-1, 3)


def _fast_values(site, terms, fast, offset):
    """K[c, a, i]: the terms that depend on the site, read at its element i.

    Terms that do not depend on the site are the same for every alternative and cancel
    in the rule (its pairs sum to a zero-mean combination), so they are left out.
    """
    n_alt = site.num_alternatives
    n_comb = fast[0].shape[0]
    total = jnp.zeros((n_comb, n_alt, site.num_elements))
    for t, info in enumerate(terms):
        if site.order in info.orders:
            lp = fast[t][:, offset : offset + n_alt]
            total = total + info.sign * _per_element(lp, site)
    return total


def _rao_blackwell_term(site, terms, rb_lp, main_terms, weight):
    """sum_c w_c sum_i (box(log q_i) - 1) sg(downstream cost_i): the score of each element
    multiplies only the terms that depend on the site, each read at the element's index in
    the plates they share with the site (plate elements are conditionally independent)
    and summed over their other dims, as TraceGraph_ELBO does.
    """
    lp = rb_lp[site.order]  # (C, *value shape)
    n_comb = lp.shape[0]
    cost = jnp.zeros((n_comb, site.num_elements if site.plate_aligned else 1))
    for t, info in enumerate(terms):
        if site.order in info.orders:
            term = main_terms[t][0]
            if site.plate_aligned:
                shared = {dim for plate, dim in site.plates if (plate, dim) in info.plates}
                cost = cost + info.sign * _per_element(term, site, lead=1, keep=shared)
            else:
                cost = cost + info.sign * jnp.sum(term.reshape(n_comb, -1), axis=1, keepdims=True)
    lp = lp.reshape(n_comb, -1)
    if not site.plate_aligned:
        lp = jnp.sum(lp, axis=1, keepdims=True)
    inner = jnp.sum((box(lp) - 1.0) * lax.stop_gradient(cost), axis=1)
    return jnp.sum(weight * inner), cost


def _baseline_fit_term(baseline, cost, weight):
    """Zero-valued term whose gradient trains the baseline: -grad sum (sg(cost) - b)^2."""
    n_comb = weight.shape[0]
    b = baseline.reshape(n_comb, -1)
    if cost.shape[1] == 1:  # cost of the whole site: compare with the summed baseline
        b = jnp.sum(b, axis=1, keepdims=True)
    sq = jnp.sum((lax.stop_gradient(cost) - b) ** 2, axis=1)
    return jnp.sum(weight * (lax.stop_gradient(sq) - sq))


def _drop_own_score(sites, terms, fixed_terms, weight, kinds):
    """Cancel the direct gradient of a guide site's own -log q term (at a fixed value).

    E_q[grad_theta log q_theta(z)] = 0 at a stop-gradient z: that part of an additive
    program's gradient is pure noise and removing it keeps the estimator unbiased. For
    non-reparameterized sites it is part of Rao-Blackwellization (TraceGraph_ELBO does the
    same); for reparameterized sites it is "sticking the landing" (Roeder et al. 2017).
    """
    names = [s.name for s in sites if s.kind != "particles"]
    total = 0.0
    for s in sites:
        if s.kind not in kinds or s.in_particles or names.count(s.name) != 1:
            continue
        own = [t for t, info in enumerate(terms) if info.name == s.name and info.sign < 0]
        if len(own) != 1:
            continue
        if fixed_terms[own[0]] is None:
            raise ValueError(
                f"site '{s.name}': its log q cannot be evaluated at a fixed value (the "
                "guide's transform has no inverse), which stick_the_landing and the "
                "Rao-Blackwellized score need; use stick_the_landing=False"
            )
        lp = jnp.sum(fixed_terms[own[0]].reshape(weight.shape[0], -1), axis=1)
        total = total + jnp.sum(weight * (lp - lax.stop_gradient(lp)))
    return total


def _per_element(lp, site, lead=2, keep=None):
    """Sum a (*lead, *shape) term over dims not in ``keep`` (default: the site's plate dims,
    all of which the term lies in) and broadcast it to the site's elements -> (*lead, N)."""
    lead, shape = lp.shape[:lead], lp.shape[lead:]
    if keep is None:
        keep = {dim for _, dim in site.plates}
    axes = tuple(len(lead) + i for i in range(len(shape)) if (i - len(shape)) not in keep)
    lp = jnp.sum(lp, axis=axes, keepdims=True)
    batch = site.batch_shape
    core = lp.shape[len(lead) :]
    if len(core) >= len(batch):
        core = core[len(core) - len(batch) :]
    else:
        core = (1,) * (len(batch) - len(core)) + core
    lp = lp.reshape(lead + core)
    return jnp.broadcast_to(lp, lead + tuple(batch)).reshape(lead + (-1,))


def _local_term(site, replays, theta, coef, w_up):
    """sum_c w_up sum_(j,i) (theta - sg theta) sg(coef * sum_a sign_a K[c, a, i])."""
    diffs = []
    for j in range(site.num_params):
        acc = 0.0
        for a, (pj, sign) in enumerate(site.pairs):
            if pj == j:
                acc = acc + sign * replays[:, a, :]
        diffs.append(acc)
    diff = jnp.stack(diffs, axis=1)  # (C, P, N)
    inner = (theta - lax.stop_gradient(theta)) * lax.stop_gradient(coef * diff)
    return jnp.sum(w_up * jnp.sum(inner, axis=(1, 2)))


ADDITIVE_REFUSED = (
    "additive=True cannot be verified for a user's program, and a program whose value is "
    "not exactly its ppl.density terms minus its ppl.simulate log q (e.g. a weighted or "
    "exponentiated ELBO) would get a biased gradient with no error; the flag is reserved "
    "for ppl's ELBO family, additive by construction. Drop it (the estimate stays "
    "unbiased), or use ppl.objectives.elbo(...) (Rao-Blackwellized, plate fast path, "
    "stick_the_landing)"
)


def additive_by_construction(fn: Callable) -> Callable:
    """Mark ``fn`` (one of ppl's own programs) as returning Σ density terms − Σ simulate
    log q by construction: only such programs may be wrapped with ``additive=True``."""
    fn.__ppl_additive__ = True
    return fn


def refuse_unverified_additive(fn: Callable, additive: bool, who: str) -> None:
    """``additive=True`` is a ``ValueError`` unless ``fn`` is additive by construction."""
    if additive and getattr(fn, "__ppl_additive__", False) is not True:
        raise ValueError(f"{who}: {ADDITIVE_REFUSED}")


def expectation(
    fn: Callable,
    *,
    additive: bool = False,
    rao_blackwellize: bool = True,
    stick_the_landing: bool = False,
) -> Expectation:
    """``E = ppl.expectation(f)``: ``E(key, *args)`` is a differentiable unbiased estimate.

    ``reinforce`` scores multiply the program's whole value (and its baselines); ppl's
    ELBO family (``ppl.objectives.elbo``) additionally uses that its value is a sum of
    density terms (additive by construction): each score then multiplies only the terms
    that depend on its site, element by element in plates (Rao-Blackwellization, as
    NumPyro's ``TraceGraph_ELBO``; ``rao_blackwellize=False`` turns it off), and plate
    sites with ``enum`` / ``mvd`` cost O(N |support|) instead of O(N^2 |support|).
    ``additive=True`` on a user's program is refused (a ``ValueError``): it cannot be
    verified, and a wrong declaration would bias the gradient silently; so is
    ``stick_the_landing=True``, which needs it.

    Example::

        def f(p):
            z = numpyro.sample("z", dist.Bernoulli(p), infer={"grad": "mvd"})
            return (z - 0.3) ** 2

        E = ppl.expectation(f)
        value, grad = E.value_and_grad(jax.random.PRNGKey(0), 0.4)
    """
    refuse_unverified_additive(fn, additive, "ppl.expectation")
    return Expectation(
        fn,
        additive=bool(additive),
        rao_blackwellize=rao_blackwellize,
        stick_the_landing=stick_the_landing,
    )
