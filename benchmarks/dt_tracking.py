"""Distribution transformer on the tracking / sensor-fusion task vs a bootstrap particle filter.

    python -m benchmarks.dt_tracking train [--steps 8000]   # trains DT-4 -> models/dt_tracking/
    python -m benchmarks.dt_tracking bench                  # NLL per step, time per step
                                                            #   -> DT_TRACKING_RESULTS.md
    python -m benchmarks.dt_tracking ablation --net PATH    # another network, same series
                                                            #   (after bench, which resets them)

Training writes models/dt_tracking/dt4.eqx and train_info.json (checkpointed and resumable
under models/dt_tracking/ckpt/, which is not shipped). The benchmark draws unseen series
from ``models.dt_tracking.series_model`` (a key never used in training) and runs the DT
filter, the bootstrap particle filter (1000 and 10000 particles) and an EKF on the same
series. Expected NLL per step = mean over series and steps of −log q_t(x_t).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from functools import partial
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import ppl.dt as dt
from models import dt_tracking as T

ROOT = Path(__file__).resolve().parents[1]
NET_DIR = ROOT / "models" / "dt_tracking"
NET_PATH = NET_DIR / "dt4.eqx"
RESULTS = Path(__file__).resolve().parent / "DT_TRACKING_RESULTS.md"
K = 4
ARCH = {"d_model": 32, "num_layers": 2}


def skeleton(arch: dict | None = None):
    return T.make_network(K, jax.random.key(0), **(arch or ARCH))


def info_path(net_path: Path) -> Path:
    """dt4{tag}.eqx -> train_info{tag}.json beside it."""
    net_path = Path(net_path)
    return net_path.with_name(net_path.stem.replace("dt4", "train_info", 1) + ".json")


def load_net(path: Path = NET_PATH):
    """A trained DT-4 (its architecture from the train_info json beside it)."""
    return T.load_network(path)


def probe_step_seconds(net, obj, calls: int = 5) -> float:
    """Seconds per loss+gradient evaluation (after compilation): sizes a time-budgeted run."""
    f = eqx.filter_jit(eqx.filter_value_and_grad(lambda n, k: obj.loss(n, k)))
    jax.block_until_ready(f(net, jax.random.key(0)))
    t0 = time.perf_counter()
    for i in range(calls):
        jax.block_until_ready(f(net, jax.random.key(i + 1)))
    return (time.perf_counter() - t0) / calls


def train(
    steps: int,
    batch: int,
    rollout: int,
    lr: float,
    arch: dict,
    tag: str = "",
    out_dir: Path = NET_DIR,
    budget: float | None = None,
) -> dict:
    """Train DT-4 with FilterForwardKL (checkpoint every 100 steps; resumes if interrupted).

    With ``budget`` (seconds), the step count is min(steps, what fits the budget at the
    probed speed), rounded down to a multiple of 100.
    """
    out_dir = Path(out_dir)
    (out_dir / "ckpt").mkdir(parents=True, exist_ok=True)
    net = T.make_network(K, jax.random.key(300), **arch)
    obj = T.FilterForwardKL(K, rollout, batch)
    probe = None
    if budget is not None:
        probe = probe_step_seconds(net, obj)
        steps = max(100, min(steps, int(budget / (1.15 * probe)) // 100 * 100))
        print(f"probe {probe * 1e3:.1f} ms/step -> {steps} steps", flush=True)
    t0 = time.perf_counter()
    res = dt.train(
        net,
        obj,
        jax.random.key(400),
        steps,
        learning_rate=lr,
        checkpoint=out_dir / "ckpt" / f"dt4{tag}.ckpt",
        every=100,
        progress=budget is None,
    )
    secs = time.perf_counter() - t0
    eqx.tree_serialise_leaves(out_dir / f"dt4{tag}.eqx", res.net)
    info = {
        "command": f"python -m benchmarks.dt_tracking train --steps {steps} --batch {batch} "
        f"--rollout {rollout} --lr {lr} --d-model {arch['d_model']} "
        f"--layers {arch['num_layers']}",
        "arch": arch,
        "num_components": K,
        "steps": steps,
        "batch": batch,
        "rollout": rollout,
        "lr": lr,
        "seconds_this_process": round(secs, 1),
        "probe_seconds_per_step": probe,
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "loss_first100": float(np.mean(res.losses[:100])),
        "loss_last100": float(np.mean(res.losses[-100:])),
    }
    (out_dir / f"train_info{tag}.json").write_text(json.dumps(info, indent=1))
    np.save(out_dir / f"losses{tag}.npy", res.losses)
    print(json.dumps(info, indent=1), flush=True)
    return info


def _timed(fn, *args, repeats: int = 5) -> tuple:
    """(output, compile + first call s, median of ``repeats`` further calls s)."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - t0)
    return out, first, float(np.median(runs))


