"""Kernel fuzzing: random small discrete models × random kernel compositions, each checked
by the exact invariance checker (πP = π, and detailed balance where the composition is
reversible).

A model is a random Bayesian network of Categorical sites (scalar, or a vector of
conditionally independent elements) written as a NumPyro program; its log density comes
from ``numpyro.infer.util.log_density``. A kernel is a random tree of leaves (single-site
Metropolis–Hastings with uniform, local or independence proposals; an involutive ±1
shift on a ring with a Bernoulli auxiliary; enumerated Gibbs over
a subset of sites, directly or through ``block``) and combinators (``cycle``, ``mixture``,
``repeat``). Both print as readable source, so a failing case shrunk by hypothesis reads
as a reproducer.

Example (hypothesis)::

    @given(kernel_cases())
    def test(case):
        check_case(case)

Needs ``hypothesis`` (a test dependency), so ``ppl.validate`` does not import this module.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from hypothesis import strategies as st
from numpyro.infer.util import log_density

from .. import mcmc
from .invariance import InvarianceReport, check_invariance, target_probs, transition_matrix

__all__ = [
    "DiscreteSite",
    "DiscreteModel",
    "KernelSpec",
    "KernelCase",
    "check_case",
    "discrete_models",
    "kernels",
    "kernel_cases",
]


@dataclass(frozen=True)
class DiscreteSite:
    """A Categorical site with ``size`` values; ``length`` = 0 for a scalar, else that many
    conditionally independent elements; ``logits[parent value]`` when it has a parent
    (a scalar site), else ``logits[0]``."""

    name: str
    size: int
    length: int
    parent: str | None
    logits: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class DiscreteModel:
    """A random Bayesian network of discrete sites plus an optional pairwise factor
    ``coupling · [a == b]`` between two scalar sites (makes the posterior non-tree)."""

    sites: tuple[DiscreteSite, ...]
    factor: tuple[str, str, float] | None = None

    def program(self):
        """The model as a NumPyro program (no arguments)."""

        def model():
            values = {}
            for s in self.sites:
                table = jnp.array(s.logits)
                logits = table[values[s.parent]] if s.parent else table[0]
                d = dist.Categorical(logits=logits)
                if s.length:
                    d = d.expand([s.length]).to_event(1)
                values[s.name] = numpyro.sample(s.name, d)
            if self.factor:
                a, b, c = self.factor
                numpyro.factor("coupling", c * (values[a] == values[b]))

        return model

    def logdensity(self, position) -> jax.Array:
        """log π(position), from NumPyro's ``log_density`` of :meth:`program`."""
        return log_density(self.program(), (), {}, position)[0]

    def states(self) -> dict:
        """Every state of the joint space, stacked along axis 0 (a dict of int arrays)."""
        axes = []
        for s in self.sites:
            axes.append(
                list(itertools.product(range(s.size), repeat=s.length))
                if s.length
                else list(range(s.size))
            )
        combos = list(itertools.product(*axes))
        return {
            s.name: jnp.array([c[i] for c in combos], dtype=jnp.int32)
            for i, s in enumerate(self.sites)
        }

    def initial(self) -> dict:
        """A valid position (every site at 0)."""
        return {s.name: jnp.zeros((s.length,) if s.length else (), jnp.int32) for s in self.sites}

    def source(self) -> str:
        """Readable NumPyro source of the program."""
        lines = ["def model():"]
        for s in self.sites:
            table = [list(row) for row in s.logits]
            logits = f"jnp.array({table})[{s.parent}]" if s.parent else f"jnp.array({table[0]})"
            d = f"dist.Categorical(logits={logits})"
            if s.length:
                d += f".expand([{s.length}]).to_event(1)"
            lines.append(f"    {s.name} = numpyro.sample({s.name!r}, {d})")
        if self.factor:
            a, b, c = self.factor
            lines.append(f"    numpyro.factor('coupling', {c} * ({a} == {b}))")
        return "\n".join(lines)


