"""Checkpoints: atomic, checked, and a killed run resumes bit for bit."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI

import ppl
from models.coin import DATA, model

ROOT = Path(__file__).resolve().parents[2]
KEY = jax.random.PRNGKey(0)


def guide(data):
    p = numpyro.param("p", 0.5, constraint=dist.constraints.unit_interval)
    b = ppl.running_baseline("z_baseline")
    numpyro.sample("z", dist.Bernoulli(p), infer={"grad": ppl.reinforce(baseline=b)})


def make_svi():
    return SVI(model, guide, optax.adam(1e-2), loss=ppl.objectives.elbo())


def assert_identical(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_roundtrip_keeps_everything(tmp_path):
    svi = make_svi()
    state = svi.run(KEY, 20, DATA, progress_bar=False).state
    path = ppl.save_checkpoint(tmp_path / "a.ckpt", state, step=20, losses=jnp.arange(3.0))
    loaded, step, losses = ppl.load_checkpoint(path, like=svi.init(KEY, DATA))
    assert step == 20 and losses.tolist() == [0.0, 1.0, 2.0]
    assert_identical(loaded, state)
    assert "z_baseline" in loaded.mutable_state  # running baselines are saved too


def test_typed_prng_keys_roundtrip(tmp_path):
    tree = {"key": jax.random.key(3), "x": jnp.ones(2)}
    ppl.save_checkpoint(tmp_path / "k.ckpt", tree)
    loaded, _, _ = ppl.load_checkpoint(tmp_path / "k.ckpt", like=tree)
    assert jax.random.key_data(loaded["key"]).tolist() == jax.random.key_data(tree["key"]).tolist()
    assert jnp.issubdtype(loaded["key"].dtype, jax.dtypes.prng_key)


def test_resume_equals_uninterrupted_run(tmp_path):
    """Interrupted after 2 of 5 chunks (the file then holds step 40), resumed: the same
    params, state and losses bit for bit as one uninterrupted resumable run."""
    full = ppl.resumable_run(make_svi(), KEY, 100, DATA, checkpoint=tmp_path / "full", every=20)
    part = ppl.resumable_run(make_svi(), KEY, 40, DATA, checkpoint=tmp_path / "part", every=20)
    assert part.losses.shape == (40,)
    resumed = ppl.resumable_run(make_svi(), KEY, 100, DATA, checkpoint=tmp_path / "part", every=20)
    assert_identical(resumed.state, full.state)
    np.testing.assert_array_equal(resumed.losses, full.losses)
    assert resumed.losses.shape == (100,)
    # and it is the same computation as svi.run
    plain = make_svi().run(KEY, 100, DATA, progress_bar=False)
    np.testing.assert_allclose(plain.losses, full.losses, rtol=1e-5)


SCRIPT = """
import os, stat, sys, time
sys.path.insert(0, {root!r})
import jax
import ppl
from models.coin import DATA
from tests.infer.test_checkpoint import make_svi

fsync, saves = os.fsync, []


def fsync_then_hang(fd):  # the third save hangs with its temporary file written in full
    if stat.S_ISREG(os.fstat(fd).st_mode):
        saves.append(fd)
        if len(saves) == 3:
            open({marker!r}, "w").close()
            time.sleep(600)
    fsync(fd)


