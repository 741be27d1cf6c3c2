"""Random small NumPyro programs with exact references, for fuzzing ppl's estimators.

A :class:`ProgramSpec` describes a tiny program: 1-4 sample sites in a chain / tree (a
site's parameters are affine in, or sigmoids of, earlier sites' values with random
coefficients), Bernoulli and Categorical (2-3 classes) sites possibly inside a
``numpyro.plate`` of size 2-3, Normal leaves, ``numpyro.factor`` terms, a random gradient
strategy per site among those valid for its distribution, and one of three objectives:

- ``"expectation"``: ``ppl.expectation(f)`` of a user-style nonlinear scalar ``f``
  (sums of products of ``x``, ``(x - b)**2``, ``sin(x + b)`` features of the samples,
  optionally times a parameter); Normal sites are leaves, so the conditional expectation
  of every feature is a closed form given the discrete values;
- ``"elbo"``: ``ppl.objectives.elbo()`` of a model / guide pair over discrete latents
  with Normal observations and factors (random ``rao_blackwellize``);
- ``"iwae"``: ``ppl.objectives.iwae(K)`` with K = 2-3, exact by enumerating K-tuples
  (per element of the plate where it encloses every site, as ``iwae`` takes it).

:meth:`ProgramSpec.to_source` renders the program as NumPyro source; the estimator under
test is that very source (``exec``-ed with the numbers read from arrays, so programs that
differ only in their numbers share one compiled estimator), and the literal rendering is
what a failure prints. :func:`exact_value_and_grad` is an independent plain-JAX reference:
exhaustive enumeration over every discrete value (``itertools.product``), closed forms for
Normal leaves, ``jax.grad`` of the exact sum; Bernoulli log-probabilities are written as
``y * l - softplus(l)`` (NumPyro's logits ``log_prob`` has a wrong gradient at l = 0
under jax 0.10), and generated programs do hit logits exactly 0.

:func:`programs` is the hypothesis strategy (a list of same-structure programs with
different numbers); :func:`check_programs` runs the vectorized estimator over many keys
and asserts |mean - exact| < ``n_sigma`` standard errors per coordinate;
:func:`bonferroni_sigma` derives ``n_sigma`` from a family-wise false-alarm rate.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

LOG_2PI = math.log(2.0 * math.pi)
DISCRETE = ("bernoulli", "categorical")
STRATEGIES = {
    "bernoulli": (None, "enum", "mvd", "reinforce", "reinforce_baseline"),
    "categorical": (None, "enum", "mvd", "reinforce", "reinforce_baseline"),
    "normal": (None, "reparam", "reinforce", "mvd"),
}
# Ranges of the numbers in each kind of slot (hypothesis draws hundredths; 0 is common).
SLOT_RANGES = {"coef": (-0.8, 0.8), "offset": (-1.0, 1.0), "scale": (0.5, 1.5), "data": (-2, 2)}
THETA_RANGE = (-1.0, 1.0)
MAX_COMBINATIONS = 256  # joint discrete values enumerated by the reference
MAX_IWAE_TUPLES = 4096  # (joint values) ** K for IWAE(K)


# --------------------------------------------------------------------------------------
# program descriptions
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Site:
    """One sample site: distribution, plate, strategy, parents and parameter slots.

    ``parents``: ``((index of an earlier site, "id" | "sig"), ...)``; ``theta``: first
    index of its own parameters in the flat parameter vector (Bernoulli 1, Categorical K,
    Normal 2: loc and log scale); ``coefs``: per parent, first coefficient slot (K slots
    for a Categorical); ``baseline``: coefficient slot of a constant reinforce baseline.
    """

    dist: str
    num_classes: int
    plate: bool
    strategy: str | None
    parents: tuple
    theta: int
    coefs: tuple
    baseline: int = -1


@dataclasses.dataclass(frozen=True)
class Feature:
    """A scalar feature of one site's value: ``x``, ``(x - b)**2`` or ``sin(x + b)``,
    summed over the plate (discrete ``sin``: ``sin(sum(x) + b)``)."""

    site: int
    kind: str
    offset: int = -1  # coefficient slot of b


@dataclasses.dataclass(frozen=True)
class Term:
    """``c[coef] * prod(features)``, times ``theta[direct]`` when ``direct >= 0``."""

    coef: int
    features: tuple
    direct: int = -1


@dataclasses.dataclass(frozen=True)
class Obs:
    """An observed Normal site of a model: loc affine in latents, fixed scale, data."""

    plate: bool
    parents: tuple
    theta: int
    coefs: tuple
    scale: int
    data: tuple


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
    """A random program: structure plus numbers (``theta``: parameters, ``coef``: constants).

    ``objective`` is ``"expectation"`` (``sites`` and ``terms`` make ``f(theta)``) or
    ``"elbo"`` / ``"iwae"`` (``sites`` is the guide, ``model_sites`` the model's priors
    over the same latents, ``observations`` and factor ``terms`` the rest of the model;
    ``theta[:num_phi]`` is the guide's param ``phi``, the rest the model's ``psi``).
    ``slot_kinds`` names the range each constant in ``coef`` was drawn from.
    """

    objective: str
    plate_size: int
    sites: tuple
    terms: tuple
    model_sites: tuple = ()
    observations: tuple = ()
    num_particles: int = 1
    rao_blackwellize: bool = True
    num_phi: int = 0
    slot_kinds: tuple = ()
    theta: tuple = ()
    coef: tuple = ()

    @property
    def structure(self) -> ProgramSpec:
        """The spec without its numbers (programs with equal structure share a compile)."""
        return dataclasses.replace(self, theta=(), coef=())

    @property
    def num_coordinates(self) -> int:
        """Number of checked coordinates: the value and one per parameter."""
        return 1 + len(self.theta)

    def to_source(self, literal: bool = True) -> str:
        """The program as NumPyro source. ``literal=True`` inlines the constants (readable,
        runnable as is); ``literal=False`` reads them from an argument array ``c``."""
        return _Renderer(self, literal).render()


# --------------------------------------------------------------------------------------
# rendering as NumPyro source
# --------------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return repr(round(float(x), 4))


class _Renderer:
    def __init__(self, spec: ProgramSpec, literal: bool):
        self.spec, self.literal = spec, literal
        self.elbo = spec.objective != "expectation"

    def c(self, i: int, n: int = 1) -> str:
        if self.literal:
            vals = [_fmt(self.spec.coef[j]) for j in range(i, i + n)]
            return vals[0] if n == 1 else f"jnp.array([{', '.join(vals)}])"
        return f"c[{i}]" if n == 1 else f"c[{i}:{i + n}]"

    def t(self, i: int, n: int = 1) -> str:
        name, j = "theta", i
        if self.elbo:
            name, j = ("phi", i) if i < self.spec.num_phi else ("psi", i - self.spec.num_phi)
        return f"{name}[{j}]" if n == 1 else f"{name}[{j}:{j + n}]"

    def parent(self, sites, p, link, child_plate):
        x = f"z{p}"
        if sites[p].plate and not child_plate:
            x = f"jnp.mean({x})"
        return f"jax.nn.sigmoid({x} - 1.0)" if link == "sig" else x

    def params(self, site, sites, plate):
        k = site.num_classes if site.dist == "categorical" else 1
        expr = self.t(site.theta, k)
        for (p, link), ci in zip(site.parents, site.coefs, strict=True):
            x = self.parent(sites, p, link, plate)
            if site.dist == "categorical":
                expr += f" + {self.c(ci, k)} * jnp.expand_dims({x}, -1)"
            else:
                expr += f" + {self.c(ci)} * {x}"
        if site.dist == "bernoulli":
            return f"dist.Bernoulli(logits={expr})"
        if site.dist == "categorical":
            return f"dist.Categorical(logits={expr})"
        return f"dist.Normal({expr}, jnp.exp({self.t(site.theta + 1)}))"

    def strategy(self, site):
        if site.strategy is None:
            return ""
        if site.strategy == "reinforce_baseline":
            return f', infer={{"grad": ppl.reinforce(baseline={self.c(site.baseline)})}}'
        return f', infer={{"grad": "{site.strategy}"}}'

    def sample_lines(self, sites, with_strategy):
        n, lines = self.spec.plate_size, []
        for i, s in enumerate(sites):
            stmt = f'z{i} = numpyro.sample("z{i}", {self.params(s, sites, s.plate)}'
            stmt += (self.strategy(s) if with_strategy else "") + ")"
            if s.plate:
                lines += [f'with numpyro.plate("p", {n}):', f"    {stmt}"]
            else:
                lines.append(stmt)
        return lines

    def feature(self, f: Feature):
        x = f"z{f.site}"
        normal = self.spec.sites[f.site].dist == "normal" if not self.elbo else False
        if f.kind == "id":
            return f"jnp.sum({x})"
        if f.kind == "sq":
            return f"jnp.sum(({x} - {self.c(f.offset)}) ** 2)"
        if normal:
            return f"jnp.sum(jnp.sin({x} + {self.c(f.offset)}))"
        return f"jnp.sin(jnp.sum({x}) + {self.c(f.offset)})"

    def term(self, t: Term):
        parts = [self.c(t.coef)] + [self.feature(f) for f in t.features]
        if t.direct >= 0:
            parts.append(self.t(t.direct))
        return " * ".join(parts)

    def render(self) -> str:
        spec, ind = self.spec, "    "
        sig = "" if self.literal else ", c"
        if not self.elbo:
            body = self.sample_lines(spec.sites, True)
            body.append("return " + " + ".join(self.term(t) for t in spec.terms))
            head = [f"def f(theta{sig}):"]
            tail = ["", "", "E = ppl.expectation(f)"]
            return "\n".join(head + [ind + b for b in body] + tail) + "\n"
        model = [f'psi = numpyro.param("psi", jnp.zeros({_num_psi(spec)}))']
        model += self.sample_lines(spec.model_sites, False)
        n = spec.plate_size
        for j, o in enumerate(spec.observations):
            loc = self.t(o.theta)
            for (p, link), ci in zip(o.parents, o.coefs, strict=True):
                loc += f" + {self.c(ci)} * {self.parent(spec.model_sites, p, link, o.plate)}"
            data = self.c(o.data[0], len(o.data)) if o.plate else self.c(o.data[0])
            stmt = f'numpyro.sample("x{j}", dist.Normal({loc}, {self.c(o.scale)}), obs={data})'
            model += [f'with numpyro.plate("p", {n}):', ind + stmt] if o.plate else [stmt]
        for j, t in enumerate(spec.terms):
            model.append(f'numpyro.factor("factor{j}", {self.term(t)})')
        guide = [f'phi = numpyro.param("phi", jnp.zeros({spec.num_phi}))']
        guide += self.sample_lines(spec.sites, True)
        if spec.objective == "elbo":
            obj = f"ppl.objectives.elbo(rao_blackwellize={spec.rao_blackwellize})"
        else:
            obj = f"ppl.objectives.iwae({spec.num_particles})"
        out = [f"def model({sig[2:]}):"] + [ind + m for m in model] + ["", ""]
        out += [f"def guide({sig[2:]}):"] + [ind + g for g in guide] + ["", ""]
        out.append(f"objective = {obj}")
        return "\n".join(out) + "\n"


def _num_psi(spec: ProgramSpec) -> int:
    """Size of the model's parameter vector (its sites' and observations' slots)."""
    idx = [s.theta + (s.num_classes if s.dist == "categorical" else 1) for s in spec.model_sites]
    idx += [o.theta + 1 for o in spec.observations]
    return max(idx) - spec.num_phi


