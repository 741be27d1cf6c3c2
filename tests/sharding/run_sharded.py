"""Run the sharded programs on N simulated CPU devices and save their outputs.

Usage: ``python tests/sharding/run_sharded.py N OUT.json [SIZES [PARTS]]``, SIZES the
mesh sizes to run (comma-separated, default N), PARTS a subset of
``estimates,svi,chains,smc,brain,dt``. Sets
``--xla_force_host_platform_device_count=N`` before importing jax; every program runs
inside ``ppl.sharding.shard`` over a mesh of all N devices. Outputs: ELBO and IWAE
estimates with their gradients, a 50-step SVI trajectory (losses and final parameters),
MCMC chains, an SMC run, BRAIn over a batch of prompts (loss, gradient, 20 SVI steps),
distribution-transformer training (loss, gradient, 10 ``ppl.dt.train`` steps) and
inference on a batch of problems, plus partitioning evidence (output shardings, per-device
shard shapes, collective counts and ``num_partitions`` in the compiled HLO).
"""

import json
import os
import sys
import time

N = int(sys.argv[1])
# the caller's XLA flags (the test suite's compile-speed flags), plus the device count
os.environ["XLA_FLAGS"] = (
    f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={N}".strip()
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
from numpyro.infer import SVI  # noqa: E402

import ppl  # noqa: E402
from ppl import sharding  # noqa: E402

SEEDS = 2
K = 16  # particles, divisible by 1, 2 and 8 devices
DATA = jnp.linspace(-1.0, 2.0, 16) + 0.3 * jnp.sin(jnp.arange(16.0))


def model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu, 0.7), obs=x)


def guide(x):
    loc = numpyro.param("loc", 0.1)
    scale = numpyro.param("scale", 0.8, constraint=dist.constraints.positive)
    numpyro.sample("mu", dist.Normal(loc, scale))


PARAMS = {"loc": jnp.array(0.3), "scale": jnp.array(0.6)}


def estimates(mesh, data):
    out = {}
    for name, obj in {
        "elbo": ppl.objectives.elbo(num_particles=K),
        "iwae": ppl.objectives.iwae(num_particles=K),
    }.items():
        f = jax.jit(jax.value_and_grad(lambda p, k, x, o=obj: o.estimate(k, p, model, guide, x)))
        compiled = f.lower(PARAMS, jax.random.PRNGKey(0), data).compile()
        for seed in range(SEEDS):
            v, g = compiled(PARAMS, jax.random.PRNGKey(seed), data)
            out[f"{name}_{seed}"] = [float(v), float(g["loc"]), float(g["scale"])]
        text = compiled.as_text()
        out[f"{name}_collectives"] = sharding.num_collectives(text)
        out[f"{name}_num_partitions"] = _num_partitions(text)
    return out


def _num_partitions(text):
    head = text.splitlines()[0]
    for part in head.split(","):
        if "num_partitions=" in part:
            return int(part.split("=")[1])
    return 1


def particle_layout():
    """The particle axis of a bare ppl.particles output: its sharding and shard shapes."""

    def f(key):
        def one():
            return numpyro.sample("z", dist.Normal(0.0, 1.0)) * 2.0

        with numpyro.handlers.seed(rng_seed=key):
            return ppl.particles(one, K)()

    z = jax.jit(f)(jax.random.PRNGKey(3))
    return {
        "values": np.asarray(z).tolist(),
        "spec": str(z.sharding.spec) if hasattr(z.sharding, "spec") else None,
        "shard_shapes": sorted({tuple(s.data.shape) for s in z.addressable_shards}),
        "num_devices": len(z.sharding.device_set),
    }


def svi_trajectory(data, steps=50):
    svi = SVI(model, guide, optax.adam(0.05), loss=ppl.objectives.iwae(num_particles=K))
    state = svi.init(jax.random.PRNGKey(0), data)
    update = jax.jit(svi.update)
    losses = []
    for _ in range(steps):
        state, loss = update(state, data)
        losses.append(float(loss))
    p = svi.get_params(state)
    return {"losses": losses, "loc": float(p["loc"]), "scale": float(p["scale"])}