@dataclass(frozen=True)
class KernelSpec:
    """A node of a random kernel composition: ``kind`` with ``args`` (a leaf) or
    ``children`` (a combinator)."""

    kind: str
    args: tuple = ()
    children: tuple[KernelSpec, ...] = field(default=())

    @property
    def reversible(self) -> bool:
        """Whether detailed balance must hold: MH leaves and single-scalar-site Gibbs are
        reversible; mixtures and powers of reversible kernels are; cycles are not."""
        if self.kind in ("mh_uniform", "mh_local", "independence", "involutive_shift"):
            return True
        if self.kind in ("gibbs", "block_gibbs"):
            return self.args[1]
        if self.kind in ("mixture", "repeat"):
            return all(c.reversible for c in self.children)
        if self.kind == "cycle":
            return len(self.children) == 1 and self.children[0].reversible
        raise ValueError(f"unknown kernel kind {self.kind!r}")

    def num_outcomes(self, model: DiscreteModel) -> int:
        """How many (outcome, probability) pairs the exact ``transition_probs`` lists per
        state (combinators multiply or add them; no merging of duplicates)."""
        sites = {s.name: s for s in model.sites}
        if self.kind in ("mh_uniform", "mh_local", "independence"):
            return 2 * sites[self.args[0]].size
        if self.kind == "involutive_shift":
            return 4
        if self.kind in ("gibbs", "block_gibbs"):
            return int(np.prod([sites[n].size ** max(sites[n].length, 1) for n in self.args[0]]))
        counts = [c.num_outcomes(model) for c in self.children]
        if self.kind == "cycle":
            return int(np.prod(counts))
        if self.kind == "mixture":
            return sum(counts)
        return counts[0] ** self.args[0]

    def build(self, logp: Callable, model: DiscreteModel) -> mcmc.Kernel:
        """The ``ppl.mcmc`` kernel this node describes, targeting ``logp``."""
        sizes = {s.name: s.size for s in model.sites}
        if self.kind in ("mh_uniform", "mh_local", "independence"):
            site = self.args[0]
            return mcmc.block(lambda ld: mcmc.mh(ld, _proposal(self, sizes[site])), logp, site)
        if self.kind == "involutive_shift":
            site, p = self.args
            k = sizes[site]
            return mcmc.block(
                lambda ld: mcmc.involutive(
                    ld, lambda x: dist.Bernoulli(p), lambda x, v: ((x + 2 * v - 1) % k, 1 - v)
                ),
                logp,
                site,
            )
        if self.kind == "gibbs":
            return mcmc.enum_gibbs(logp, {s: jnp.arange(sizes[s]) for s in self.args[0]})
        if self.kind == "block_gibbs":
            sites = list(self.args[0])
            support = {s: jnp.arange(sizes[s]) for s in sites}
            return mcmc.block(lambda ld: mcmc.enum_gibbs(ld, support), logp, sites)
        kernels = [c.build(logp, model) for c in self.children]
        if self.kind == "cycle":
            return mcmc.cycle(*kernels)
        if self.kind == "mixture":
            return mcmc.mixture(kernels, jnp.array(self.args[0]))
        if self.kind == "repeat":
            return mcmc.repeat(kernels[0], self.args[0])
        raise ValueError(f"unknown kernel kind {self.kind!r}")

    def source(self, model: DiscreteModel) -> str:
        """Readable ``ppl.mcmc`` source of the composition (``logp`` the model's log
        density; names from ``ppl.mcmc``, ``jnp``, ``dist``)."""
        sizes = {s.name: s.size for s in model.sites}
        if self.kind in ("mh_uniform", "mh_local", "independence"):
            site, k = self.args[0], sizes[self.args[0]]
            if self.kind == "mh_uniform":
                prop = f"dist.Categorical(logits=jnp.zeros({k}))"
            elif self.kind == "mh_local":
                prop = f"dist.Categorical(logits=-{self.args[1]} * jnp.abs(jnp.arange({k}) - x))"
            else:
                prop = f"dist.Categorical(probs=jnp.array({list(self.args[1])}))"
            return f"block(lambda ld: mh(ld, lambda x: {prop}), logp, {site!r})"
        if self.kind == "involutive_shift":
            site, p = self.args
            inv = f"lambda x, v: ((x + 2 * v - 1) % {sizes[site]}, 1 - v)"
            kernel = f"involutive(ld, lambda x: dist.Bernoulli({p}), {inv})"
            return f"block(lambda ld: {kernel}, logp, {site!r})"
        if self.kind in ("gibbs", "block_gibbs"):
            sup = "{" + ", ".join(f"{s!r}: jnp.arange({sizes[s]})" for s in self.args[0]) + "}"
            if self.kind == "gibbs":
                return f"enum_gibbs(logp, {sup})"
            return f"block(lambda ld: enum_gibbs(ld, {sup}), logp, {list(self.args[0])})"
        inner = ", ".join(c.source(model) for c in self.children)
        if self.kind == "cycle":
            return f"cycle({inner})"
        if self.kind == "mixture":
            return f"mixture([{inner}], jnp.array({list(self.args[0])}))"
        return f"repeat({inner}, {self.args[0]})"