HEADER = (
    "import jax\nimport jax.numpy as jnp\nimport numpyro\nimport numpyro.distributions as dist\n\n"
    "import ppl\n\n\n"
)


def describe(spec: ProgramSpec, num_samples: int = 2000) -> str:
    """Runnable source of ``spec``: imports, the program, its parameter values and the
    Monte Carlo estimate of value and gradient to compare with the exact ones."""
    src = HEADER + spec.to_source(literal=True)
    theta = ", ".join(_fmt(x) for x in spec.theta)
    keys = f"keys = jax.random.split(jax.random.PRNGKey(0), {num_samples})\n"
    if spec.objective == "expectation":
        call = (
            f"theta = jnp.array([{theta}])\n" + keys + "value, grad = jax.jit(jax.vmap(lambda k: "
            "E.value_and_grad(k, theta)))(keys)\n"
        )
    else:
        call = (
            f"theta = jnp.array([{theta}])  # phi = theta[:{spec.num_phi}], psi = the rest\n"
            + keys
            + "value, grad = jax.jit(jax.vmap(lambda k: jax.value_and_grad(\n"
            f'    lambda t: -objective.loss(k, {{"phi": t[:{spec.num_phi}], '
            f'"psi": t[{spec.num_phi}:]}}, model, guide)\n'
            ")(theta)))(keys)\n"
        )
    call += "print(value.mean(), grad.mean(0))  # compare: the exact value and gradient\n"
    return src + call


