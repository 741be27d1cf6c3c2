"""Gradient variance x time of ppl's estimators vs NumPyro, at fixed params.

Run ``python -m benchmarks.variance`` (writes ``benchmarks/VARIANCE_RESULTS.md`` and
``benchmarks/variance_results.json``); ``main(quick=True)`` is a small smoke run that
writes nothing.

For each estimator, at the SAME fixed params: time per gradient (``jax.jit``-compiled
``(params, key, *data) -> grads``, median of interleaved ``block_until_ready`` calls),
total gradient variance over keys (sum over the guide's coordinates of the per-coordinate
variance; baseline params are excluded), and variance x time (lower is better; the
variance of an average of n gradients costing n x time). Same-target estimators' mean
gradients are checked against a reference (max |t| over coordinates).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.distributions import constraints  # noqa: E402
from numpyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO  # noqa: E402

import ppl  # noqa: E402

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):
    sys.path.insert(0, str(HERE.parent))

from benchmarks import models as M  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    Compiled,
    gradient_samples,
    mean_agreement,
    time_side_by_side,
)
from benchmarks.run import _loadavg, _table, machine_info  # noqa: E402

REF_NAME = "NumPyro TraceGraph_ELBO"


@dataclasses.dataclass
class Config:
    quick: bool = False
    var_keys: int = 500
    repeats: int = 50
    max_repeats: int = 1000
    timing_budget_s: float = 10.0
    warmup: int = 5
    K: int = 4  # particles for the multi-particle estimators (loo, vimco, elbo(K))
    baseline_fit_steps: int = 300
    gmm_n: int = 50
    only_estimators: tuple | None = None
    problems: tuple = ("sbn", "gmm", "logreg")

    @classmethod
    def make(cls, quick: bool) -> Config:
        if not quick:
            return cls()
        return cls(
            quick=True,
            var_keys=40,
            repeats=5,
            max_repeats=5,
            timing_budget_s=0.0,
            warmup=1,
            baseline_fit_steps=30,
            gmm_n=12,
            only_estimators=(REF_NAME, "ours reinforce (RB)", "ours reinforce (no RB)"),
            problems=("gmm",),
        )


# ----------------------------------------------------------------------------------
# (1) sigmoid belief net: 2 layers of Bernoulli units, fixed random weights
# ----------------------------------------------------------------------------------

SBN_H1, SBN_H2, SBN_D = 10, 10, 20


def sbn_weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "b1": jnp.asarray(rng.normal(size=SBN_H1), jnp.float32),
        "W1": jnp.asarray(rng.normal(size=(SBN_H2, SBN_H1)), jnp.float32),
        "c2": jnp.asarray(rng.normal(size=SBN_H2), jnp.float32),
        "W2": jnp.asarray(1.5 * rng.normal(size=(SBN_D, SBN_H2)), jnp.float32),
        "c3": jnp.asarray(rng.normal(size=SBN_D), jnp.float32),
    }


SBN_W = sbn_weights()


def sbn_data(seed: int = 1):
    """One draw of x from the model (20 binary observations)."""
    rng = np.random.default_rng(seed)
    w = jax.tree.map(np.asarray, SBN_W)
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))
    z1 = (rng.uniform(size=SBN_H1) < sig(w["b1"])).astype(np.float32)
    z2 = (rng.uniform(size=SBN_H2) < sig(w["W1"] @ z1 + w["c2"])).astype(np.float32)
    x = (rng.uniform(size=SBN_D) < sig(w["W2"] @ z2 + w["c3"])).astype(np.float32)
    return jnp.asarray(x)


def sbn_params(seed: int = 2):
    rng = np.random.default_rng(seed)
    return {
        "q1_logits": jnp.asarray(rng.normal(size=SBN_H1), jnp.float32),
        "q2_logits": jnp.asarray(rng.normal(size=SBN_H2), jnp.float32),
    }


def sbn_model(x):
    # Every layer's plate sits at dim -1: ppl tells plates apart by name.
    w = SBN_W
    with numpyro.plate("h1", SBN_H1):
        z1 = numpyro.sample("z1", dist.Bernoulli(logits=w["b1"]))
    with numpyro.plate("h2", SBN_H2):
        z2 = numpyro.sample("z2", dist.Bernoulli(logits=w["W1"] @ z1 + w["c2"]))
    with numpyro.plate("obs", SBN_D):
        numpyro.sample("x", dist.Bernoulli(logits=w["W2"] @ z2 + w["c3"]), obs=x)


def baseline_strategy(site: str, shape: tuple, baseline: str):
    """reinforce with a baseline per element: "fixed" / "learn" (a param) or "running"."""
    if baseline == "running":
        return ppl.reinforce(baseline=ppl.running_baseline(f"b_{site}", shape=shape))
    b = numpyro.param(f"b_{site}", jnp.zeros(shape))
    return ppl.reinforce(baseline=b, learn=baseline == "learn")


def make_sbn_guide(infer=None, baseline: str | None = None):
    """Mean-field guide; ``infer``: per-site infer dict; ``baseline``: "fixed"/"learn"."""

    def guide(x):
        for site, plate, n in (("z1", "h1", SBN_H1), ("z2", "h2", SBN_H2)):
            logits = numpyro.param(f"q{site[1]}_logits", jnp.zeros(n))
            site_infer = dict(infer or {})
            if baseline is not None:
                site_infer["grad"] = baseline_strategy(site, (n,), baseline)
            with numpyro.plate(plate, n):
                numpyro.sample(site, dist.Bernoulli(logits=logits), infer=site_infer)

    return guide


# ----------------------------------------------------------------------------------
# (1b) Gaussian mixture (benchmarks/models.py), z only discrete, mu reparameterized
# ----------------------------------------------------------------------------------


def make_gmm_guide(infer=None, baseline: str | None = None):
    def guide(x):
        M._gmm_mu_guide()
        logits = numpyro.param("z_logits", jnp.zeros((x.shape[0], M.GMM_K)))
        site_infer = dict(infer or {})
        if baseline is not None:
            site_infer["grad"] = baseline_strategy("z", (x.shape[0],), baseline)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Categorical(logits=logits), infer=site_infer)

    return guide


# ----------------------------------------------------------------------------------
# (2) Bayesian logistic regression, mean-field Normal guide
# ----------------------------------------------------------------------------------

LR_N, LR_D = 200, 5


def make_lr_guide(infer=None, baseline: str | None = None):
    def guide(X, y):
        d = X.shape[1]
        loc = numpyro.param("w_loc", jnp.zeros(d))
        scale = numpyro.param("w_scale", 0.1 * jnp.ones(d), constraint=constraints.positive)
        site_infer = dict(infer or {})
        if baseline is not None:
            site_infer["grad"] = baseline_strategy("w", (), baseline)
        numpyro.sample("w", dist.Normal(loc, scale).to_event(1), infer=site_infer)

    return guide


# ----------------------------------------------------------------------------------
# estimators
# ----------------------------------------------------------------------------------


def loss_grad(loss, model, guide):
    def grad(params, key, *data):
        return jax.grad(lambda p: loss.loss(key, p, model, guide, *data))(params)

    return grad


def loss_value(loss, model, guide):
    def value(params, key, *data):
        return loss.loss(key, params, model, guide, *data)

    return value


@dataclasses.dataclass
class Estimator:
    name: str
    loss: object
    guide: object
    target: str  # "elbo" (same target as the reference) or e.g. "iwae(K)"
    particles: int
    note: str
    baseline: str | None = None  # "fixed" / "learn" / "running": extra params or state
    model: object = None


def _estimators(problem: str, K: int, make_guide, discrete: bool) -> list[Estimator]:
    R = {"grad": "reinforce"}
    E = Estimator
    elbo = ppl.objectives.elbo
    out = [
        E(
            REF_NAME,
            TraceGraph_ELBO(),
            make_guide(),
            "elbo",
            1,
            "NumPyro score function, Rao-Blackwellized by downstream costs, no baseline",
        ),
    ]
    if not discrete:
        out[0].note = "NumPyro: w is reparameterized (Normal has rsample) = Trace_ELBO"
        out.append(E("NumPyro Trace_ELBO", Trace_ELBO(), make_guide(), "elbo", 1, "reparam"))
        out.append(E("ours reparam", elbo(), make_guide(), "elbo", 1, "pathwise"))
    out += [
        E(
            "ours reinforce (RB)",
            elbo(),
            make_guide(R),
            "elbo",
            1,
            "elbo() default: score x only the terms depending on the site (per plate element)",
        ),
        E(
            "ours reinforce (no RB)",
            elbo(rao_blackwellize=False),
            make_guide(R),
            "elbo",
            1,
            "score x whole ELBO",
        ),
        E(
            "ours reinforce fixed baseline",
            elbo(),
            make_guide(baseline="fixed"),
            "elbo",
            1,
            "RB + constant baseline (value: see text)",
            baseline="fixed",
        ),
        E(
            "ours reinforce learned baseline",
            elbo(),
            make_guide(baseline="learn"),
            "elbo",
            1,
            "RB + numpyro.param baseline per element, fitted by learn=True (see text)",
            baseline="learn",
        ),
        E(
            "ours reinforce running baseline",
            elbo(),
            make_guide(baseline="running"),
            "elbo",
            1,
            "RB + ppl.running_baseline per element (decay 0.9), state filled by SVI-style "
            "calls at fixed guide params (see text)",
            baseline="running",
        ),
        E(
            f"ours elbo(K={K}) RB",
            elbo(K),
            make_guide(R),
            "elbo",
            K,
            f"{K} independent RB reinforce estimates, averaged",
        ),
        E(
            f"ours elbo(K={K}, loo=True)",
            elbo(K, loo=True),
            make_guide(None if discrete else {"grad": ppl.reinforce(baseline="loo")}),
            "elbo",
            K,
            "leave-one-out baselines across particles (not additive: no RB)",
        ),
        E(
            f"ours vimco(K={K})",
            ppl.objectives.vimco(K),
            make_guide(None if discrete else {"grad": ppl.reinforce(baseline="loo")}),
            f"iwae(K={K})",
            K,
            "DIFFERENT target: IWAE bound; loo baselines",
        ),
        E(
            f"{REF_NAME} (particles={K})",
            TraceGraph_ELBO(num_particles=K, vectorize_particles=True),
            make_guide(),
            "elbo",
            K,
            "NumPyro, K particles averaged (vectorized)",
        ),
        E(
            "ours mvd",
            elbo(),
            make_guide({"grad": "mvd"}),
            "elbo",
            1,
            "measure-valued derivative, coupled replays",
        ),
    ]
    if discrete:
        out.append(
            E(
                "ours enum",
                elbo(),
                make_guide({"grad": "enum"}),
                "elbo",
                1,
                "local expectation per element (replays over the support)",
            )
        )
    return out


# ----------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------


def _flat(grads: dict[str, np.ndarray], coords) -> np.ndarray:
    return np.concatenate([grads[k] for k in coords], axis=1)


def fit_baseline(compiled: Compiled, params, data, steps: int, names, lr=0.5):
    """Adam on the baseline params only (learn=True gradient); guide params stay fixed."""
    import optax

    b = {k: params[k] for k in names}
    opt = optax.adam(lr)
    state = opt.init(b)
    keys = jax.random.split(jax.random.PRNGKey(123), steps)
    for key in keys:
        g = compiled({**params, **b}, key, *data)
        upd, state = opt.update({k: g[k] for k in names}, state, b)
        b = optax.apply_updates(b, upd)
    return {**params, **b}


def fill_running(e: Estimator, model, params, data, steps: int, names):
    """SVI's update of the running-baseline state (loss_with_mutable_state), guide fixed."""
    step = jax.jit(
        lambda p, k: e.loss.loss_with_mutable_state(k, p, model, e.guide, *data)["mutable_state"]
    )
    for key in jax.random.split(jax.random.PRNGKey(123), steps):
        state = step(params, key)
        params = {**params, **{k: state[k] for k in names}}
    return params