def _proposal(spec: KernelSpec, size: int):
    if spec.kind == "mh_uniform":
        return lambda x: dist.Categorical(logits=jnp.zeros(size))
    if spec.kind == "mh_local":
        c = spec.args[1]
        return lambda x: dist.Categorical(logits=-c * jnp.abs(jnp.arange(size) - x))
    probs = jnp.array(spec.args[1])
    return lambda x: dist.Categorical(probs=probs)


@dataclass(frozen=True)
class KernelCase:
    """A random model and a random kernel composition targeting it."""

    model: DiscreteModel
    kernel: KernelSpec

    def source(self) -> str:
        """Readable reproducer: the model (NumPyro), then the kernel (``ppl.mcmc``)."""
        return (
            f"{self.model.source()}\n\n"
            "logp = lambda x: log_density(model, (), {}, x)[0]\n"
            f"kernel = {self.kernel.source(self.model)}"
        )


def check_case(
    case: KernelCase,
    key: jax.Array | None = None,
    num_samples: int = 2000,
    family_alpha: float = 1e-5,
) -> InvarianceReport:
    """Exact πP = π (and detailed balance if the composition is reversible) for a case,
    P from the kernels' exact ``transition_probs``. With ``key``, also that the kernel's
    ``step`` moves with those probabilities: ``num_samples`` steps from every state, each
    count an exact two-sided binomial test against P (Bonferroni over the entries at
    ``family_alpha``). Raises ``AssertionError`` with the report and the reproducer."""
    logp, states = case.model.logdensity, case.model.states()
    kernel = case.kernel.build(logp, case.model)
    try:
        P, _ = transition_matrix(kernel, states)
        report = check_invariance(P, target_probs(logp, states), reversible=case.kernel.reversible)
        if key is not None:
            counts, _ = transition_matrix(kernel, states, key, num_samples)
            _check_counts(np.rint(counts * num_samples), P, num_samples, family_alpha)
        return report
    except AssertionError as err:
        raise AssertionError(f"{err}\n\nreproducer:\n{case.source()}") from None


def _check_counts(counts, P, n, family_alpha):
    from scipy.stats import binom

    P = np.clip(P, 0.0, 1.0)
    p_value = np.minimum(1.0, 2 * np.minimum(binom.cdf(counts, n, P), binom.sf(counts - 1, n, P)))
    bad = ~(p_value >= family_alpha / P.size)  # a NaN p-value fails too
    if np.any(bad):
        lines = [
            f"  P[{i}, {j}] = {P[i, j]:.4f}, step frequency {counts[i, j] / n:.4f} "
            f"(p = {p_value[i, j]:.1e})"
            for i, j in np.argwhere(bad)[:8]
        ]
        raise AssertionError("step disagrees with transition_probs:\n" + "\n".join(lines))


# --- hypothesis strategies ----------------------------------------------------------------

_LOGIT = st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.0, 0.5, 1.0, 2.0])