# --------------------------------------------------------------------------------------
# the exact reference (plain JAX, no NumPyro distributions)
# --------------------------------------------------------------------------------------
def _enumeration(sites, plate_size):
    """All joint values of the discrete sites: {site index: array (M,) or (M, n)}."""
    cells, supports = [], []
    for i, s in enumerate(sites):
        if s.dist in DISCRETE:
            for j in range(plate_size if s.plate else 1):
                cells.append((i, j))
                supports.append(range(s.num_classes))
    combos = np.array(list(itertools.product(*supports)), np.float32)
    combos = combos.reshape(-1, len(cells)) if cells else np.zeros((1, 0), np.float32)
    out = {}
    for i, s in enumerate(sites):
        cols = [k for k, (ci, _) in enumerate(cells) if ci == i]
        if cols:
            vals = combos[:, cols]
            out[i] = jnp.asarray(vals if s.plate else vals[:, 0])
    return out, combos.shape[0]


def num_combinations(sites, plate_size) -> int:
    """Number of joint values of the discrete sites (what the reference enumerates)."""
    total = 1
    for s in sites:
        if s.dist in DISCRETE:
            total *= s.num_classes ** (plate_size if s.plate else 1)
    return total


def _parent_value(sites, values, p, link, child_plate, n):
    x = values[p]
    if sites[p].plate and not child_plate:
        x = jnp.mean(x, -1)
    elif child_plate and not sites[p].plate:
        x = jnp.broadcast_to(x[:, None], x.shape + (n,))
    return jax.nn.sigmoid(x - 1.0) if link == "sig" else x