def bench_timing(net, series: dict, particles=(1000, 10000)) -> dict:
    """Wall times of the filters alone (posteriors / moments only), batched over all series and
    for one series; compile separated."""
    one = jax.tree.map(lambda x: x[0], series)

    @eqx.filter_jit
    def dt_run(net, s):
        def f(v):
            tokens, mask = T.stream(v)
            return T.dt_filter(net, T.initial_prior(v, K), tokens, mask)

        return jax.vmap(f)(s) if s["x"].ndim == 3 else f(s)

    def pf_run(n):
        @jax.jit
        def run(key, s):
            def f(k, v):
                m0, P0 = T.prior_mean_cov(v)
                k0, k1 = jax.random.split(k)
                x0 = m0 + jax.random.normal(k0, (n, 4)) * jnp.sqrt(jnp.diag(P0))
                return T.particle_filter(k1, x0, T.readings(v))

            if s["x"].ndim == 2:
                return f(key, s)
            return jax.vmap(f)(jax.random.split(key, s["x"].shape[0]), s)

        return run

    @jax.jit
    def ekf_run(s):
        f = lambda v: T.ekf(*T.prior_mean_cov(v), T.readings(v))  # noqa: E731
        return jax.vmap(f)(s) if s["x"].ndim == 3 else f(s)

    runs = [("dt4", lambda s: dt_run(net, s))]
    for n in particles:
        runs.append((f"pf{n}", partial(pf_run(n), jax.random.key(7))))
    runs.append(("ekf", ekf_run))
    out = {}
    for name, fn in runs:
        _, first_b, run_b = _timed(fn, series)
        _, first_1, run_1 = _timed(fn, one)
        out[name] = {
            "batched_compile_first_s": first_b,
            "batched_run_s": run_b,
            "single_compile_first_s": first_1,
            "single_run_s": run_1,
        }
        print(name, out[name], flush=True)
    return out


def bench_nll(net, series: dict, particles=(1000, 10000)) -> dict:
    """Expected NLL per step (mean over series and steps), its standard error and median."""

    def stats(a):
        a = np.asarray(a)
        per_series = a.mean(1)
        return {
            "mean": float(a.mean()),
            "se": float(per_series.std(ddof=1) / np.sqrt(len(per_series))),
            "median": float(np.median(a)),
            "per_step_mean": a.mean(0).tolist(),
            "per_series": per_series.tolist(),
        }

    out = {"dt4": stats(T.dt_nll(net, series, K))}
    out["prior_only"] = stats(T.dt_nll(skeleton(), series, K))  # untrained: predicted prior
    for n in particles:
        r = T.pf_nll(jax.random.key(11), series, n)
        out[f"pf{n}_gauss"], out[f"pf{n}_kde"] = stats(r["gauss"]), stats(r["kde"])
    out["ekf"] = stats(T.ekf_nll(series))
    for k, v in out.items():
        print(k, {a: b for a, b in v.items() if not a.startswith("per_")}, flush=True)
    return out


ROWS = [
    ("dt4", "dt4", "DT-4 (`ppl.dt.filter`)"),
    ("pf1000_gauss", "pf1000", "bootstrap PF, 1000 particles, Gaussian fit"),
    ("pf1000_kde", "pf1000", "bootstrap PF, 1000 particles, KDE"),
    ("pf10000_gauss", "pf10000", "bootstrap PF, 10000 particles, Gaussian fit"),
    ("pf10000_kde", "pf10000", "bootstrap PF, 10000 particles, KDE"),
    ("ekf", "ekf", "EKF (clutter ignored)"),
    ("prior_only", None, "predicted prior only (no update)"),
]


def ablation_lines(res: dict) -> list[str]:
    """One paragraph per extra network evaluated by ``ablation`` (same series)."""
    out = []
    base = np.asarray(res["nll"]["dt4"]["per_series"])
    for name, r in res.get("ablations", {}).items():
        t = r["train"]
        d = np.asarray(r["per_series"]) - base
        out += [
            f"Ablation `{name}` (`{t['command']}`, {t['seconds_this_process']} s): NLL/step "
            f"{r['mean']:.3f} ± {r['se']:.3f}; minus the shipped DT-4, paired: "
            f"{d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(d.size):.3f}.",
            "",
        ]
    return out


