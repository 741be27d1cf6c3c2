"""resumable_run refuses to resume a checkpoint written by a different run (other data,
key, model, optimizer or loss with the same leaf shapes), naming what differs, unless
told to with ``allow_mismatch``."""

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
from tests.infer.test_checkpoint import KEY, guide, make_svi


def student_model(data):  # the coin model with another likelihood: same params, same shapes
    z = numpyro.sample("z", dist.Bernoulli(0.5))
    with numpyro.plate("d", data.shape[0]):
        numpyro.sample("x", dist.Binomial(1, 0.2 + 0.6 * z), obs=data)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp") / "run.ckpt"
    ppl.resumable_run(make_svi(), KEY, 10, DATA, checkpoint=path, every=10)
    return path


def test_the_fingerprint_is_stored(saved):
    with open(saved, "rb") as f:
        fp = ppl.infer.ckpt_file.read_header(f, saved).fingerprint
    assert set(fp) == {"model", "optimizer", "mutable", "loss", "data", "key"}
    assert "sample z: BernoulliProbs batch () event ()" in fp["model"]
    assert (
        "sample x: ExpandedDistribution(BernoulliProbs) batch (4,) event () observed" in fp["model"]
    )
    assert "param p: shape () constraint _UnitInterval" in fp["model"]
    assert "ScaleByAdamState" in fp["optimizer"]
    assert fp["loss"] == "ppl.Objective(elbo(num_particles=1))"
    assert fp["data"].startswith("[0][0]: float32[4]\nsha256 ")
    assert fp["key"].startswith("raw uint32 ")


OTHER_DATA = jnp.array([1.0, 0.0, 0.0, 1.0])  # same shape and dtype


@pytest.mark.parametrize(
    "svi, key, data, field",
    [
        (make_svi, KEY, OTHER_DATA, "data"),
        (make_svi, jax.random.PRNGKey(1), DATA, "key"),
        (
            lambda: SVI(student_model, guide, optax.adam(1e-2), loss=ppl.objectives.elbo()),
            KEY,
            DATA,
            "model",
        ),
        (
            lambda: SVI(model, guide, optax.adabelief(1e-2), loss=ppl.objectives.elbo()),
            KEY,
            DATA,
            "optimizer",
        ),
        (
            lambda: SVI(model, guide, optax.adam(1e-2), loss=ppl.objectives.iwae(1)),
            KEY,
            DATA,
            "loss",
        ),
    ],
)
def test_a_different_run_is_refused_by_name(saved, svi, key, data, field):
    svi = svi()
    like = svi.init(key, data)
    # the state alone cannot tell: same leaves (paths, shapes, dtypes), so it loads
    ppl.load_checkpoint(saved, like)
    with pytest.raises(
        ppl.CheckpointError,
        match=rf"differs in {field}: saved .*now .*"
        rf"allow_mismatch=\('{field}',\)",
    ):
        ppl.resumable_run(svi, key, 20, data, checkpoint=saved, every=10)


def test_allow_mismatch_resumes_anyway(saved, tmp_path):
    path = tmp_path / "copy.ckpt"
    path.write_bytes(saved.read_bytes())
    with pytest.raises(ppl.CheckpointError, match="differs in data"):
        ppl.resumable_run(make_svi(), KEY, 20, OTHER_DATA, checkpoint=path, every=10)
    result = ppl.resumable_run(
        make_svi(), KEY, 20, OTHER_DATA, checkpoint=path, every=10, allow_mismatch=("data",)
    )
    assert result.losses.shape == (20,)
    # the new checkpoint records the new data: resuming on it needs no override
    ppl.resumable_run(make_svi(), KEY, 20, OTHER_DATA, checkpoint=path, every=10)
    with pytest.raises(ValueError, match=r"allow_mismatch: unknown fields \['datum'\]"):
        ppl.resumable_run(make_svi(), KEY, 20, DATA, checkpoint=path, allow_mismatch=["datum"])


def test_a_checkpoint_without_fingerprint_needs_an_override(tmp_path):
    svi = make_svi()
    path = ppl.save_checkpoint(tmp_path / "bare.ckpt", svi.init(KEY, DATA), step=0)
    with pytest.raises(ppl.CheckpointError, match="model: not recorded in the checkpoint"):
        ppl.resumable_run(svi, KEY, 1, DATA, checkpoint=path, every=1)
    result = ppl.resumable_run(svi, KEY, 1, DATA, checkpoint=path, every=1, allow_mismatch=True)
    assert np.isfinite(result.losses).all()