def _site_params(site, sites, values, theta, c, m, n):
    shape = (m, n) if site.plate else (m,)
    k = site.num_classes if site.dist == "categorical" else 1
    if site.dist == "categorical":
        out = jnp.broadcast_to(theta[site.theta : site.theta + k], shape + (k,))
    else:
        out = jnp.broadcast_to(theta[site.theta], shape)
    for (p, link), ci in zip(site.parents, site.coefs, strict=True):
        x = _parent_value(sites, values, p, link, site.plate, n)
        out = out + (c[ci : ci + k] * x[..., None] if site.dist == "categorical" else c[ci] * x)
    if site.dist == "normal":
        return out, jnp.broadcast_to(jnp.exp(theta[site.theta + 1]), shape)
    return out


def _discrete_log_prob(site, params, y, per_element=False):
    if site.dist == "bernoulli":
        lp = y * params - jax.nn.softplus(params)  # correct gradient at logits = 0
    else:
        logp = params - jax.scipy.special.logsumexp(params, -1, keepdims=True)
        lp = jnp.take_along_axis(logp, y.astype(jnp.int32)[..., None], -1)[..., 0]
    return jnp.sum(lp, -1) if site.plate and not per_element else lp


def _log_prob_sites(sites, values, theta, c, m, n, per_element=False):
    total = jnp.zeros((m, n) if per_element else m)
    for i, s in enumerate(sites):
        total = total + _discrete_log_prob(
            s, _site_params(s, sites, values, theta, c, m, n), values[i], per_element
        )
    return total


