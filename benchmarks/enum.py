"""Model-side and guide-side enumeration: ppl vs NumPyro ``TraceEnum_ELBO`` vs hand-written JAX.

Run ``python -m benchmarks.enum`` (writes ``benchmarks/ENUM_RESULTS.md`` and
``benchmarks/enum_results.json``) or ``--quick`` (smallest sizes, few repeats; prints only,
``--out DIR`` to write files); ``--render`` rewrites the tables from the stored JSON;
``--only chain`` (etc.) re-measures those sections and merges them into the stored JSON
(the run's date and machine, load average included, kept under ``remeasured``).

1. HMM gradient: jitted gradient of the loss w.r.t. the params, ppl ``elbo()`` on the
   ``scan`` model vs ``TraceEnum_ELBO`` (``markov`` form: it gets ``scan`` wrong) vs a
   hand-written forward algorithm.
2. Gaussian mixture: optimizer steps and time to a fixed exact log-likelihood target.
3. Guide-side enumeration of a chain of binary sites: compile and per-call time.

Timing as in ``benchmarks/run.py`` (``benchmarks.harness``): compile time = trace + lower +
XLA compile + first call; run time = median of interleaved calls after warm-up, each
``block_until_ready``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from numpyro.infer import SVI, TraceEnum_ELBO  # noqa: E402

import ppl  # noqa: E402
from benchmarks import enum_models as M  # noqa: E402
from benchmarks.enum_report import render  # noqa: E402
from benchmarks.harness import Compiled, time_side_by_side  # noqa: E402
from benchmarks.run import _jsonable, _loadavg, machine_info, svi_loss_grad  # noqa: E402
from ppl.core.time_parallel import sequential_scans  # noqa: E402

HERE = Path(__file__).resolve().parent


@dataclasses.dataclass
class Config:
    quick: bool = False
    hmm_sizes: tuple = ((4, 100), (16, 100), (4, 1000), (16, 1000))
    markov_max_T: int = 100  # TraceEnum's markov form unrolls T sites: compile grows with T
    repeats: int = 30
    max_repeats: int = 500
    budget_s: float = 5.0  # seconds of timed calls per table row
    warmup: int = 5
    mix_K: tuple = (3, 5, 10)
    mix_N: int = 1000
    mix_seeds: tuple = (0, 1)
    mix_steps: int = 2000  # steps recorded per method (target reached or not)
    mix_long_steps: int = 6000  # the reference optimum's run
    mix_lr: float = 0.05
    mix_tol: float = 0.01  # target: within 1% of the optimum's improvement over init
    chain_K: tuple = (4, 8, 16)

    @classmethod
    def make(cls, quick: bool) -> Config:
        if not quick:
            return cls()
        return cls(
            quick=True,
            hmm_sizes=((4, 100),),
            repeats=5,
            max_repeats=5,
            budget_s=0.0,
            warmup=1,
            mix_K=(3,),
            mix_seeds=(0,),
            mix_steps=300,
            mix_long_steps=1000,
            chain_K=(4, 8),
        )


def _timed(cfg, makers, args):
    """Compile each (name, fn) and time them side by side."""
    fns = [Compiled(name, fn, args) for name, fn in makers]
    return time_side_by_side(fns, cfg.repeats, cfg.warmup, cfg.max_repeats, cfg.budget_s)


# ----------------------------------------------------------------------------------
# 1. HMM
# ----------------------------------------------------------------------------------
def bench_hmm(cfg: Config) -> list[dict]:
    rows = []
    for S, T in cfg.hmm_sizes:
        params, y = M.hmm_problem(S, T)
        key = jax.random.PRNGKey(0)
        scan_m, markov_m = partial(M.hmm_scan, S=S), partial(M.hmm_markov, S=S)
        ppl_grad = svi_loss_grad(ppl.objectives.elbo(), scan_m, M.no_guide)

        def ppl_grad_sequential(p, k, y, ppl_grad=ppl_grad):
            with sequential_scans():  # the scan body stacked by NumPyro's lax.scan
                return ppl_grad(p, k, y)

        makers = [
            ("ppl elbo (scan)", ppl_grad),
            ("diag: ppl elbo, sequential scan body", ppl_grad_sequential),
            ("hand forward", lambda p, k, y: jax.grad(M.hmm_forward_loss)(p, y)),
            ("diag: hand log-depth tree", lambda p, k, y: jax.grad(M.hmm_tree_loss)(p, y)),
        ]
        if T <= cfg.markov_max_T:
            makers.append(
                ("TraceEnum (markov)", svi_loss_grad(TraceEnum_ELBO(), markov_m, M.no_guide))
            )
        makers.append(
            ("TraceEnum (scan, wrong value)", svi_loss_grad(TraceEnum_ELBO(), scan_m, M.no_guide))
        )
        values = {
            "hand": float(M.hmm_forward_loss(params, y)),
            "tree": float(M.hmm_tree_loss(params, y)),
            "ppl": float(ppl.objectives.elbo().loss(key, params, scan_m, M.no_guide, y)),
            "TraceEnum scan": float(TraceEnum_ELBO().loss(key, params, scan_m, M.no_guide, y)),
        }
        stats = _timed(cfg, makers, (params, key, y))
        rows.append({"S": S, "T": T, "methods": stats, "loss_values": values})
        ppl_ms, hand_ms = stats["ppl elbo (scan)"]["median_ms"], stats["hand forward"]["median_ms"]
        print(f"[hmm] S={S} T={T}: ppl {ppl_ms:.3f} ms, hand {hand_ms:.3f} ms", flush=True)
    return rows


# ----------------------------------------------------------------------------------
# 2. Gaussian mixture: time to a fixed exact target
# ----------------------------------------------------------------------------------
def _mixture_methods(K):
    enum_m, sampled_m = partial(M.mixture_enum, K=K), partial(M.mixture_sampled, K=K)
    no_guide = M.no_guide
    return {
        "TraceEnum_ELBO": (TraceEnum_ELBO(), enum_m, no_guide),
        "ppl elbo()": (ppl.objectives.elbo(), enum_m, no_guide),
        "ppl iwae(8)": (ppl.objectives.iwae(8), enum_m, no_guide),
        "ppl guide enum": (
            ppl.objectives.elbo(),
            sampled_m,
            partial(M.assignment_guide("enum"), K=K),
        ),
        "ppl guide reinforce": (
            ppl.objectives.elbo(),
            sampled_m,
            partial(M.assignment_guide("reinforce"), K=K),
        ),
    }


_MODEL_PARAMS = ("weights", "locs", "scales")


def _trajectory(svi, x, steps):
    """Jitted ``state -> model params after every step`` (one scan over ``steps`` updates)."""

    @jax.jit
    def run(state):
        def body(state, _):
            state, _ = svi.update(state, x)
            p = svi.get_params(state)
            return state, {k: p[k] for k in _MODEL_PARAMS}

        return jax.lax.scan(body, state, None, length=steps)[1]

    return run


def _first_reach(ll, target):
    hit = np.nonzero(np.asarray(ll) >= target)[0]
    return int(hit[0]) + 1 if hit.size else None


def bench_mixture(cfg: Config) -> list[dict]:
    rows = []
    ll_fn = jax.jit(jax.vmap(M.mixture_log_lik, in_axes=(0, None)))
    for K in cfg.mix_K:
        x = M.mixture_data(K, cfg.mix_N)
        methods = _mixture_methods(K)
        opt = optax.adam(cfg.mix_lr)
        # per-step time and compile time of one SVI update, all methods side by side
        svis = {n: SVI(m, g, opt, loss=loss) for n, (loss, m, g) in methods.items()}
        init = M.mixture_init(K, x, cfg.mix_seeds[0])
        fns = [
            Compiled(n, svi.update, (svi.init(jax.random.PRNGKey(0), x, init_params=init), x))
            for n, svi in svis.items()
        ]
        step = time_side_by_side(fns, cfg.repeats, cfg.warmup, cfg.max_repeats, cfg.budget_s)
        runs = {n: _trajectory(svi, x, cfg.mix_steps) for n, svi in svis.items()}
        long_run = _trajectory(svis["ppl elbo()"], x, cfg.mix_long_steps)
        for seed in cfg.mix_seeds:
            init = M.mixture_init(K, x, seed)
            ll0 = float(M.mixture_log_lik(init, x))
            key = jax.random.PRNGKey(seed)
            # reference optimum: a long exact-gradient run (ppl elbo(), same optimizer)
            st = svis["ppl elbo()"].init(key, x, init_params=init)
            ll_long = np.asarray(ll_fn(long_run(st), x))
            per = {}
            for name, svi in svis.items():
                st = svi.init(key, x, init_params=init)
                per[name] = np.asarray(ll_fn(runs[name](st), x))
            ll_star = max(float(ll_long.max()), *(float(v.max()) for v in per.values()))
            target = ll_star - cfg.mix_tol * (ll_star - ll0)
            res = {}
            for name, ll in per.items():
                n = _first_reach(ll, target)
                ms, comp = step[name]["median_ms"], step[name]["compile_s"]
                res[name] = {
                    "steps": n,
                    "time_s": None if n is None else n * ms / 1e3,
                    "time_incl_compile_s": None if n is None else n * ms / 1e3 + comp,
                    "final_ll": float(ll[-1]),
                }
            rows.append(
                {"K": K, "seed": seed, "ll0": ll0, "ll_star": ll_star, "target": target}
                | {"methods": res}
            )
            print(
                f"[mixture] K={K} seed={seed}: "
                + ", ".join(f"{n} {r['steps']}" for n, r in res.items()),
                flush=True,
            )
        rows.append({"K": K, "step": step})
    return rows


# ----------------------------------------------------------------------------------
# 3. guide-side enumeration of a binary chain
# ----------------------------------------------------------------------------------
def bench_chain(cfg: Config) -> list[dict]:
    rows = []
    for K in cfg.chain_K:
        params, x = M.chain_problem(K)
        key = jax.random.PRNGKey(0)
        ours = M.chain_guide({"grad": "enum"})
        theirs = M.chain_guide({"enumerate": "parallel"})
        makers = [
            ("ppl enum", svi_loss_grad(ppl.objectives.elbo(), M.chain_model, ours)),
            ("TraceEnum_ELBO", svi_loss_grad(TraceEnum_ELBO(), M.chain_model, theirs)),
        ]
        values = {
            "ppl": float(ppl.objectives.elbo().loss(key, params, M.chain_model, ours, x)),
            "TraceEnum": float(TraceEnum_ELBO().loss(key, params, M.chain_model, theirs, x)),
        }
        stats = _timed(cfg, makers, (params, key, x))
        rows.append({"K": K, "methods": stats, "loss_values": values})
        a, b = (stats[n]["median_ms"] for n in ("ppl enum", "TraceEnum_ELBO"))
        print(f"[chain] K={K}: ppl {a:.3f} ms, TraceEnum {b:.3f} ms", flush=True)
    return rows


def run(cfg: Config, only=None) -> dict:
    t0 = time.perf_counter()
    results = {"config": dataclasses.asdict(cfg), "machine": machine_info()}
    results["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    benches = {"hmm": bench_hmm, "mixture": bench_mixture, "chain": bench_chain}
    for name, bench in benches.items():
        if only is None or name in only:
            results[name] = bench(cfg)
    results["total_s"] = time.perf_counter() - t0
    results["machine"]["loadavg_end"] = _loadavg()
    return _jsonable(results)


def merge(stored: dict, partial: dict) -> dict:
    """``stored`` with the sections measured in ``partial`` replaced, each noted with the
    date and machine (load average) of the run that measured it."""
    merged = dict(stored)
    remeasured = dict(merged.get("remeasured", {}))
    for name in ("hmm", "mixture", "chain"):
        if name in partial:
            merged[name] = partial[name]
            remeasured[name] = {"date": partial["date"], "machine": partial["machine"]}
            merged.pop(f"{name}_date", None)
    merged["remeasured"] = remeasured
    return merged


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smallest sizes, few repeats")
    parser.add_argument("--out", default=None, help="output directory")
    parser.add_argument("--only", nargs="*", choices=["hmm", "mixture", "chain"])
    parser.add_argument("--render", action="store_true", help="re-render from the stored JSON")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads((HERE / "enum_results.json").read_text())
        (HERE / "ENUM_RESULTS.md").write_text(render(results))
        return results
    results = run(Config.make(args.quick), args.only)
    out = args.out if args.out is not None else (None if args.quick else str(HERE))
    if out is not None:  # the JSON first: the tables can be re-rendered from it (--render)
        outdir = Path(out)
        outdir.mkdir(parents=True, exist_ok=True)
        if args.only and (outdir / "enum_results.json").exists():
            results = merge(json.loads((outdir / "enum_results.json").read_text()), results)
        (outdir / "enum_results.json").write_text(json.dumps(results, indent=1) + "\n")
    md = render(results)
    print(md)
    if out is not None:
        (outdir / "ENUM_RESULTS.md").write_text(md)
        print(f"wrote {outdir / 'ENUM_RESULTS.md'}")
    return results


if __name__ == "__main__":
    main()