os.fsync = fsync_then_hang
ppl.resumable_run(make_svi(), jax.random.PRNGKey(0), 10**7, DATA, checkpoint={path!r}, every=50)
"""


@pytest.mark.slow  # a subprocess killed mid-save (~7 s): CI's slow step
def test_killed_during_a_save_resumes_bit_for_bit(tmp_path):
    """SIGKILL a training process in the middle of its third checkpoint write (the
    temporary file full, not yet renamed): the second checkpoint is intact, and resuming
    from it equals an uninterrupted run bit for bit and leaves no temporary file."""
    ckpt, marker = tmp_path / "killed.ckpt", tmp_path / "hanging"
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(root=str(ROOT), path=str(ckpt), marker=str(marker)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, cwd=ROOT)
    try:
        deadline = time.time() + 300
        while not marker.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), f"the third save never started (exit {proc.poll()})"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    like = make_svi().init(KEY, DATA)
    (temporary,) = [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    assert ppl.load_checkpoint(temporary, like)[1] == 150  # killed after writing it in full
    _, step, _ = ppl.load_checkpoint(ckpt, like)  # the previous checkpoint, intact
    assert step == 100
    resumed = ppl.resumable_run(make_svi(), KEY, 150, DATA, checkpoint=ckpt, every=50)
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
    full = ppl.resumable_run(make_svi(), KEY, 150, DATA, checkpoint=tmp_path / "f", every=50)
    assert_identical(resumed.state, full.state)
    np.testing.assert_array_equal(resumed.losses, full.losses)


def test_interrupted_write_keeps_the_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "good.ckpt"
    ppl.save_checkpoint(path, {"x": jnp.ones(3)}, step=1)

    def crash(fd):  # the data is written, not yet on disk
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        ppl.save_checkpoint(path, {"x": jnp.zeros(3)}, step=2)
    monkeypatch.undo()
    state, step, _ = ppl.load_checkpoint(path, {"x": jnp.zeros(3)})
    assert step == 1 and state["x"].tolist() == [1.0, 1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["good.ckpt"]  # no temporary left


def test_mismatched_and_corrupt_checkpoints(tmp_path):
    path = tmp_path / "c.ckpt"
    ppl.save_checkpoint(path, {"w": jnp.ones((2, 3)), "b": jnp.ones(3)})
    with pytest.raises(ppl.CheckpointError, match=r"\['w'\] has shape \(2, 3\).*shape \(3, 3\)"):
        ppl.load_checkpoint(path, {"w": jnp.ones((3, 3)), "b": jnp.ones(3)})
    with pytest.raises(ppl.CheckpointError, match="holds 2 arrays, the expected state has 1"):
        ppl.load_checkpoint(path, {"w": jnp.ones((2, 3))})
    with pytest.raises(ppl.CheckpointError, match="dtype int32"):
        ppl.load_checkpoint(path, {"w": jnp.ones((2, 3)), "b": jnp.ones(3, jnp.int32)})
    data = path.read_bytes()
    (tmp_path / "t.ckpt").write_bytes(data[:-7])
    with pytest.raises(ppl.CheckpointError, match="corrupt or truncated"):
        ppl.load_checkpoint(tmp_path / "t.ckpt", {"w": jnp.ones((2, 3)), "b": jnp.ones(3)})
    (tmp_path / "n.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ppl.CheckpointError, match="not a ppl checkpoint"):
        ppl.load_checkpoint(tmp_path / "n.ckpt", {"w": jnp.ones((2, 3))})
    svi = make_svi()
    ppl.resumable_run(svi, KEY, 40, DATA, checkpoint=tmp_path / "r", every=20)
    with pytest.raises(ppl.CheckpointError, match="at step 40, past the requested num_steps=20"):
        ppl.resumable_run(svi, KEY, 20, DATA, checkpoint=tmp_path / "r", every=20)
    with pytest.raises(ValueError, match="every must be a positive int"):
        ppl.resumable_run(svi, KEY, 20, DATA, checkpoint=tmp_path / "r2", every=0)


def test_brain_with_a_policy_snapshot_resumes_bit_for_bit(tmp_path):
    """BRAIn training whose proposal is a frozen policy snapshot (NumPyro mutable state,
    refreshed every 4 steps): stopped at step 6 and resumed to 12 equals 12 straight."""
    from tests.reward import finite

    guide = ppl.reward.keep_snapshot(finite.guide)
    loss = ppl.objectives.brain(4, proposal=ppl.reward.snapshot(every=4))
    svi = SVI(finite.TARGET, guide, optax.adam(0.1), loss=loss)
    key = jax.random.PRNGKey(3)
    ckpt = tmp_path / "brain.ckpt"
    ppl.resumable_run(svi, key, 6, finite.PROMPTS, checkpoint=ckpt, every=3)
    resumed = ppl.resumable_run(svi, key, 12, finite.PROMPTS, checkpoint=ckpt, every=3)
    straight = svi.run(key, 12, finite.PROMPTS, progress_bar=False)

    def arrays(state):
        return [
            jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
            for x in jax.tree.leaves(state)
        ]

    for a, b in zip(arrays(resumed.state), arrays(straight.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(resumed.losses, straight.losses)
    snap = resumed.state.mutable_state["policy_snapshot"]["params"]["logits"]
    assert not np.allclose(snap, 0.0), "the snapshot was never refreshed (initial logits are 0)"