def _feature(spec, f, values, normal_params, c):
    b = c[f.offset] if f.offset >= 0 else 0.0
    if f.site in normal_params:  # E[feature] of a Normal leaf given the discrete values
        mu, sd = normal_params[f.site]
        if f.kind == "id":
            e = mu
        elif f.kind == "sq":
            e = (mu - b) ** 2 + sd**2
        else:
            e = jnp.sin(mu + b) * jnp.exp(-0.5 * sd**2)
        return jnp.sum(e, -1) if e.ndim == 2 else e
    x = values[f.site]
    s = jnp.sum(x, -1) if x.ndim == 2 else x
    if f.kind == "id":
        return s
    if f.kind == "sq":
        return jnp.sum((x - b) ** 2, -1) if x.ndim == 2 else (x - b) ** 2
    return jnp.sin(s + b)


def _terms(spec, terms, values, normal_params, theta, c, m):
    total = jnp.zeros(m)
    for t in terms:
        v = c[t.coef] * jnp.ones(m)
        for f in t.features:
            v = v * _feature(spec, f, values, normal_params, c)
        if t.direct >= 0:
            v = v * theta[t.direct]
        total = total + v
    return total


def exact_value(spec: ProgramSpec, theta, c):
    """The exact objective at ``theta`` (a jnp array), by enumeration and closed forms."""
    sites, n = list(spec.sites), spec.plate_size
    values, m = _enumeration(sites, n)
    if spec.objective == "expectation":
        log_p = jnp.zeros(m)
        normal_params = {}
        for i, s in enumerate(sites):
            params = _site_params(s, sites, values, theta, c, m, n)
            if s.dist == "normal":
                normal_params[i] = params
            else:
                log_p = log_p + _discrete_log_prob(s, params, values[i])
        g = _terms(spec, spec.terms, values, normal_params, theta, c, m)
        return jnp.sum(jnp.exp(log_p) * g)
    # IWAE with every site in the plate: the bound per element, summed (NumPyro's RenyiELBO)
    per_element = (
        spec.objective == "iwae"
        and not spec.terms
        and all(s.plate for s in (*sites, *spec.model_sites, *spec.observations))
    )
    log_q = _log_prob_sites(sites, values, theta, c, m, n, per_element)
    msites = list(spec.model_sites)
    log_p = _log_prob_sites(msites, values, theta, c, m, n, per_element)
    for o in spec.observations:
        loc = theta[o.theta] * jnp.ones((m, n) if o.plate else (m,))
        for (p, link), ci in zip(o.parents, o.coefs, strict=True):
            loc = loc + c[ci] * _parent_value(msites, values, p, link, o.plate, n)
        data = jnp.stack([c[d] for d in o.data]) if o.plate else c[o.data[0]]
        scale = c[o.scale]
        lp = -0.5 * ((data - loc) / scale) ** 2 - jnp.log(scale) - 0.5 * LOG_2PI
        log_p = log_p + (jnp.sum(lp, -1) if o.plate and not per_element else lp)
    if spec.terms:  # factors (never per element: see per_element above)
        log_p = log_p + _terms(spec, spec.terms, values, {}, theta, c, m)
    log_w = log_p - log_q
    if per_element:  # the joint probability of the K-tuples below, per element summed
        log_q = jnp.sum(log_q, -1)
    q = jnp.exp(log_q)
    if spec.objective == "elbo":
        return jnp.sum(q * log_w)
    k = spec.num_particles  # IWAE: all K-tuples of joint values
    idx = np.array(list(itertools.product(range(m), repeat=k)))
    weights = jnp.prod(q[idx], -1)
    lme = jax.scipy.special.logsumexp(log_w[idx], 1) - math.log(k)
    return jnp.sum(weights * jnp.sum(lme.reshape(lme.shape[0], -1), -1))


def exact_value_and_grad(spec: ProgramSpec):
    """(exact value, exact gradient w.r.t. the flat parameter vector) as numpy float64."""
    values, grads = exact_values_and_grads([spec])
    return values[0], grads[0]


class _Compiled(OrderedDict):
    """The most recent ``MAX_COMPILED`` compiled programs (each holds JIT-compiled machine code,
    mapped memory that is only released when the executable is dropped: an unbounded cache
    exhausts the process's memory maps after some thousand random structures)."""

    MAX_COMPILED = 64

    def lookup(self, key):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None

    def store(self, key, value):
        self[key] = value
        while len(self) > self.MAX_COMPILED:
            self.popitem(last=False)
        return value


