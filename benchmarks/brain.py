"""BRAIn and its relatives on a small alignment task with an exact reward posterior.

``models/alignment.py`` trains a reference policy (SFT, TinyTransformer) and a
Bradley–Terry reward model on generated data; responses are 4 tokens over a vocabulary of
4, so the reward posterior p_ref exp(r / β) over the 256 responses of each of the 16
prompts is exact. Each objective trains a policy initialized at the reference with NumPyro
SVI (Adam) for the same number of steps and samples per prompt; the table reports exact
KL(posterior ‖ policy), the expected learned and true rewards and KL(policy ‖ reference),
averaged over prompts and seeds, with the self-normalized KL and ESS the objective logged
(mean over the last 50 steps). Compile time (``jit(...).lower().compile()`` of the whole
scanned training loop) is separate from run time. Writes ``benchmarks/BRAIN_RESULTS.md``.

    python -m benchmarks.brain [--quick] [--steps N]
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
import numpyro
import optax
from numpyro.infer import SVI

import ppl
from models import alignment

HERE = Path(__file__).parent


def objectives():
    n = 8
    return {
        "brain (q' = reference)": (ppl.objectives.brain(n), False),
        "brain (q' = snapshot, every 10)": (
            ppl.objectives.brain(n, ppl.reward.snapshot(every=10)),
            True,
        ),
        "brain (q' = policy)": (ppl.objectives.brain(n, "policy"), False),
        "dpg (q' = reference)": (ppl.objectives.dpg(n), False),
        "gdcpp (q' = reference)": (ppl.objectives.gdcpp(n), False),
        "dpo (beta=1, BT labels, 4 pairs)": (ppl.objectives.dpo(1.0, num_pairs=n // 2), False),
        "dpo (beta=1, argmax labels, 4 pairs)": (
            ppl.objectives.dpo(1.0, num_pairs=n // 2, labels="argmax"),
            False,
        ),
        "ppo (on-policy, leave-one-out)": (ppl.objectives.ppo(n), False),
        "fdiv js (q' = reference)": (ppl.objectives.fdiv("js", n), False),
        "fdiv reverse_kl (q' = reference)": (ppl.objectives.fdiv("reverse_kl", n), False),
        "fdiv tv (q' = reference)": (ppl.objectives.fdiv("tv", n), False),
    }


def train(task, loss, snapshot, steps, seeds, lr):
    """Compile the scanned training loop once, run it from each seed's initial state."""
    policy = ppl.reward.sequence_policy(task.reference_net, alignment.LENGTH, param="policy")
    if snapshot:
        policy = ppl.reward.keep_snapshot(policy)
    svi = SVI(task.target, policy, optax.adam(lr), loss=loss)
    states = [svi.init(jax.random.PRNGKey(seed), task.prompts) for seed in seeds]

    def body(s, _):
        s, value = svi.update(s, task.prompts)
        return s, (value, s.mutable_state["reward_metrics"])

    run = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps))
    t0 = time.perf_counter()
    compiled = run.lower(states[0]).compile()
    compile_s = time.perf_counter() - t0
    outs = []
    for state in states:
        t0 = time.perf_counter()
        state, (losses, metrics) = jax.block_until_ready(compiled(state))
        run_s = time.perf_counter() - t0
        out = alignment.evaluate(task, alignment.policy_net(task, svi.get_params(state)))
        tail = slice(-min(50, steps), None)
        out.update(
            d_sn=float(np.mean(metrics["d_sn"][tail])),
            ess=float(np.mean(metrics["ess"][tail])),
            compile_s=compile_s,
            run_s=run_s,
        )
        outs.append(out)
    return outs


def main(quick: bool = False, steps: int | None = None):
    steps = steps or (60 if quick else 2000)
    seeds = (0,) if quick else (0, 1)
    lr = 3e-3
    t0 = time.perf_counter()
    task = alignment.build(quick=quick)
    build_s = time.perf_counter() - t0
    summary = alignment.data_summary(task)
    rows = {}
    for name, (loss, snap) in objectives().items():
        runs = train(task, loss, snap, steps, seeds, lr)
        rows[name] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        rows[name]["kl_posterior_sd"] = float(np.std([r["kl_posterior"] for r in runs]))
        print(name, {k: round(v, 4) for k, v in rows[name].items()}, flush=True)
    ref = alignment.evaluate(task, task.reference_net)
    write(task, summary, ref, rows, steps, seeds, lr, build_s, quick)
    return rows