def chains(mesh=None):
    """Pure random-walk chains, the chain axis split over the mesh (one device: None)."""

    def logdensity(x):
        return -0.5 * jnp.sum((x - 1.0) ** 2 / jnp.array([1.0, 4.0]))

    kernel = ppl.mcmc.random_walk(logdensity, 0.8)
    states, infos = sharding.run_chains(kernel, jax.random.PRNGKey(5), jnp.zeros((16, 2)), 60, mesh)
    x = states.position
    return {
        "position": np.asarray(x).tolist(),
        "accepted": np.asarray(infos.is_accepted).astype(int).sum(axis=1).tolist(),
        "num_devices": len(x.sharding.device_set),
        "shard_shapes": sorted({tuple(s.data.shape) for s in x.addressable_shards}),
    }


def smc(mesh):
    """Tempered SMC (fixed schedule) with its particles placed over the mesh."""

    def logprior(x):
        return jnp.sum(dist.Normal(0.0, 2.0).log_prob(x))

    def loglik(x):
        return jnp.sum(dist.Normal(x, 0.5).log_prob(jnp.array([0.7, -0.2])))

    x0 = 2.0 * jax.random.normal(jax.random.PRNGKey(7), (32, 2))
    x0 = sharding.put(x0, mesh)

    @jax.jit
    def run(key, x0):
        return ppl.mcmc.tempered_smc(
            key,
            x0,
            logprior,
            loglik,
            lambda ld: ppl.mcmc.random_walk(ld, 0.4),
            num_mcmc_steps=3,
            betas=jnp.array([0.25, 0.5, 1.0]),
        )

    compiled = run.lower(jax.random.PRNGKey(8), x0).compile()
    res = compiled(jax.random.PRNGKey(8), x0)
    text = compiled.as_text()
    return {
        "log_evidence": float(res.log_evidence),
        "particles": np.asarray(res.particles).tolist(),
        "num_partitions": _num_partitions(text),
        "collectives": sharding.num_collectives(text),
    }


B, V = 16, 5  # prompts (divisible by 1, 2 and 8 devices), responses
PROMPTS = jnp.arange(B)
P_REF = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(11), (B, V)))
REWARD = jax.random.normal(jax.random.PRNGKey(12), (B, V))


def _reference(prompts):
    with numpyro.plate("prompts", prompts.shape[0]):
        return numpyro.sample("y", dist.Categorical(probs=P_REF[prompts]))


def _policy(prompts):
    logits = numpyro.param("logits", jnp.zeros((B, V)))
    with numpyro.plate("prompts", prompts.shape[0]):
        return numpyro.sample("y", dist.Categorical(logits=logits[prompts]))


def brain(prompts):
    """BRAIn(8) on B prompts: loss and gradient at fixed logits, then 20 SVI steps."""
    target = ppl.reward.posterior(_reference, lambda y, x: REWARD[x, y], 0.7, response_ndim=0)
    loss = ppl.objectives.brain(8)
    logits = 0.3 * jax.random.normal(jax.random.PRNGKey(13), (B, V))
    f = jax.jit(
        jax.value_and_grad(lambda lg, k, x: loss.loss(k, {"logits": lg}, target, _policy, x))
    )
    compiled = f.lower(logits, jax.random.PRNGKey(0), prompts).compile()
    v, g = compiled(logits, jax.random.PRNGKey(0), prompts)
    svi = SVI(target, _policy, optax.adam(0.1), loss=loss)
    state = svi.init(jax.random.PRNGKey(1), prompts)
    update = jax.jit(svi.update)
    losses = []
    for _ in range(20):
        state, value = update(state, prompts)
        losses.append(float(value))
    text = compiled.as_text()
    return {
        "loss": float(v),
        "grad": np.asarray(g).tolist(),
        "losses": losses,
        "logits": np.asarray(svi.get_params(state)["logits"]).tolist(),
        "num_partitions": _num_partitions(text),
        "collectives": sharding.num_collectives(text),
    }


def _dt_simulator():
    m = numpyro.sample("m", dist.Normal(0.0, 2.0))
    theta = numpyro.sample("theta", dist.Normal(m, 1.0))
    with numpyro.plate("obs", 6):
        numpyro.sample("x", dist.Normal(theta, 0.5))


def _dt_prior(v):
    means = jnp.stack([v["m"] - 1.0, v["m"] + 1.0])[:, None]
    return ppl.dt.GMM(jnp.log(jnp.array([0.4, 0.6])), means, jnp.ones((2, 1, 1)))


