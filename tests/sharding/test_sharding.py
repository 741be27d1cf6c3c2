"""ppl.sharding: sharded particles, data and chains agree with one device and really are
partitioned.

Multi-device runs need ``--xla_force_host_platform_device_count`` before jax is imported,
so they run ``run_sharded.py`` in a subprocess and compare the outputs it saves.

Tolerances. Splitting particles/data over devices changes only the order of the
floating-point sums (each device sums its share, an all-reduce sums the partial sums);
every per-particle and per-datum value is computed identically. Re-associating a float32
sum of n terms changes it by at most about n * eps * sum |terms| (eps = 2**-23 ~ 1.2e-7);
with n <= 256 terms (16 particles x 16 data) of one sign-scale, the relative change of
estimates and gradients is bounded by ~3e-5 and is observed at <= 1e-6. Estimates and
gradients: rtol = atol = 3e-5. The 50-step SVI trajectory composes 50 such steps, and
Adam divides the gradient by its running RMS, so a per-step relative perturbation delta
moves parameters by <= lr * delta per step: rtol = 1e-4 on losses and parameters
(observed <= 1e-7). MCMC chains involve no cross-chain reduction: exact equality.
"""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl
from ppl import sharding

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EST_TOL = 3e-5
SVI_TOL = 1e-4