def _baseline_value(b):
    return b["mean"] / b["weight"] if isinstance(b, dict) else b


def bench_problem(cfg: Config, name, model, make_guide, params, data, coords, discrete, extra=()):
    ests = _estimators(name, cfg.K, make_guide, discrete) + list(extra)
    if cfg.only_estimators is not None:
        ests = [e for e in ests if e.name in cfg.only_estimators]
    base_names = [f"b_{s}" for s in _sites(make_guide, data)]
    key0 = jax.random.PRNGKey(0)

    # fixed baseline value: the mean ELBO estimate at these params (a common constant)
    val = jax.jit(loss_value(ppl.objectives.elbo(), model, make_guide()))
    elbo_vals = -np.array(
        [float(val(params, k, *data)) for k in jax.random.split(jax.random.PRNGKey(7), 100)]
    )
    fixed_b = float(elbo_vals.mean())  # the cost a score multiplies is on the ELBO scale

    rows = {}
    compiled, est_params = [], {}
    for e in ests:
        p = dict(params)
        if e.baseline is not None:
            for bn, (_site, n) in zip(base_names, _sites(make_guide, data).items(), strict=True):
                p[bn] = jnp.full(n, fixed_b if e.baseline == "fixed" else 0.0, jnp.float32)
                if e.baseline == "running":
                    p[bn] = {"mean": p[bn], "weight": jnp.zeros(())}
        if e.baseline == "running":
            p = fill_running(e, model, p, data, cfg.baseline_fit_steps, base_names)
        c = Compiled(e.name, loss_grad(e.loss, e.model or model, e.guide), (p, key0, *data))
        if e.baseline == "learn":
            p = fit_baseline(c, p, data, cfg.baseline_fit_steps, base_names)
            c.args = (p, key0, *data)
        compiled.append(c)
        est_params[e.name] = p
    stats = time_side_by_side(
        compiled, cfg.repeats, cfg.warmup, cfg.max_repeats, cfg.timing_budget_s
    )
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(3), cfg.var_keys))
    samples, samples_raw = {}, {}
    for e, c in zip(ests, compiled, strict=True):
        g = gradient_samples(c, est_params[e.name], keys, *data)
        samples_raw[e.name] = g
        samples[e.name] = _flat(g, coords)
    # reference for the mean: the lowest-variance same-target estimator
    same = [e for e in ests if e.target == "elbo"]
    ref = min(same, key=lambda e: samples[e.name].var(axis=0, ddof=1).sum()).name
    for e, c in zip(ests, compiled, strict=True):
        s = samples[e.name]
        var = float(s.var(axis=0, ddof=1).sum())
        ms = stats[e.name]["median_ms"]
        t, t_by_param = None, None
        if e.target == "elbo" and e.name != ref:
            t = mean_agreement(s, samples[ref])
            sizes = np.cumsum([0] + [samples_raw[e.name][k].shape[1] for k in coords])
            t_by_param = {
                k: mean_agreement(s[:, a:b], samples[ref][:, a:b])
                for k, a, b in zip(coords, sizes[:-1], sizes[1:], strict=True)
            }
        rows[e.name] = {
            "median_ms": ms,
            "p25_ms": stats[e.name]["p25_ms"],
            "p75_ms": stats[e.name]["p75_ms"],
            "timed_calls": stats[e.name]["repeats"],
            "compile_s": c.compile_s,
            "variance": var,
            "var_x_ms": var * ms,
            "target": e.target,
            "particles": e.particles,
            "max_abs_t_vs_ref": t,
            "max_abs_t_by_param": t_by_param,
            "variance_by_param": {
                k: float(samples_raw[e.name][k].var(axis=0, ddof=1).sum()) for k in coords
            },
            "note": e.note,
        }
        if e.baseline is not None:
            bvals = np.concatenate(
                [np.ravel(_baseline_value(est_params[e.name][b])) for b in base_names]
            )
            rows[e.name]["baseline_mean"] = float(bvals.mean())
    r0 = rows[REF_NAME]
    for r in rows.values():
        r["var_ratio_to_ref"] = r["variance"] / r0["variance"]
        r["time_ratio_to_ref"] = r["median_ms"] / r0["median_ms"]
        r["var_x_time_ratio_to_ref"] = r["var_x_ms"] / r0["var_x_ms"]
    best = min(
        (n for n in rows if n.startswith("ours") and rows[n]["target"] == "elbo"),
        key=lambda n: rows[n]["var_x_ms"],
    )
    out = {
        "problem": name,
        "coords": int(samples[REF_NAME].shape[1]),
        "keys": cfg.var_keys,
        "reference_for_mean": ref,
        "fixed_baseline_value": fixed_b,
        "elbo_mean": float(elbo_vals.mean()),
        "best_ours": best,
        "best_gain_vs_ref": r0["var_x_ms"] / rows[best]["var_x_ms"],
        "estimators": rows,
    }
    print(
        f"[variance] {name}: best ours {best}: {out['best_gain_vs_ref']:.1f}x lower "
        f"variance x time than {REF_NAME}",
        flush=True,
    )
    return out