def distribution_transformer():
    """A small DT: objective value and gradient on 16 simulated problems (split over the
    data axis inside the context), 10 training steps, inference on 16 problems."""
    import equinox as eqx

    def net0():
        return ppl.dt.DistributionTransformer(
            1, 1, 2, key=jax.random.PRNGKey(0), d_model=16, num_layers=1, num_heads=2
        )

    obj = ppl.dt.amortized_forward_kl(
        _dt_simulator, latent="theta", data="x", prior=_dt_prior, num_problems=16
    )
    params, static = eqx.partition(net0(), eqx.is_inexact_array)
    f = jax.jit(jax.value_and_grad(lambda p, k: obj.loss(eqx.combine(p, static), k)))
    compiled = f.lower(params, jax.random.PRNGKey(2)).compile()
    v, g = compiled(params, jax.random.PRNGKey(2))
    res = ppl.dt.train(net0(), obj, jax.random.PRNGKey(3), 10, every=5, learning_rate=1e-2)
    sims = obj.simulate(jax.random.PRNGKey(4))  # no context inside: plain arrays
    priors = jax.vmap(_dt_prior)(sims)
    data = sims["x"][..., None]
    if sharding.active() is not None:
        data = sharding.put(data)
    post = jax.jit(jax.vmap(res.net))(priors, data)
    text = compiled.as_text()
    return {
        "loss": float(v),
        "grad_norm": float(optax.global_norm(g)),
        "grad": np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]).tolist(),
        "losses": res.losses.tolist(),
        "posterior_means": np.asarray(post.mean()).ravel().tolist(),
        "posterior_shards": sorted({tuple(s.data.shape) for s in post.means.addressable_shards}),
        "num_partitions": _num_partitions(text),
        "collectives": sharding.num_collectives(text),
    }


def _timed(result, name, fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    result.setdefault("seconds", {})[name] = time.perf_counter() - t0
    return out


def run_all(mesh, parts):
    result = {}
    with sharding.shard(mesh, particles="devices", data="devices"):
        data = sharding.put(DATA)
        result["data_shards"] = sorted({tuple(s.data.shape) for s in data.addressable_shards})
        if "estimates" in parts:
            result.update(_timed(result, "estimates", estimates, mesh, data))
            result["particles"] = _timed(result, "particles", particle_layout)
        if "svi" in parts:
            result["svi"] = _timed(result, "svi", svi_trajectory, data)
        if "chains" in parts:
            result["chains"] = _timed(result, "chains", chains, mesh)
        if "smc" in parts:
            result["smc"] = _timed(result, "smc", smc, mesh)
        if "brain" in parts:
            result["brain"] = _timed(result, "brain", brain, sharding.put(PROMPTS))
        if "dt" in parts:
            result["dt"] = _timed(result, "dt", distribution_transformer)
    return result


def run_plain(parts):
    """The default path: no mesh, no sharding context."""
    result = {}
    if "svi" in parts:
        result["svi"] = svi_trajectory(DATA)
    if "chains" in parts:
        result["chains"] = chains()
    if "brain" in parts:
        result["brain"] = brain(PROMPTS)
    if "dt" in parts:
        result["dt"] = distribution_transformer()
    if "estimates" not in parts:
        return result
    for name, obj in {
        "elbo": ppl.objectives.elbo(num_particles=K),
        "iwae": ppl.objectives.iwae(num_particles=K),
    }.items():
        f = jax.jit(jax.value_and_grad(lambda p, k, x, o=obj: o.estimate(k, p, model, guide, x)))
        for seed in range(SEEDS):
            v, g = f(PARAMS, jax.random.PRNGKey(seed), DATA)
            result[f"{name}_{seed}"] = [float(v), float(g["loc"]), float(g["scale"])]
    return result


def main():
    out_path = sys.argv[2]
    sizes = [int(n) for n in sys.argv[3].split(",")] if len(sys.argv) > 3 else [N]
    parts = sys.argv[4].split(",") if len(sys.argv) > 4 else ["estimates", "svi", "chains", "smc"]
    assert len(jax.devices()) == N, jax.devices()
    results = {}
    if {"estimates", "svi", "chains", "brain", "dt"} & set(parts):
        results["plain"] = _timed(results, "plain", run_plain, parts)
    for n in sizes:
        results[str(n)] = run_all(sharding.make_mesh(n), parts)
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