@st.composite
def discrete_models(draw, max_sites: int = 3, max_states: int = 64) -> DiscreteModel:
    """Random Bayesian networks of 1..``max_sites`` Categorical sites (joint space at most
    ``max_states``), each scalar or a 2-vector, a parent among earlier scalar sites or
    none, random logit tables, and an optional coupling factor."""
    n = draw(st.integers(1, max_sites))
    sites, states = [], 1
    for i in range(n):
        size = draw(st.integers(2, 4))
        length = draw(st.sampled_from([0, 0, 2]))
        if states * size ** max(length, 1) > max_states:
            length, size = 0, 2
            if states * 2 > max_states:
                break
        states *= size ** max(length, 1)
        scalars = [s for s in sites if s.length == 0]
        parent = draw(st.sampled_from([None] + scalars)) if scalars else None
        rows = parent.size if parent else 1
        logits = tuple(tuple(draw(_LOGIT) for _ in range(size)) for _ in range(rows))
        sites.append(DiscreteSite(f"z{i}", size, length, parent.name if parent else None, logits))
    scalars = [s.name for s in sites if s.length == 0]
    factor = None
    if len(scalars) >= 2 and draw(st.booleans()):
        a, b = draw(st.permutations(scalars))[:2]
        factor = (a, b, draw(st.sampled_from([-1.5, 0.7, 2.0])))
    return DiscreteModel(tuple(sites), factor)


def _leaves(model: DiscreteModel):
    scalars = [s for s in model.sites if s.length == 0]
    names = [s.name for s in model.sites]
    options = [
        st.sets(st.sampled_from(names), min_size=1).map(
            lambda ss: KernelSpec(
                "gibbs", (tuple(n for n in names if n in ss), _single_scalar(model, ss))
            )
        ),
        st.sets(st.sampled_from(names), min_size=1).map(
            lambda ss: KernelSpec(
                "block_gibbs", (tuple(n for n in names if n in ss), _single_scalar(model, ss))
            )
        ),
    ]
    if scalars:
        site = st.sampled_from(scalars)
        options += [
            site.map(lambda s: KernelSpec("mh_uniform", (s.name,))),
            st.tuples(site, st.sampled_from([0.2, 0.5, 0.7])).map(
                lambda t: KernelSpec("involutive_shift", (t[0].name, t[1]))
            ),
            st.tuples(site, st.sampled_from([0.5, 1.0, 2.0])).map(
                lambda t: KernelSpec("mh_local", (t[0].name, t[1]))
            ),
            site.flatmap(
                lambda s: st.lists(st.integers(1, 5), min_size=s.size, max_size=s.size).map(
                    lambda w, s=s: KernelSpec(
                        "independence", (s.name, tuple(x / sum(w) for x in w))
                    )
                )
            ),
        ]
    return st.one_of(*options)


def _single_scalar(model, names) -> bool:
    lengths = {s.name: s.length for s in model.sites}
    return len(names) == 1 and all(lengths[n] == 0 for n in names)


def _compose(children):
    return st.one_of(
        st.lists(children, min_size=1, max_size=3).map(
            lambda ks: KernelSpec("cycle", children=tuple(ks))
        ),
        st.lists(children, min_size=2, max_size=3).flatmap(
            lambda ks: st.lists(st.integers(1, 4), min_size=len(ks), max_size=len(ks)).map(
                lambda w, ks=ks: KernelSpec("mixture", (tuple(x / sum(w) for x in w),), tuple(ks))
            )
        ),
        st.tuples(children, st.integers(2, 3)).map(
            lambda t: KernelSpec("repeat", (t[1],), (t[0],))
        ),
    )


def kernels(model: DiscreteModel, max_leaves: int = 4):
    """Random kernel compositions over ``model``'s sites."""
    return st.recursive(_leaves(model), _compose, max_leaves=max_leaves)


@st.composite
def kernel_cases(
    draw, max_sites: int = 3, max_leaves: int = 4, max_outcomes: int = 2048
) -> KernelCase:
    """A random :class:`DiscreteModel` and a random kernel composition targeting it (at most
    ``max_outcomes`` exact outcomes per state, to bound the transition-matrix work)."""
    model = draw(discrete_models(max_sites))
    spec = draw(kernels(model, max_leaves).filter(lambda k: k.num_outcomes(model) <= max_outcomes))
    return KernelCase(model, spec)