def write(task, summary, ref, rows, steps, seeds, lr, build_s, quick):
    versions = (
        f"Python {sys.version.split()[0]}, jax {jax.__version__}, numpyro "
        f"{numpyro.__version__}, ppl {ppl.__version__}; {platform.platform()}, "
        f"{platform.processor() or platform.machine()}, devices {jax.devices()}; "
        f"{os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.1f} "
        f"(timings on a shared machine are inflated when it exceeds the CPU count)"
    )
    lines = [
        "# BRAIn benchmark: distilling an exact reward posterior into a policy",
        "",
        "Generated by `python -m benchmarks.brain`"
        + (" --quick (smoke run: fewer steps)" if quick else "")
        + f". {versions}.",
        "",
        f"Task (`models/alignment.py`): 16 prompts x 256 responses (4 tokens, vocabulary 4). "
        f"Reference: TinyTransformer trained by SFT on 8000 generated pairs (KL(data rule ‖ "
        f"reference) = {summary['kl_sft_data_to_reference']:.3f}); Bradley–Terry reward model "
        f"(MLP) fit to 6000 generated preference pairs (correlation with the hidden true "
        f"reward {summary['reward_true_correlation']:.3f}). Target: p_ref exp(r / β), "
        f"β = {alignment.BETA}, exact by enumeration: KL(posterior ‖ reference) = "
        f"{summary['posterior_kl_to_reference']:.3f}, expected reward "
        f"{summary['posterior_reward']:.3f} (reference {summary['reference_reward']:.3f}), "
        f"true reward {summary['posterior_true_reward']:.3f} (reference "
        f"{summary['reference_true_reward']:.3f}). Building the task (SFT + reward model "
        f"training + enumeration) took {build_s:.1f} s.",
        "",
        f"Training: policy initialized at the reference, Adam lr {lr}, {steps} SVI steps, "
        f"8 samples per prompt per step (DPO: 4 pairs), all 16 prompts per step; seeds "
        f"{list(seeds)} (means; ± = std over seeds). D_SN and ESS: the objective's logged "
        f"self-normalized KL and effective sample size of the target weights (of 8), mean "
        f"over the last 50 steps. Metrics are exact (enumeration), averaged over prompts.",
        "",
        "| objective | KL(post ‖ π) | reward | true reward | KL(π ‖ ref) | D_SN | ESS | "
        "compile s | run s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| reference (no training) | {ref['kl_posterior']:.4f} | {ref['reward']:.3f} | "
        f"{ref['true_reward']:.3f} | 0 | | | | |",
    ]
    for name, r in rows.items():
        sd = f" ± {r['kl_posterior_sd']:.4f}" if len(seeds) > 1 else ""
        lines.append(
            f"| {name} | {r['kl_posterior']:.4f}{sd} | {r['reward']:.3f} | "
            f"{r['true_reward']:.3f} | {r['kl_reference']:.4f} | {r['d_sn']:.4f} | "
            f"{r['ess']:.2f} | {r['compile_s']:.1f} | {r['run_s']:.1f} |"
        )
    lines += [
        "",
        f"Exact posterior (the target of every row): KL(post ‖ π) = 0, reward "
        f"{summary['posterior_reward']:.3f}, true reward {summary['posterior_true_reward']:.3f}, "
        f"KL(π ‖ ref) = {summary['posterior_kl_to_reference']:.4f}.",
        "",
    ]
    if not quick:
        (HERE / "BRAIN_RESULTS.md").write_text("\n".join(lines))
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    argv = sys.argv[1:]
    main(
        quick="--quick" in argv,
        steps=int(argv[argv.index("--steps") + 1]) if "--steps" in argv else None,
    )
