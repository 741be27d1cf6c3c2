"""ppl vs NumPyro vs hand-written JAX: ELBO-gradient speed and discrete-latent gradient variance.

Run ``python -m benchmarks.run`` (full, writes ``benchmarks/RESULTS.md`` and
``benchmarks/results.json``) or ``python -m benchmarks.run --quick`` (smoke run, prints
the tables; pass ``--out DIR`` to write files too).

Every gradient is a ``jax.jit``-compiled function ``(params, key, *data) -> grads``
(params: the constrained values by site name, as NumPyro's ``SVI`` hands its loss).
Compile time = trace + lower + XLA compile + first call. Run time = median over
interleaved calls after warm-up, each ``block_until_ready``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
from numpyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO  # noqa: E402

import ppl  # noqa: E402

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # run as `python benchmarks/run.py`
    sys.path.insert(0, str(HERE.parent))

from benchmarks import models as M  # noqa: E402
from benchmarks.diagnose import bernoulli_bce_log_prob  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    Compiled,
    gradient_samples,
    mean_agreement,
    time_side_by_side,
)


@dataclasses.dataclass
class Config:
    quick: bool = False
    repeats: int = 100  # timed calls per function (interleaved rounds), at least ...
    max_repeats: int = 2000  # ... and at most, filling timing_budget_s per benchmark table
    timing_budget_s: float = 20.0
    warmup: int = 10
    var_keys: int = 200  # keys for gradient-variance estimates
    lr_n: int = 5000
    lr_d: int = 20
    vae_batches: tuple = (64, 1024)
    gmm_n: int = 200
    gmm_n_large: int = 1000
    hand_softplus: bool = True  # also time the softplus variant of the hand-written ELBO
    warm_up: bool = True  # throwaway compiles first, so no method pays first-use costs
    diagnose: bool = True  # also time ppl with the Bernoulli log density swapped (diagnose.py)

    @classmethod
    def make(cls, quick: bool) -> Config:
        if not quick:
            return cls()
        return cls(
            quick=True,
            repeats=5,
            max_repeats=5,
            warmup=1,
            var_keys=20,
            vae_batches=(64,),
            gmm_n=50,
            gmm_n_large=200,
        )


# ----------------------------------------------------------------------------------
# gradient functions, all (params, key, *data) -> grads of the loss (-ELBO)
# ----------------------------------------------------------------------------------


def svi_loss_grad(loss, model, guide):
    """Gradient of an SVI loss object (ppl Objective or NumPyro ELBO) w.r.t. params."""

    def grad(params, key, *data):
        return jax.grad(lambda p: loss.loss(key, p, model, guide, *data))(params)

    return grad


def svi_loss_value(loss, model, guide):
    def value(params, key, *data):
        return loss.loss(key, params, model, guide, *data)

    return value


def hand_grad(loss_fn):
    def grad(params, key, *data):
        return jax.grad(loss_fn)(params, key, *data)

    return grad


def ours_elbo():
    return ppl.objectives.elbo()


# ----------------------------------------------------------------------------------
# 1. ELBO gradient time: ours vs NumPyro Trace_ELBO vs hand-written JAX
# ----------------------------------------------------------------------------------


def _elbo_problems(cfg: Config):
    """(name, model, guide, hand-written loss factory, make_inputs() -> (params, data))."""

    def lr_inputs():
        return M.lr_params(cfg.lr_d), M.lr_data(cfg.lr_n, cfg.lr_d)

    out = [
        (
            f"logreg N={cfg.lr_n} D={cfg.lr_d}",
            M.lr_model,
            M.lr_guide,
            M.make_lr_hand_loss,
            lr_inputs,
        )
    ]
    for b in cfg.vae_batches:
        inputs = lambda b=b: (M.vae_params(), (M.vae_data(b),))
        out.append((f"VAE batch={b}", M.vae_model, M.vae_guide, M.make_vae_hand_loss, inputs))
    return out


def _elbo_methods(cfg: Config, model, guide, make_hand) -> list[tuple]:
    """(name, gradient function, tracing context) for ours / NumPyro / hand-written."""
    none = contextlib.nullcontext
    out = [
        ("ours", svi_loss_grad(ours_elbo(), model, guide), none),
        ("numpyro", svi_loss_grad(Trace_ELBO(), model, guide), none),
        ("hand", hand_grad(make_hand(M.bernoulli_logits_ll_bce)), none),
    ]
    if cfg.hand_softplus:  # informational: a second, common hand-written likelihood
        hand_sp = hand_grad(make_hand(M.bernoulli_logits_ll_softplus))
        out.append(("hand (jax.nn.softplus)", hand_sp, none))
    if cfg.diagnose:  # attribution: ppl with a leaner Bernoulli log density (see diagnose.py)
        diag = svi_loss_grad(ours_elbo(), model, guide)
        out.append((DIAG, diag, bernoulli_bce_log_prob))
    return out


def _small_lr_args():
    X, y = M.lr_data(64, 3)
    return (M.lr_params(3), jax.random.PRNGKey(0), X, y)


def _warm_up(makers, args):
    """Compile every method once on a tiny problem (and discard it)."""
    for name, fn, ctx in makers:
        with ctx():
            Compiled(name, fn, args)


def _compile_rotated(makers, args, shift: int) -> list[Compiled]:
    """Compile in an order rotated by ``shift`` (no method always pays first-compile costs)."""
    k = shift % len(makers)
    compiled = {}
    for name, fn, ctx in makers[k:] + makers[:k]:
        with ctx():
            compiled[name] = Compiled(name, fn, args)
    return [compiled[name] for name, _, _ in makers]


def bench_elbo_gradient(cfg: Config, only: str | None = None) -> list[dict]:
    """Per problem: timings of ours / numpyro / hand gradients plus ratios."""
    key = jax.random.PRNGKey(0)
    rows, warmed = [], False
    for name, model, guide, make_hand, inputs in _elbo_problems(cfg):
        if only is not None and not name.startswith(only):
            continue
        params, data = inputs()
        args = (params, key, *data)
        makers = _elbo_methods(cfg, model, guide, make_hand)
        if (
            cfg.warm_up and not warmed
        ):  # first-use costs (imports, jnp caches) go to a throwaway compile
            lr = _elbo_methods(cfg, M.lr_model, M.lr_guide, M.make_lr_hand_loss)
            _warm_up(lr, _small_lr_args())
            warmed = True
        fns = _compile_rotated(makers, args, len(rows))
        stats = time_side_by_side(
            fns, cfg.repeats, cfg.warmup, cfg.max_repeats, cfg.timing_budget_s
        )
        agreement = None
        if name.startswith("logreg") and cfg.var_keys:  # unbiasedness: ours vs Trace_ELBO
            agreement = gradient_agreement(fns[0], fns[1], params, cfg.var_keys, *data)
        ours, npy, hand = (stats[k]["median_ms"] for k in ("ours", "numpyro", "hand"))
        rows.append(
            {
                "problem": name,
                "methods": stats,
                "ours_over_hand": ours / hand,
                "ours_over_numpyro": ours / npy,
                "numpyro_over_hand": npy / hand,
                "agreement": agreement,
            }
        )
        print(
            f"[elbo] {name}: ours {ours:.3f} ms, numpyro {npy:.3f} ms, hand {hand:.3f} ms "
            f"(ours/hand {ours / hand:.2f}, ours/numpyro {ours / npy:.2f})",
            flush=True,
        )
    return rows


def gradient_agreement(fn_a: Compiled, fn_b: Compiled, params, n_keys: int, *data) -> dict:
    """Mean gradients over ``n_keys`` keys (same params) of two estimators of one ELBO."""
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(3), n_keys))
    ga, gb = (
        gradient_samples(fn_a, params, keys, *data),
        gradient_samples(fn_b, params, keys, *data),
    )
    a = np.concatenate([ga[k] for k in sorted(ga)], axis=1)
    b = np.concatenate([gb[k] for k in sorted(gb)], axis=1)
    return {
        "a": fn_a.name,
        "b": fn_b.name,
        "keys": n_keys,
        "coords": int(a.shape[1]),
        "max_abs_t": mean_agreement(a, b),
        "min_std_a": float(a.std(axis=0).min()),
        "min_std_b": float(b.std(axis=0).min()),
    }


# ----------------------------------------------------------------------------------
# 2. Discrete latents: Gaussian mixture with per-datum Categorical assignments
# ----------------------------------------------------------------------------------

# (name, objective factory, model, guide, uses z_logits, estimator note)
_GMM_METHODS = [
    (
        "ours reinforce",
        ours_elbo,
        M.gmm_model,
        M.gmm_guide_reinforce,
        True,
        "score function on z; ppl Rao-Blackwellizes additive objectives: each z_i's "
        "score times only the terms that depend on it (provenance, per plate element)",
    ),
    (
        "NumPyro TraceGraph_ELBO",
        TraceGraph_ELBO,
        M.gmm_model,
        M.gmm_guide_reinforce,
        True,
        "score function on z, Rao-Blackwellized per datum (downstream costs), no baseline",
    ),
    (
        "ours enum",
        ours_elbo,
        M.gmm_model,
        M.gmm_guide_enum,
        True,
        "z sampled; gradient sums each z_i's support (local expectation, K replays)",
    ),
    (
        "NumPyro TraceEnum_ELBO (guide enum)",
        lambda: TraceEnum_ELBO(max_plate_nesting=1),
        M.gmm_model,
        M.gmm_guide_numpyro_enum,
        True,
        "z enumerated in the guide: exact E_q(z) of the ELBO (same target as ours)",
    ),
    (
        "NumPyro TraceEnum_ELBO (model enum)",
        lambda: TraceEnum_ELBO(max_plate_nesting=1),
        M.gmm_model_enum,
        M.gmm_guide_no_z,
        False,
        "z summed out in the model, guide has no z: DIFFERENT (tighter) bound, log sum_z p",
    ),
]

# pairs (a, b) whose mean gradients must agree (same ELBO, both unbiased)
_GMM_PAIRS = [
    ("ours reinforce", "NumPyro TraceGraph_ELBO"),
    ("ours enum", "NumPyro TraceEnum_ELBO (guide enum)"),
]
# (An exact-in-z estimator vs a REINFORCE one is not t-tested: a z value of probability
# ~0.02 goes unsampled in 200 keys for some data points, and REINFORCE's sample mean and
# s.e. then both miss its large contribution.)


def _gmm_params_for(params, uses_z):
    return params if uses_z else {k: v for k, v in params.items() if k != "z_logits"}


def _warm_up_gmm():
    """Compile each discrete method once on a tiny mixture (imports funsor, fills caches)."""
    x, params = M.gmm_data(5), M.gmm_params(5)
    for name, make, model, guide, uses_z, _ in _GMM_METHODS:
        p = _gmm_params_for(params, uses_z)
        Compiled(name, svi_loss_grad(make(), model, guide), (p, jax.random.PRNGKey(0), x))


def bench_discrete(cfg: Config) -> dict:
    if cfg.warm_up:
        _warm_up_gmm()
    out = {"n": cfg.gmm_n, "k": M.GMM_K, "keys": cfg.var_keys, "methods": {}, "pairs": []}
    x = M.gmm_data(cfg.gmm_n)
    params = M.gmm_params(cfg.gmm_n)
    key0 = jax.random.PRNGKey(0)
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(7), cfg.var_keys))
    compiled, samples = [], {}
    for name, make, model, guide, uses_z, note in _GMM_METHODS:
        p = _gmm_params_for(params, uses_z)
        loss = make()
        g = Compiled(name, svi_loss_grad(loss, model, guide), (p, key0, x))
        v = Compiled(name + " (value)", svi_loss_value(loss, model, guide), (p, key0, x))
        compiled.append(g)
        grads = gradient_samples(g, p, keys, x)
        values = np.array([float(v(p, k, x)) for k in keys])
        samples[name] = grads
        mu = np.concatenate([grads["mu_loc"], grads["mu_scale"]], axis=1)
        rec = {
            "note": note,
            "elbo_mean": float(-values.mean()),
            "elbo_se": float(values.std(ddof=1) / np.sqrt(len(values))),
            "var_mu": float(mu.var(axis=0, ddof=1).sum()),
            "var_z_logits": (
                float(grads["z_logits"].var(axis=0, ddof=1).sum()) if uses_z else None
            ),
        }
        out["methods"][name] = rec
        print(
            f"[discrete] {name}: var_mu {rec['var_mu']:.4g} var_z {rec['var_z_logits']}", flush=True
        )
    stats = time_side_by_side(
        compiled, cfg.repeats, cfg.warmup, cfg.max_repeats, cfg.timing_budget_s
    )
    for name, s in stats.items():
        out["methods"][name].update(s)
    for a, b in _GMM_PAIRS:
        ga, gb = samples[a], samples[b]
        names = sorted(set(ga) & set(gb))
        za = np.concatenate([ga[k] for k in names], axis=1)
        zb = np.concatenate([gb[k] for k in names], axis=1)
        out["pairs"].append(
            {"a": a, "b": b, "max_abs_t": mean_agreement(za, zb), "coords": int(za.shape[1])}
        )
    return out


def bench_discrete_large(cfg: Config) -> dict:
    """Time only, larger plate: N = cfg.gmm_n_large data, K = 3 components."""
    x = M.gmm_data(cfg.gmm_n_large, seed=1)
    params = M.gmm_params(cfg.gmm_n_large)
    key0 = jax.random.PRNGKey(0)
    fns = []
    for name, make, model, guide, uses_z, _ in _GMM_METHODS:
        p = _gmm_params_for(params, uses_z)
        fns.append(Compiled(name, svi_loss_grad(make(), model, guide), (p, key0, x)))
    stats = time_side_by_side(fns, cfg.repeats, cfg.warmup, cfg.max_repeats, cfg.timing_budget_s)
    for name, s in stats.items():
        print(f"[discrete-large] {name}: {s['median_ms']:.3f} ms", flush=True)
    return {"n": cfg.gmm_n_large, "k": M.GMM_K, "methods": stats}


# ----------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _ppl_source() -> dict:
    """Which ppl was measured: its path, a hash of its sources, and its git state."""
    root = Path(ppl.__file__).resolve().parent
    digest = hashlib.sha1()
    for f in sorted(root.rglob("*.py")):
        digest.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    info = {"ppl_path": str(root), "ppl_source_sha1": digest.hexdigest()[:12]}

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=root.parent, capture_output=True, text=True, check=True
        ).stdout

    try:
        if Path(git("rev-parse", "--show-toplevel").strip()) != root.parent:
            raise OSError("ppl is not at the top of a git checkout")
        info["ppl_commit"] = git("rev-parse", "--short", "HEAD").strip()
        status = git("status", "--porcelain", "--", root.name)
        files = sorted(line[3:] for line in status.splitlines())
        info["ppl_tree"] = f"uncommitted changes in {', '.join(files)}" if files else "clean"
    except (OSError, subprocess.CalledProcessError):
        info["ppl_commit"] = None
        info["ppl_tree"] = "not a git checkout (see note)"
    return info


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    import jaxlib

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpyro": numpyro.__version__,
        "ppl": ppl.__version__,
        **_ppl_source(),
        "devices": [str(d) for d in jax.devices()],
        "loadavg_start": _loadavg(),
    }


def _fmt(x, digits=3):
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e5):
        return str(int(x))
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.{digits}f}"


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _timing_cells(s):
    return [
        f"{s['median_ms']:.3f}",
        f"{s['min_ms']:.3f}",
        str(s["repeats"]),
        f"{s['p25_ms']:.3f}–{s['p75_ms']:.3f}",
        f"{s['compile_s']:.2f} ({s['trace_lower_s']:.2f})",
    ]


DIAG = "ours [diag: BCE Bernoulli log_prob]"


def _ratio(methods, a, b, stat="median_ms"):
    if a not in methods or b not in methods:
        return "n/a"
    return f"{methods[a][stat] / methods[b][stat]:.2f}"


_TRANSC = ("exp", "log", "log1p", "logistic", "tanh")


def _transc_eqns(s):
    prims = s.get("jaxpr_primitives", {})
    return sum(prims.get(p, 0) for p in _TRANSC)


def _render_elbo(results: dict) -> list[str]:
    out: list[str] = []
    out += ["", "## 1. ELBO gradient: ours vs NumPyro `Trace_ELBO` vs hand-written JAX", ""]
    summary = []
    for r in results.get("elbo_gradient", []):
        m = r["methods"]
        goal = r["ours_over_hand"] <= 1.10 and r["ours_over_numpyro"] <= 1.0
        summary.append(
            [
                r["problem"],
                f"{m['ours']['median_ms']:.3f}",
                f"{m['numpyro']['median_ms']:.3f}",
                f"{m['hand']['median_ms']:.3f}",
                f"{r['ours_over_hand']:.2f}",
                f"{r['ours_over_numpyro']:.2f}",
                "yes" if goal else "**no**",
                _ratio(m, "ours", "hand", "min_ms"),
                _ratio(m, "ours", "numpyro", "min_ms"),
                _ratio(m, DIAG, "hand"),
                _ratio(m, DIAG, "numpyro"),
            ]
        )
    out.append(
        _table(
            [
                "problem",
                "ours ms",
                "NumPyro ms",
                "hand ms",
                "ours/hand",
                "ours/NumPyro",
                "goal (<=1.10x hand, <=1x NumPyro)",
                "ours/hand (min)",
                "ours/NumPyro (min)",
                "diag/hand",
                "diag/NumPyro",
            ],
            summary,
        )
    )
    out += [
        "",
        f"*diag* = `{DIAG}`: ppl unchanged except its BernoulliLogits log density, swapped "
        "in-process for `x*l - softplus(l)` with a sigmoid-tangent `custom_jvp` "
        "(benchmarks/diagnose.py) — attributes ppl's overhead. *hand* uses the textbook "
        "stable Bernoulli form (as NumPyro/TF); `hand (jax.nn.softplus)` is shown for "
        "comparison (its gradient costs 3 transcendentals per pixel instead of 1).",
        "",
        "Details:",
        "",
    ]
    rows = []
    for r in results.get("elbo_gradient", []):
        for meth, s in r["methods"].items():
            rows.append(
                [
                    r["problem"],
                    meth,
                    *_timing_cells(s),
                    s["jaxpr_eqns"],
                    _transc_eqns(s),
                    _fmt(s.get("hlo_ops")),
                    _fmt(s.get("xla_flops")),
                    _fmt(s.get("xla_transcendentals")),
                    _fmt(s.get("xla_bytes_accessed")),
                ]
            )
    out.append(
        _table(
            [
                "problem",
                "method",
                "run ms",
                "min ms",
                "calls",
                "IQR ms",
                "compile s (trace+lower)",
                "jaxpr eqns",
                "jaxpr transc. eqns",
                "HLO ops",
                "XLA flops",
                "XLA transc.",
                "XLA bytes",
            ],
            rows,
        )
    )
    out += ["", "Attribution (deterministic XLA cost analysis, not timings):", ""]
    for r in results.get("elbo_gradient", []):
        m = r["methods"]
        tr = {k: v.get("xla_transcendentals") for k, v in m.items()}
        if tr.get("ours") and tr.get("numpyro"):
            line = (
                f"- {r['problem']}: XLA transcendentals ours = {tr['ours'] / tr['numpyro']:.1f}x "
                f"NumPyro's, hand = {tr['hand'] / tr['numpyro']:.1f}x"
            )
            if tr.get(DIAG):
                line += f", diag = {tr[DIAG] / tr['numpyro']:.1f}x"
            line += (
                f"; jaxpr equations ours {m['ours']['jaxpr_eqns']} vs NumPyro "
                f"{m['numpyro']['jaxpr_eqns']}"
            )
            out.append(line + ".")
    for r in results.get("elbo_gradient", []):
        agree = r.get("agreement")
        if agree is not None:
            out += [
                "",
                f"Unbiasedness check ({r['problem']}, {agree['keys']} keys, same params): max "
                f"over {agree['coords']} coordinates of |mean ours - mean NumPyro| / s.e. = "
                f"{agree['max_abs_t']:.2f} (expect < 4).",
            ]

    return out


OTHER_RESULTS = "\n".join(
    [
        "Other tables, each with its machine and versions:",
        "",
        "- gradient variance x time per estimator: `VARIANCE_RESULTS.md` "
        "(`python -m benchmarks.variance`);",
        "- MCMC effective samples per second: `MCMC_RESULTS.md` (`python -m benchmarks.mcmc`);",
        "- MCMC on all 14 posteriordb posteriors (ESS per gradient and per second, ppl NUTS/HMC/"
        "ChEES/SMC vs NumPyro and BlackJAX NUTS, issue 17's goals): `MCMC_POSTERIORDB.md`"
        " (`python -m benchmarks.mcmc_posteriordb`);",
        "- ppl NUTS vs NumPyro NUTS in ESS per gradient over many seeds, with standard "
        "errors (the posteriordb table's 2-3 seeds cannot resolve its 0.9x goal): "
        "`NUTS_ESS_PER_GRAD.md` (`python -m benchmarks.nuts_ess_per_grad`);",
        "- the gradient floor under the NUTS ESS/s goal (a bare loop of the model's "
        "gradients against both NUTS kernels' time per gradient): `GRADIENT_FLOOR.md` "
        "(`python -m benchmarks.gradient_floor`);",
        "- the cone model's objectives: `CONE_RESULTS.md` (`python -m benchmarks.cone`);",
        "- BRAIn and its baselines (reward-KL frontier, exact KL): `BRAIN_RESULTS.md` "
        "(`python -m benchmarks.brain`);",
        "- distribution transformers: inverse-gamma task (KL vs SVI and NUTS over 1000 "
        "problems) `DT_RESULTS.md` (`python -m benchmarks.dt`), GP regression with "
        "hyperpriors `DT_GP_RESULTS.md` (`python -m benchmarks.dt_gp`), tracking vs a "
        "particle filter `DT_TRACKING_RESULTS.md` (`python -m benchmarks.dt_tracking`);",
        "- sharding (scaling on simulated devices, collectives, one-device overhead): "
        "`SHARDING_RESULTS.md` (`python -m benchmarks.sharding`);",
        "- enumeration (HMM gradient vs `TraceEnum_ELBO` and a hand-written forward "
        "algorithm, mixture time to an exact target, guide-side enumeration): "
        "`ENUM_RESULTS.md` (`python -m benchmarks.enum`).",
    ]
)


def render_markdown(results: dict) -> str:
    info, cfg = results["machine"], results["config"]
    out = ["# ppl benchmarks", ""]
    out.append(
        f"Generated by `python -m benchmarks.run{' --quick' if cfg['quick'] else ''}` "
        f"on {results['date']} (total {results['total_s']:.0f} s)."
    )
    if results.get("note"):
        out += ["", f"Note: {results['note']}"]
    out += ["", OTHER_RESULTS]
    out += ["", "## Machine", ""]
    out.append(_table(["item", "value"], [[k, v] for k, v in info.items()]))
    out += [
        "",
        "Method: every gradient is `jax.jit`-compiled `(params, key, *data) -> grads` of",
        "the SVI loss (-ELBO) w.r.t. the constrained params dict. *run ms* = median of "
        f"*calls* timed calls ({cfg['repeats']} to {cfg['max_repeats']}, filling "
        f"~{cfg['timing_budget_s']:.0f} s per table) after {cfg['warmup']} warm-up calls, each "
        "`block_until_ready`, functions interleaved round-robin; *IQR* = 25th–75th percentile;",
        "*min ms* = fastest call (less sensitive to other load on the machine: see loadavg);",
        "*compile s* = trace + lower + XLA compile + first call (trace + lower alone in "
        "parentheses). *jaxpr eqns* counts equations of the traced gradient including "
        "sub-jaxprs; *HLO ops* counts instructions of the optimized XLA module; *flops* and "
        "*transc.* are XLA's cost analysis of the compiled gradient.",
    ]

    if results.get("elbo_gradient"):
        out += _render_elbo(results)

    d = results.get("discrete")
    if d is not None:
        out += [
            "",
            f"## 2. Discrete latents: Gaussian mixture, N={d['n']} data, K={d['k']}",
            "",
            "Model: mu_k ~ N(0, 10²) (plate of K), z_i ~ Cat(uniform), "
            "x_i ~ N(mu_{z_i}, 1). Guide: mu_k ~ N(loc_k, scale_k) (reparam), "
            "z_i ~ Cat(softmax(z_logits_i)) (per-datum logits). Variances: sum over "
            f"coordinates of the per-coordinate gradient variance over {d['keys']} keys "
            "(same params). *mu* = (mu_loc, mu_scale) grads; *z* = z_logits grads.",
            "",
            "The two TraceEnum rows compute different but comparable estimators: "
            "*guide enum* takes the exact expectation over q(z) (same ELBO as ours); "
            "*model enum* sums z out of the model with a guide without z, i.e. a "
            "tighter bound (note its higher ELBO) and no z_logits parameters.",
            "",
        ]
        rows = []
        for name, s in d["methods"].items():
            rows.append(
                [
                    name,
                    *_timing_cells(s),
                    f"{s['elbo_mean']:.2f} ± {s['elbo_se']:.2f}",
                    _fmt(s["var_mu"], 4),
                    _fmt(s["var_z_logits"], 4),
                    s["jaxpr_eqns"],
                    s["note"],
                ]
            )
        out.append(
            _table(
                [
                    "method",
                    "run ms",
                    "min ms",
                    "calls",
                    "IQR ms",
                    "compile s (trace+lower)",
                    "ELBO estimate (mean ± se)",
                    "grad var mu",
                    "grad var z",
                    "jaxpr eqns",
                    "estimator",
                ],
                rows,
            )
        )
        m = d["methods"]
        ratios = []
        for a, b in [
            ("ours reinforce", "NumPyro TraceGraph_ELBO"),
            ("ours enum", "NumPyro TraceEnum_ELBO (guide enum)"),
            ("ours enum", "NumPyro TraceEnum_ELBO (model enum)"),
        ]:
            vz = m[a]["var_z_logits"] / m[b]["var_z_logits"] if m[b]["var_z_logits"] else None
            ratios.append(
                [
                    f"{a} / {b}",
                    f"{m[a]['median_ms'] / m[b]['median_ms']:.2f}",
                    _fmt(m[a]["var_mu"] / m[b]["var_mu"], 3),
                    _fmt(vz, 3),
                ]
            )
        out += ["", _table(["ratio", "time", "var mu", "var z"], ratios), ""]
        out.append(
            _table(
                ["pair (same ELBO)", "coords", "max |t| of mean-gradient difference"],
                [
                    [f"{p['a']} vs {p['b']}", p["coords"], f"{p['max_abs_t']:.2f}"]
                    for p in d["pairs"]
                ],
            )
        )
        out += [
            "",
            "(|t| < ~4 over this many coordinates is consistent with equal expectations"
            + ("; with --quick's few keys the test is unreliable)." if cfg["quick"] else ")."),
        ]

    dl = results.get("discrete_large")
    if dl is not None:
        out += [
            "",
            f"## 2b. Larger plate: Gaussian mixture, N={dl['n']}, K={dl['k']} (time only)",
            "",
        ]
        ref = dl["methods"]["NumPyro TraceEnum_ELBO (model enum)"]["median_ms"]
        rows = [
            [
                name,
                *_timing_cells(s),
                f"{s['median_ms'] / ref:.2f}",
                s["jaxpr_eqns"],
                _fmt(s.get("hlo_ops")),
                _fmt(s.get("xla_flops")),
            ]
            for name, s in dl["methods"].items()
        ]
        out.append(
            _table(
                [
                    "method",
                    "run ms",
                    "min ms",
                    "calls",
                    "IQR ms",
                    "compile s (trace+lower)",
                    "time / TraceEnum (model enum)",
                    "jaxpr eqns",
                    "HLO ops",
                    "XLA flops",
                ],
                rows,
            )
        )
    out.append("")
    return "\n".join(out)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def run(cfg: Config, only: list[str] | None = None) -> dict:
    t0 = time.perf_counter()
    results = {
        "config": dataclasses.asdict(cfg),
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    want = lambda name: only is None or name in only
    if want("elbo"):
        results["elbo_gradient"] = bench_elbo_gradient(cfg)
    if want("discrete"):
        results["discrete"] = bench_discrete(cfg)
    if want("discrete_large"):
        results["discrete_large"] = bench_discrete_large(cfg)
    results["total_s"] = time.perf_counter() - t0
    results["machine"]["loadavg_end"] = _loadavg()
    return _jsonable(results)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (few repeats)")
    parser.add_argument(
        "--out",
        default=None,
        help="directory for RESULTS.md / results.json "
        "(default: benchmarks/ for a full run, none for --quick)",
    )
    parser.add_argument("--only", nargs="*", choices=["elbo", "discrete", "discrete_large"])
    parser.add_argument("--note", default=None, help="free text recorded in the report")
    parser.add_argument(
        "--vae-batches",
        nargs="*",
        type=int,
        default=None,
        help="VAE batch sizes of the ELBO-gradient table (default 64 1024; e.g. on a GPU: "
        "64 256 1024 4096)",
    )
    args = parser.parse_args(argv)
    cfg = Config.make(args.quick)
    if args.vae_batches:
        cfg = dataclasses.replace(cfg, vae_batches=tuple(args.vae_batches))
    jax.config.update("jax_enable_x64", False)
    results = run(cfg, args.only)
    if args.note:
        results["note"] = args.note
    md = render_markdown(results)
    print(md)
    out = args.out if args.out is not None else (None if args.quick else str(HERE))
    if out is not None:
        outdir = Path(out)
        outdir.mkdir(parents=True, exist_ok=True)
        (outdir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (outdir / "RESULTS.md").write_text(md)
        print(f"wrote {outdir / 'results.json'}, {outdir / 'RESULTS.md'}")
    return results


if __name__ == "__main__":
    main()