_REFERENCES = _Compiled()
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _compiled(fn, *args):
    """``jax.jit(fn)`` compiled for ``args`` with cheap XLA options (tiny programs, one use)."""
    lowered = jax.jit(fn).lower(*args)
    try:
        return lowered.compile(_FAST_COMPILE)
    except Exception:  # an XLA without these options
        return lowered.compile()


def _arrays(specs):
    thetas = jnp.asarray([s.theta for s in specs], jnp.float32)
    cs = jnp.asarray([s.coef if s.coef else (0.0,) for s in specs], jnp.float32)
    return thetas, cs


def exact_values_and_grads(specs: Sequence[ProgramSpec]):
    """Exact values (I,) and gradients (I, T) of same-structure ``specs``, float64 numpy
    (the reference is jitted once per structure and number of programs)."""
    structure = specs[0].structure
    thetas, cs = _arrays(specs)
    cache_key = (structure, len(specs))
    reference = _REFERENCES.lookup(cache_key)
    if reference is None:

        def one(theta, c):
            return jax.value_and_grad(lambda t: exact_value(structure, t, c))(theta)

        reference = _REFERENCES.store(cache_key, _compiled(jax.vmap(one), thetas, cs))
    values, grads = reference(thetas, cs)
    return np.asarray(values, np.float64), np.asarray(grads, np.float64)


# --------------------------------------------------------------------------------------
# the estimator under test: the rendered source, compiled once per structure
# --------------------------------------------------------------------------------------
_ESTIMATORS = _Compiled()


def build_program(spec: ProgramSpec) -> dict:
    """``exec`` the array-reading source of ``spec``; returns its namespace
    (``f`` and ``E``, or ``model``, ``guide`` and ``objective``)."""
    import numpyro
    import numpyro.distributions as dist

    import ppl

    ns = {"jax": jax, "jnp": jnp, "numpyro": numpyro, "dist": dist, "ppl": ppl}
    exec(compile(spec.to_source(literal=False), "<fuzz program>", "exec"), ns)
    return ns


def estimator(spec: ProgramSpec, num_samples: int, num_programs: int):
    """Compiled ``(keys (N,), thetas (I, T), cs (I, C)) -> (values (I, N), grads (I, N, T))``:
    ppl's estimate of the objective and its gradient for I same-structure programs, cached
    per structure."""
    key = (spec.structure, num_samples, num_programs)
    cached = _ESTIMATORS.lookup(key)
    if cached is not None:
        return cached
    ns = build_program(spec)
    if spec.objective == "expectation":
        E = ns["E"]

        def one(k, theta, c):
            return E.value_and_grad(k, theta, c)

    else:
        model, guide, objective = ns["model"], ns["guide"], ns["objective"]
        num_phi = spec.num_phi

        def one(k, theta, c):
            def value(t):
                params = {"phi": t[:num_phi], "psi": t[num_phi:]}
                return -objective.loss(k, params, model, guide, c)

            return jax.value_and_grad(value)(theta)

    keys = jax.ShapeDtypeStruct((num_samples, 2), jnp.uint32)
    thetas = jax.ShapeDtypeStruct((num_programs, len(spec.theta)), jnp.float32)
    cs = jax.ShapeDtypeStruct((num_programs, max(len(spec.coef), 1)), jnp.float32)
    run = _compiled(jax.vmap(jax.vmap(one, (0, None, None)), (None, 0, 0)), keys, thetas, cs)
    return _ESTIMATORS.store(key, run)


def bonferroni_sigma(num_tests: int, family_alpha: float = 1e-3) -> float:
    """z such that ``num_tests`` two-sided normal tests at |z| have a family-wise false-alarm
    probability <= ``family_alpha`` (Bonferroni: each at family_alpha / num_tests)."""
    from scipy.stats import norm

    return float(norm.isf(family_alpha / (2.0 * max(num_tests, 1))))