def _sites(make_guide, data) -> dict[str, tuple]:
    """{latent site: batch shape} of a guide (for per-element baseline params)."""
    if make_guide is make_sbn_guide:
        return {"z1": (SBN_H1,), "z2": (SBN_H2,)}
    if make_guide is make_gmm_guide:
        return {"z": (data[0].shape[0],)}
    return {"w": ()}


def gmm_enum_extra() -> list[Estimator]:
    return [
        Estimator(
            "NumPyro TraceEnum_ELBO (guide enum)",
            TraceEnum_ELBO(max_plate_nesting=1),
            M.gmm_guide_numpyro_enum,
            "elbo",
            1,
            "z enumerated in the guide: exact E_q(z) (same ELBO)",
        ),
    ]


def run(cfg: Config) -> dict:
    t0 = time.perf_counter()
    results = {
        "config": dataclasses.asdict(cfg),
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    problems = []
    if "sbn" in cfg.problems:
        x = sbn_data()
        problems.append(
            bench_problem(
                cfg,
                f"SBN {SBN_H1}-{SBN_H2}-{SBN_D}",
                sbn_model,
                make_sbn_guide,
                sbn_params(),
                (x,),
                ["q1_logits", "q2_logits"],
                True,
            )
        )
    if "gmm" in cfg.problems:
        gx = M.gmm_data(cfg.gmm_n)
        gp = M.gmm_params(cfg.gmm_n)
        problems.append(
            bench_problem(
                cfg,
                f"GMM N={cfg.gmm_n} K=3",
                M.gmm_model,
                make_gmm_guide,
                gp,
                (gx,),
                ["mu_loc", "mu_scale", "z_logits"],
                True,
                extra=gmm_enum_extra(),
            )
        )
    if "logreg" in cfg.problems:
        X, y = M.lr_data(LR_N, LR_D)
        problems.append(
            bench_problem(
                cfg,
                f"logreg N={LR_N} D={LR_D}",
                M.lr_model,
                make_lr_guide,
                M.lr_params(LR_D),
                (X, y),
                ["w_loc", "w_scale"],
                False,
            )
        )
    results["problems"] = problems
    results["total_s"] = time.perf_counter() - t0
    results["machine"]["loadavg_end"] = _loadavg()
    return results


def _g(x):
    if x is None:
        return "n/a"
    return f"{x:.3g}"


def render_markdown(results: dict) -> str:
    cfg = results["config"]
    out = ["# Gradient variance x time", ""]
    out.append(
        f"Generated by `python -m benchmarks.variance` on {results['date']} "
        f"(total {results['total_s']:.0f} s); machine: {results['machine']['cpu']}, "
        f"{results['machine']['cores']} cores, jax {results['machine']['jax']}, "
        f"numpyro {results['machine']['numpyro']}, loadavg "
        f"{results['machine']['loadavg_start']} -> {results['machine']['loadavg_end']}."
    )
    out += [
        "",
        "Timings are noisy: the machine was shared with a concurrent test-suite run; "
        "times are medians of interleaved calls.",
        "",
    ]
    out += [
        "Method: all estimators at the same fixed params. *ms* = median time per compiled "
        f"gradient call; *variance* = sum over the guide's coordinates of the per-coordinate "
        f"gradient variance over {cfg['var_keys']} keys (baseline params excluded); "
        "*var x ms* = variance x median ms (lower is better); ratios are to NumPyro "
        f"`TraceGraph_ELBO` (1 particle). K = {cfg['K']} for the multi-particle rows (their "
        "gradients average K particles). *max |t|* = max over coordinates of "
        "|mean difference| / s.e. vs the lowest-variance same-ELBO estimator (the "
        "*reference*); expect < ~4. VIMCO targets the IWAE(K) bound: not compared.",
        "",
        "Fixed baseline = the mean ELBO estimate at these params (a constant, per "
        "element). Learned baseline = per-element `numpyro.param`, `ppl.reinforce(baseline=b,"
        f" learn=True)`, fitted by {cfg['baseline_fit_steps']} Adam steps (lr 0.5) on the "
        "baseline params only (guide params held fixed at the benchmark values). Running "
        "baseline = `ppl.running_baseline(shape=(n,))` per element, its state moved by "
        f"{cfg['baseline_fit_steps']} calls of `loss_with_mutable_state` (what SVI does each "
        "step) at the same fixed guide params.",
    ]
    for p in results["problems"]:
        out += [
            "",
            f"## {p['problem']}",
            "",
            f"{p['coords']} guide coordinates; reference for the mean: "
            f"{p['reference_for_mean']}; mean ELBO estimate {p['elbo_mean']:.2f}; "
            f"fixed baseline {p['fixed_baseline_value']:.2f}.",
            "",
        ]
        rows = []
        for n, r in p["estimators"].items():
            extra = f" (fitted mean {r['baseline_mean']:.2f})" if "baseline_mean" in r else ""
            rows.append(
                [
                    n,
                    r["particles"],
                    f"{r['median_ms']:.3f}",
                    _g(r["variance"]),
                    _g(r["var_x_ms"]),
                    _g(r["var_ratio_to_ref"]),
                    f"{r['time_ratio_to_ref']:.2f}",
                    _g(r["var_x_time_ratio_to_ref"]),
                    "n/a" if r["max_abs_t_vs_ref"] is None else f"{r['max_abs_t_vs_ref']:.2f}",
                    r["target"],
                    r["note"] + extra,
                ]
            )
        out.append(
            _table(
                [
                    "estimator",
                    "K",
                    "ms",
                    "variance",
                    "var x ms",
                    "var / TG",
                    "time / TG",
                    "var x time / TG",
                    "max |t|",
                    "target",
                    "note",
                ],
                rows,
            )
        )
        out += [
            "",
            f"Best ours (same ELBO): **{p['best_ours']}**, "
            f"{p['best_gain_vs_ref']:.1f}x lower variance x time than TraceGraph_ELBO.",
        ]
    out.append("")
    return "\n".join(out)


def main(quick: bool = False):
    jax.config.update("jax_enable_x64", False)
    cfg = Config.make(quick)
    results = run(cfg)
    md = render_markdown(results)
    print(md)
    if not quick:
        (HERE / "variance_results.json").write_text(json.dumps(results, indent=1) + "\n")
        (HERE / "VARIANCE_RESULTS.md").write_text(md)
        print(f"wrote {HERE / 'variance_results.json'}, {HERE / 'VARIANCE_RESULTS.md'}")
    rows = []
    for p in results["problems"]:
        for n, r in p["estimators"].items():
            rows.append({"problem": p["problem"], "estimator": n, **r})
    return rows


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