def write_results() -> None:
    import numpyro
    import optax

    res = json.loads((NET_DIR / "bench_cpu.json").read_text())
    info = json.loads(info_path(NET_PATH).read_text())
    num, steps = res["num"], T.T_SERIES
    nll, tim = res["nll"], res["timing"]
    lines = [
        "# Distribution transformer: tracking / sensor fusion (task c)",
        "",
        f"Generated by `python -m benchmarks.dt_tracking bench` (network: `{info['command']}`).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {jax.device_count()} JAX "
        f"device(s) ({jax.devices()[0].platform}), shared 2-core CPU under load from other jobs "
        f"(times are upper bounds). Python {platform.python_version()}, jax {jax.__version__}, "
        f"numpyro {numpyro.__version__}, equinox {eqx.__version__}, optax {optax.__version__}.",
        "",
        f"Task (`models/dt_tracking.py`): state (px, py, vx, vy), constant-velocity dynamics "
        f"(step {T.DT_STEP}, white-noise acceleration q = {T.Q_DENSITY}); per step a range "
        f"‖p‖ + N(0, {T.SIGMA_R}²) that is clutter U(0, {T.R_MAX}) with probability "
        f"{T.CLUTTER}, and a bearing VonMises(atan2(py, px), 1/{T.SIGMA_B}²). {num} unseen "
        f"series of {steps} steps (initial range U(3, 7), any bearing, prior sd {T.P0_SD}); "
        "every filter starts from the same known prior N(m0, P0) and sees the same readings.",
        "",
        "Expected NLL per step = mean over series and steps of −log q_t(x_t) at the true state "
        "(± standard error over series). The PF's density is a Gaussian with the weighted "
        "particles' mean and covariance, or a weighted Gaussian KDE (Scott bandwidth × weighted "
        "covariance), both taken before resampling. Time per step: the filter alone (DT: GMM "
        "posteriors; PF: propagate, weight, moments, resample; EKF: mean and covariance), jitted, "
        "`block_until_ready`, median of 5 calls after a compiling call, divided by the "
        f"{steps} steps; 'one series' is one call on one series, 'batched' one `vmap`ped call "
        f"on all {num} series (so per series-step divide by {num}).",
        "",
        "| method | expected NLL / step | median NLL | ms / step, one series "
        f"| ms / step, {num} series batched | compile + first call, one series (s) |",
        "|---|---|---|---|---|---|",
    ]
    for key, tkey, label in ROWS:
        r = nll[key]
        if tkey is None:
            t = ("–", "–", "–")
        else:
            x = tim[tkey]
            t = (
                f"{1e3 * x['single_run_s'] / steps:.3f}",
                f"{1e3 * x['batched_run_s'] / steps:.3f}",
                f"{x['single_compile_first_s']:.1f}",
            )
        lines.append(
            f"| {label} | {r['mean']:.3f} ± {r['se']:.3f} | {r['median']:.3f} | "
            + " | ".join(t)
            + " |"
        )
    marks = [0, 4, 9, 19, steps - 1]
    lines += [
        "",
        "Mean NLL at selected steps (error accumulation over the recursion):",
        "",
        "| method | " + " | ".join(f"t={i + 1}" for i in marks) + " |",
        "|---|" + "---|" * len(marks),
    ]
    for key, _, label in ROWS:
        if key in ("ekf",):
            continue
        per = nll[key]["per_step_mean"]
        lines.append(f"| {label} | " + " | ".join(f"{per[i]:.2f}" for i in marks) + " |")

    def paired(other):
        if "per_series" not in nll["dt4"]:
            return "n/a"
        d = np.asarray(nll["dt4"]["per_series"]) - np.asarray(nll[other]["per_series"])
        return f"{d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(d.size):.3f}"

    def ratio(pf, kind):
        return tim[pf][f"{kind}_run_s"] / tim["dt4"][f"{kind}_run_s"]

    lines += [
        "",
        "Accuracy, paired over the same series (DT-4 NLL − PF NLL, ± standard error; negative "
        f"= DT better): vs PF-1000 Gaussian fit {paired('pf1000_gauss')}, KDE "
        f"{paired('pf1000_kde')}; vs PF-10000 Gaussian fit {paired('pf10000_gauss')}, KDE "
        f"{paired('pf10000_kde')}.",
        "",
        *ablation_lines(res),
        "Speed, PF time ÷ DT-4 time per step (> 1: DT faster): one series, PF-1000 "
        f"{ratio('pf1000', 'single'):.1f}, PF-10000 {ratio('pf10000', 'single'):.1f}; batched "
        f"over {num} series, PF-1000 {ratio('pf1000', 'batched'):.1f}, PF-10000 "
        f"{ratio('pf10000', 'batched'):.1f}.",
        "",
        f"Training (CPU, this machine): {info['steps']} steps × {info['batch']} rollouts of "
        f"{info['rollout']} steps in {info['seconds_this_process']} s; loss (mean −log q_t over "
        f"the rollout) {info['loss_first100']:.2f} over the first 100 steps, "
        f"{info['loss_last100']:.2f} over the last 100; architecture {info['arch']}, K = "
        f"{info['num_components']}, peak learning rate {info['lr']}. Network: "
        f"`models/dt_tracking/dt4.eqx` ({(NET_DIR / 'dt4.eqx').stat().st_size / 1e3:.0f} kB).",
        "",
        "Paper (GPU, its own sensor-fusion setup, 100 series): EKF 95.9 at 0.010 s/step; particle "
        "filter −0.244 at 0.818 s/step; DT-4 −0.197 at 0.017 s/step. The absolute NLLs are not "
        "comparable (different state scales and sensors); the comparison is the ordering and "
        "the ratios.",
        "",
        "Notes. " + NOTES,
        "",
    ]
    RESULTS.write_text("\n".join(lines))