@dataclasses.dataclass
class FuzzResult:
    """Per program: exact value+gradient, estimator mean and standard error, z-scores and
    the failing coordinates; ``ok`` is True exactly when none fails."""

    spec: ProgramSpec
    exact: np.ndarray
    mean: np.ndarray
    stderr: np.ndarray
    z: np.ndarray
    bad: np.ndarray

    @property
    def ok(self) -> bool:
        return not bool(np.any(self.bad))


def check_programs(
    specs: Sequence[ProgramSpec],
    key,
    num_samples: int = 2000,
    n_sigma: float = 5.0,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> list:
    """Estimate value and gradient of same-structure ``specs`` over ``num_samples`` keys;
    raise ``AssertionError`` (with the program's source) unless every coordinate satisfies
    |mean - exact| < n_sigma SE or |mean - exact| <= atol + rtol |exact| (the float32 floor
    for exactly computed coordinates); a coordinate with any NaN or ±inf estimate, or a
    non-finite exact value, fails. Returns the :class:`FuzzResult` list."""
    structure = specs[0].structure
    assert all(s.structure == structure for s in specs), "specs must share a structure"
    run = estimator(specs[0], num_samples, len(specs))
    thetas, cs = _arrays(specs)
    keys = jax.random.split(key, num_samples)
    exact_values, exact_grads = exact_values_and_grads(specs)
    values, grads = run(keys, thetas, cs)
    samples = np.concatenate(
        [np.asarray(values, np.float64)[..., None], np.asarray(grads, np.float64)], -1
    )
    results = []
    for i, spec in enumerate(specs):
        exact = np.concatenate([exact_values[i : i + 1], exact_grads[i]])
        x = samples[i]
        mean = x.mean(0)
        stderr = x.std(0, ddof=1) / math.sqrt(num_samples)
        err = np.abs(mean - exact)
        z = err / np.maximum(stderr, 1e-300)
        finite = np.all(np.isfinite(x), axis=0) & np.isfinite(exact)
        bad = ~finite | ((err > n_sigma * stderr) & (err > atol + rtol * np.abs(exact)))
        results.append(FuzzResult(spec, exact, mean, stderr, z, bad))
        if np.any(bad):
            names = ["value"] + [f"d/dtheta[{j}]" for j in range(len(spec.theta))]
            lines = [
                f"  {names[j]}: mean {mean[j]:.6g} exact {exact[j]:.6g} "
                f"SE {stderr[j]:.3g} z {z[j]:.2f}"
                for j in np.flatnonzero(bad)
            ]
            raise AssertionError(
                f"estimator off the exact answer beyond {n_sigma:.2f} SE "
                f"({num_samples} samples):\n" + "\n".join(lines) + "\n\n" + describe(spec)
            )
    return results


# --------------------------------------------------------------------------------------
# hypothesis strategies
# --------------------------------------------------------------------------------------
def programs(objectives=("expectation", "elbo", "iwae"), max_sites: int = 4, instances: int = 3):
    """Hypothesis strategy: a list of ``instances`` random :class:`ProgramSpec` sharing one
    random structure (objective, sites, strategies, plates, terms) with independent numbers.
    """
    from hypothesis import strategies as st

    @st.composite
    def draw_programs(draw):
        objective = draw(st.sampled_from(objectives))
        n = draw(st.integers(2, 3))
        slots: list = []

        def slot(kind, count=1):
            slots.extend([kind] * count)
            return len(slots) - count

        theta_count = [0]

        def theta(count):
            theta_count[0] += count
            return theta_count[0] - count

        def draw_sites(num, allow_normal, budget, with_strategy, like=None):
            sites, combos = [], 1
            for i in range(num):
                if like is not None:
                    dist_, k, plate = like[i].dist, like[i].num_classes, like[i].plate
                else:
                    dists = ("bernoulli", "categorical", "normal") if allow_normal else DISCRETE
                    dist_ = draw(st.sampled_from(dists))
                    k = draw(st.integers(2, 3)) if dist_ == "categorical" else 2
                    if dist_ in DISCRETE and combos * k > budget:
                        dist_, k = ("normal", 2) if allow_normal else ("bernoulli", 2)
                        if dist_ == "bernoulli" and combos * 2 > budget:
                            break
                    fits = dist_ == "normal" or combos * k**n <= budget
                    plate = draw(st.booleans()) if fits else False
                    if dist_ in DISCRETE:
                        combos *= k ** (n if plate else 1)
                strategy = draw(st.sampled_from(STRATEGIES[dist_])) if with_strategy else None
                candidates = [j for j in range(i) if sites[j].dist in DISCRETE]
                parents = ()
                if candidates:
                    num_parents = min(draw(st.integers(0, 3)), len(candidates), 2)
                    ps = draw(
                        st.lists(
                            st.sampled_from(candidates),
                            min_size=num_parents,
                            max_size=num_parents,
                            unique=True,
                        )
                    )
                    parents = tuple((p, draw(st.sampled_from(("id", "sig")))) for p in ps)
                kk = k if dist_ == "categorical" else 1
                t0 = theta(kk if dist_ != "normal" else 2)
                coefs = tuple(slot("coef", kk) for _ in parents)
                baseline = slot("offset") if strategy == "reinforce_baseline" else -1
                sites.append(Site(dist_, k, plate, strategy, parents, t0, coefs, baseline))
            return tuple(sites)

        def draw_features(sites, allowed):
            idx = draw(st.lists(st.sampled_from(allowed), min_size=1, max_size=2, unique=True))
            feats = []
            for i in idx:
                kind = draw(st.sampled_from(("id", "sq", "sin")))
                feats.append(Feature(i, kind, slot("offset") if kind != "id" else -1))
            return tuple(feats)

        if objective == "expectation":
            sites = draw_sites(draw(st.integers(1, max_sites)), True, MAX_COMBINATIONS, True)
            terms = []
            for _ in range(draw(st.integers(1, 3))):
                c0 = slot("coef")
                feats = draw_features(sites, list(range(len(sites))))
                direct = -1
                if draw(st.booleans()):
                    direct = draw(st.integers(0, theta_count[0] - 1))
                terms.append(Term(c0, feats, direct))
            spec = ProgramSpec(objective, n, sites, tuple(terms), num_phi=theta_count[0])
            num_particles = 1
        else:
            num_particles = draw(st.integers(2, 3)) if objective == "iwae" else 1
            budget = MAX_COMBINATIONS
            if objective == "iwae":
                budget = int(round(MAX_IWAE_TUPLES ** (1.0 / num_particles)))
            num = draw(st.integers(1, max(1, max_sites - 1)))
            guide = draw_sites(num, False, budget, True)
            num_phi = theta_count[0]
            model = draw_sites(len(guide), False, budget, False, like=guide)
            observations = []
            for _ in range(draw(st.integers(1, 2))):
                plate = draw(st.booleans())
                ps = draw(
                    st.lists(
                        st.sampled_from(range(len(guide))), min_size=1, max_size=2, unique=True
                    )
                )
                parents = tuple((p, draw(st.sampled_from(("id", "sig")))) for p in ps)
                t0 = theta(1)
                coefs = tuple(slot("coef") for _ in parents)
                scale = slot("scale")
                data = tuple(slot("data") for _ in range(n if plate else 1))
                observations.append(Obs(plate, parents, t0, coefs, scale, data))
            factors = []
            for _ in range(draw(st.integers(0, 1))):
                c0 = slot("coef")
                factors.append(Term(c0, draw_features(guide, list(range(len(guide))))))
            spec = ProgramSpec(
                objective,
                n,
                guide,
                tuple(factors),
                model_sites=model,
                observations=tuple(observations),
                num_particles=num_particles,
                rao_blackwellize=draw(st.booleans()) if objective == "elbo" else True,
                num_phi=num_phi,
            )
        spec = dataclasses.replace(spec, slot_kinds=tuple(slots))

        def number(lo, hi):
            return st.integers(int(lo * 100), int(hi * 100)).map(lambda i: i / 100.0)

        out = []
        for _ in range(instances):
            th = draw(
                st.lists(number(*THETA_RANGE), min_size=theta_count[0], max_size=theta_count[0])
            )
            cs = tuple(draw(number(*SLOT_RANGES[kind])) for kind in slots)
            out.append(dataclasses.replace(spec, theta=tuple(th), coef=cs))
        return out

    return draw_programs()