def _run(num_devices, tmp_path, sizes, parts):
    out = tmp_path / f"sharded_{num_devices}_{sizes.replace(',', '_')}.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    # the suite's XLA flags (tests/conftest.py), without any device count of the caller's
    flags = os.environ.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "device_count" not in f)
    proc = subprocess.run(
        [sys.executable, str(HERE / "run_sharded.py"), str(num_devices), str(out), sizes, parts],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def _assert_estimates_agree(ref, res):
    for name in ("elbo", "iwae"):
        keys = [k for k in ref if k.startswith(f"{name}_") and k[-1].isdigit()]
        assert keys
        for k in keys:
            np.testing.assert_allclose(res[k], ref[k], rtol=EST_TOL, atol=EST_TOL, err_msg=k)


def _assert_svi_agree(ref, res):
    assert len(res["losses"]) == len(ref["losses"]) == 50
    np.testing.assert_allclose(res["losses"], ref["losses"], rtol=SVI_TOL)
    np.testing.assert_allclose([res["loc"], res["scale"]], [ref["loc"], ref["scale"]], rtol=SVI_TOL)


def _assert_partitioned(res, n):
    """The sharded programs are split n ways: shard shapes, HLO partitions, collectives."""
    assert res["data_shards"] == [[16 // n]]
    assert res["particles"]["num_devices"] == n
    assert res["particles"]["shard_shapes"] == [[16 // n]]
    for name in ("elbo", "iwae"):
        assert res[f"{name}_num_partitions"] == n
        reduces = res[f"{name}_collectives"]["all-reduce"]
        assert (reduces > 0) if n > 1 else (reduces == 0), (name, res[f"{name}_collectives"])


@pytest.mark.slow  # (fast suite budget)
def test_eight_devices_agree_with_one(tmp_path):
    """8 simulated devices, everything split 8 ways, against the plain one-device path
    (no context) in the same process."""
    r = _run(8, tmp_path, "8", "estimates,svi,chains")
    res = r["8"]
    _assert_estimates_agree(r["plain"], res)
    _assert_svi_agree(r["plain"]["svi"], res["svi"])
    _assert_partitioned(res, 8)
    assert res["chains"]["num_devices"] == 8
    assert res["chains"]["shard_shapes"] == [[2, 2]]
    assert res["chains"]["position"] == r["plain"]["chains"]["position"]  # bit-identical
    assert res["chains"]["accepted"] == r["plain"]["chains"]["accepted"]


@pytest.mark.slow
def test_one_process_meshes_of_1_2_and_8_devices(tmp_path):
    """8 simulated devices; meshes of 1, 2 and 8 against the plain path."""
    r = _run(8, tmp_path, "1,2,8", "estimates,svi,chains")
    for n in (1, 2, 8):
        res = r[str(n)]
        _assert_estimates_agree(r["plain"], res)
        _assert_svi_agree(r["plain"]["svi"], res["svi"])
        _assert_partitioned(res, n)
        assert res["chains"]["shard_shapes"] == [[16 // n, 2]]
        assert res["chains"]["position"] == r["plain"]["chains"]["position"]
        assert res["particles"]["values"] == r["1"]["particles"]["values"]


@pytest.mark.slow
def test_separate_processes_1_2_8_devices(tmp_path):
    """One process per device count (1, 2, 8), every part including SMC."""
    runs = {n: _run(n, tmp_path, str(n), "estimates,svi,chains,smc") for n in (1, 2, 8)}
    ref = runs[1]["plain"]
    base = runs[1]["1"]
    for n, r in runs.items():
        res = r[str(n)]
        _assert_estimates_agree(ref, res)
        _assert_estimates_agree(r["plain"], res)
        _assert_svi_agree(ref["svi"], res["svi"])
        _assert_partitioned(res, n)
        assert res["particles"]["values"] == base["particles"]["values"]
        assert res["chains"]["position"] == base["chains"]["position"]
        assert res["chains"]["shard_shapes"] == [[16 // n, 2]]
        smc = res["smc"]
        assert smc["num_partitions"] == n
        assert (sum(smc["collectives"].values()) > 0) == (n > 1)
        np.testing.assert_allclose(smc["log_evidence"], base["smc"]["log_evidence"], rtol=EST_TOL)
        np.testing.assert_allclose(smc["particles"], base["smc"]["particles"], atol=EST_TOL)


@pytest.mark.slow
def test_brain_and_dt_on_one_and_eight_devices_agree_with_plain(tmp_path):
    """BRAIn over 16 prompts (split over the data axis) and distribution-transformer
    training on 16 simulated problems per step plus inference on 16 problems, on meshes of
    1 and 8 simulated devices, against the plain path in the same process."""
    r = _run(8, tmp_path, "1,8", "brain,dt")
    ref_b, ref_d = r["plain"]["brain"], r["plain"]["dt"]
    for n in (1, 8):
        b, d = r[str(n)]["brain"], r[str(n)]["dt"]
        np.testing.assert_allclose(b["loss"], ref_b["loss"], rtol=EST_TOL)
        np.testing.assert_allclose(b["grad"], ref_b["grad"], rtol=EST_TOL, atol=EST_TOL)
        np.testing.assert_allclose(b["losses"], ref_b["losses"], rtol=SVI_TOL)
        np.testing.assert_allclose(b["logits"], ref_b["logits"], rtol=SVI_TOL, atol=SVI_TOL)
        np.testing.assert_allclose(d["loss"], ref_d["loss"], rtol=EST_TOL)
        np.testing.assert_allclose(d["grad"], ref_d["grad"], rtol=EST_TOL, atol=EST_TOL)
        np.testing.assert_allclose(d["losses"], ref_d["losses"], rtol=SVI_TOL)
        np.testing.assert_allclose(d["posterior_means"], ref_d["posterior_means"], rtol=EST_TOL)
        assert d["posterior_shards"] == [[16 // n, 2, 1]]
        for part in (b, d):
            assert part["num_partitions"] == n
            reduces = part["collectives"]["all-reduce"]
            assert (reduces > 0) if n > 1 else (reduces == 0), part["collectives"]


# ---- in-process checks (one device) ---------------------------------------------


def _count(jaxpr, name):
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == name
        for p in eqn.params.values():
            if hasattr(p, "jaxpr") and hasattr(p.jaxpr, "eqns"):
                n += _count(p.jaxpr, name)
            elif hasattr(p, "eqns"):
                n += _count(p, name)
    return n


def _particles_program(nested=False):
    def one():
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        if nested:
            z = z + jnp.mean(ppl.particles(lambda: numpyro.sample("u", dist.Normal()), 2)())
        return z

    def f(key):
        with numpyro.handlers.seed(rng_seed=key):
            return ppl.particles(one, 4)()

    return f


def test_default_path_adds_nothing():
    """Without a context, ppl.particles traces no sharding constraint at all."""
    jaxpr = jax.make_jaxpr(_particles_program())(jax.random.PRNGKey(0)).jaxpr
    assert _count(jaxpr, "sharding_constraint") == 0
    assert sharding.active() is None


def test_context_constrains_outermost_particles_only():
    mesh = sharding.make_mesh(1)
    with sharding.shard(mesh) as config:
        assert sharding.active() is config
        flat = jax.make_jaxpr(_particles_program())(jax.random.PRNGKey(0)).jaxpr
        nested = jax.make_jaxpr(_particles_program(nested=True))(jax.random.PRNGKey(0)).jaxpr
    assert sharding.active() is None
    assert _count(flat, "sharding_constraint") == 2  # keys in, outputs out
    assert _count(nested, "sharding_constraint") == 2  # the inner particles stay local
    with sharding.shard(mesh, particles=None):
        off = jax.make_jaxpr(_particles_program())(jax.random.PRNGKey(0)).jaxpr
    assert _count(off, "sharding_constraint") == 0


def test_same_values_inside_and_outside_context():
    f = jax.jit(_particles_program(nested=True))
    plain = f(jax.random.PRNGKey(1))
    with sharding.shard(sharding.make_mesh(1)):
        sharded = jax.jit(_particles_program(nested=True))(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(plain, sharded)


def test_errors():
    mesh = sharding.make_mesh(1)
    with pytest.raises(ValueError, match="not an axis of the mesh"):
        with sharding.shard(mesh, particles="chains"):
            pass
    with pytest.raises(TypeError, match="Mesh"):
        with sharding.shard("devices"):
            pass
    with pytest.raises(ValueError, match="no mesh given"):
        sharding.put(jnp.ones(4))
    with pytest.raises(ValueError, match="num_devices"):
        sharding.make_mesh(len(jax.devices()) + 1)


def test_put_replicate_constrain_one_device():
    mesh = sharding.make_mesh(1, axis_name="data")
    x = sharding.put({"a": jnp.arange(4.0), "b": jnp.ones(())}, mesh)
    assert x["a"].sharding.spec == jax.sharding.PartitionSpec("data")
    p = sharding.replicate({"w": jnp.ones(3)}, mesh)
    assert p["w"].sharding.is_fully_replicated
    assert sharding.constrain(x) is x  # no context: identity
    with sharding.shard(mesh, particles=None, data="data"):
        y = jax.jit(lambda t: sharding.constrain(t))(x)
    np.testing.assert_array_equal(y["a"], x["a"])


def test_num_collectives_counts_hlo_ops():
    text = "\n".join(
        [
            "ENTRY %main {",
            "  %a = f32[] all-reduce(f32[] %x), replica_groups={}",
            "  %b = f32[8] all-gather(f32[1] %y), dimensions={0}",
            "  %c = f32[] add(f32[] %a, f32[] %a)",
            "}",
        ]
    )
    counts = sharding.num_collectives(text)
    assert counts["all-reduce"] == 1 and counts["all-gather"] == 1
    assert sum(counts.values()) == 2


def test_public_names_documented():
    assert ppl.sharding is sharding
    for name in sharding.__all__:
        doc = inspect.getdoc(getattr(sharding, name))
        assert doc and doc.strip(), name