NOTES = (
    "The network is a `WhitenedDT` (models/dt_tracking.py): the distribution transformer runs "
    "in the prior's whitened frame on EKF-style innovation features (residual of each reading "
    "at the prior mean, normalized by its predicted sd, and the whitened measurement "
    "gradient). A first version on raw coordinates and raw reading tokens (same size, 3600 "
    "steps) stayed near the predicted prior (NLL −0.04 vs the PF's −5.5 on 40 series) and "
    "drifted over the recursion. The ablation `dt4_r1` is trained on one-step problems only "
    "(`--rollout 1`: the network never sees its own posteriors as priors; same steps and batch, "
    "so 1/8 of the simulated states and 1/6 of the time): it is worse over the 30-step "
    "recursion, which is consistent with training through `ppl.dt.filter` rollouts (the "
    "sequential analogue of `sequential=`) paying off, though this run does not separate the "
    "rollout from the amount of data. The PF's Gaussian fit scores better than its KDE here "
    "(Scott bandwidth, not tuned). The EKF treats every range as real, so clutter readings "
    "(20%) pull it far off: its NLL is dominated by those steps, as in the paper. No GPU "
    "timing: the session's device time was used by another job."
)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("cmd", choices=["train", "bench", "ablation", "report"])
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rollout", type=int, default=6)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--d-model", type=int, default=ARCH["d_model"])
    p.add_argument("--layers", type=int, default=ARCH["num_layers"])
    p.add_argument("--tag", default="")
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--budget", type=float, default=None, help="training seconds (probed)")
    p.add_argument("--out", default=str(NET_DIR))
    p.add_argument("--net", default=str(NET_PATH))
    p.add_argument("--timing-only", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "train":
        arch = {"d_model": a.d_model, "num_layers": a.layers}
        train(a.steps, a.batch, a.rollout, a.lr, arch, a.tag, Path(a.out), a.budget)
    elif a.cmd == "bench":
        net = load_net(Path(a.net))
        series = T.simulate(jax.random.key(50_000), T.series_model, a.num)
        res = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "num": a.num}
        res["timing"] = bench_timing(net, series)
        if not a.timing_only:
            res["nll"] = bench_nll(net, series)
        out = Path(a.out) / f"bench_{jax.devices()[0].platform}.json"
        out.write_text(json.dumps(res, indent=1))
        if not a.timing_only:
            write_results()
    elif a.cmd == "ablation":  # NLL of another trained network on the benchmark's series
        net = load_net(Path(a.net))
        series = T.simulate(jax.random.key(50_000), T.series_model, a.num)
        path = NET_DIR / "bench_cpu.json"
        res = json.loads(path.read_text())
        d = np.asarray(T.dt_nll(net, series, K))
        info = json.loads(info_path(Path(a.net)).read_text())
        res.setdefault("ablations", {})[Path(a.net).stem] = {
            "train": info,
            "mean": float(d.mean()),
            "se": float(d.mean(1).std(ddof=1) / np.sqrt(d.shape[0])),
            "per_series": d.mean(1).tolist(),
        }
        path.write_text(json.dumps(res, indent=1))
        write_results()
    elif a.cmd == "report":
        write_results()


if __name__ == "__main__":
    main()
