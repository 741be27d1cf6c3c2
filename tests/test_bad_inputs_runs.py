"""The catalogue of misuse, continued: checkpoints, observed data and constructor
arguments. Every case is an error of the stated type whose message names the site, plate,
argument or field at fault; none is a silent wrong answer."""

import functools
import hashlib
import json
import re
import resource
import signal
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.handlers import seed, trace
from numpyro.infer import SVI

import ppl
import ppl.dt as dt
from models.coin import DATA, model
from ppl.core.data_check import check_observed
from ppl.infer import ckpt_file

KEY = jax.random.PRNGKey(0)
obj = ppl.objectives
LOGP = lambda x: -(x**2)  # noqa: E731


def guide(data):
    p = numpyro.param("p", 0.5, constraint=dist.constraints.unit_interval)
    numpyro.sample("z", dist.Bernoulli(p))


def make_svi(m=model, optimizer=None):
    return SVI(m, guide, optimizer or optax.adam(1e-2), loss=obj.elbo())


# one temporary root for the cases' files, removed when the test process exits
_ROOT = tempfile.TemporaryDirectory(prefix="ppl-bad-inputs-")


def folder() -> Path:
    return Path(tempfile.mkdtemp(dir=_ROOT.name))


@functools.cache
def saved_run() -> Path:
    """A checkpoint of one SVI step on the coin (shared by the resume cases)."""
    path = folder() / "run.ckpt"
    ppl.resumable_run(make_svi(), KEY, 1, DATA, checkpoint=path, every=1)
    return path


def resume(svi=make_svi, key=KEY, data=DATA, **kw):
    return lambda: ppl.resumable_run(svi(), key, 2, data, checkpoint=saved_run(), **kw)


def binomial_model(data):
    z = numpyro.sample("z", dist.Bernoulli(0.5))
    with numpyro.plate("d", data.shape[0]):
        numpyro.sample("x", dist.Binomial(1, 0.2 + 0.6 * z), obs=data)


def corrupt(edit):
    """A small checkpoint with ``edit(bytearray)`` applied, loaded."""

    def thunk():
        path = folder() / "c.ckpt"
        ppl.save_checkpoint(path, {"w": jnp.ones(3)}, step=1)
        data = bytearray(path.read_bytes())
        edit(data)
        path.write_bytes(data)
        ppl.load_checkpoint(path, {"w": jnp.ones(3)})

    return thunk


def flip_a_data_bit(data):
    data[-40] ^= 1  # in the array bytes, before the digest


def crafted(header: bytes):
    """A file with a valid digest around a crafted header (so only the parser stands)."""

    def thunk():
        data = np.ones(3, np.float32).tobytes()  # what VALID describes
        body = ckpt_file.MAGIC + len(header).to_bytes(8, "little") + header + data
        path = folder() / "crafted.ckpt"
        path.write_bytes(body + hashlib.sha256(body).digest())
        ppl.load_checkpoint(path, {"w": jnp.ones(3)})

    return thunk


VALID = {
    "format": 2,
    "byteorder": "little",
    "step": 1,
    "leaves": [["['w']", [3], "float32"]],
    "losses": {"count": 0, "dtype": "float32"},
    "fingerprint": {},
}


def header(**fields) -> bytes:
    return json.dumps({**VALID, **fields}).encode()


def full_disk():
    """A write past RLIMIT_FSIZE fails with EFBIG, as a full disk fails with ENOSPC."""
    path = folder() / "big.ckpt"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 14, hard))
    try:
        ppl.save_checkpoint(path, {"w": jnp.ones(1 << 14)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def old_format():
    path = folder() / "old.ckpt"
    path.write_bytes(b"PPLCKPT1\n" + bytes(64))
    ppl.load_checkpoint(path, {"w": jnp.ones(3)})


def svi_loss(data, m=model, g=guide, loss=None):
    return lambda: (loss or obj.elbo()).loss(KEY, {}, m, g, data)


def svi_run(data):
    return lambda: make_svi().run(KEY, 3, data, progress_bar=False)


def poisson_model(counts):
    with numpyro.plate("days", counts.shape[0]):
        numpyro.sample("calls", dist.Poisson(3.0), obs=counts)


def dirichlet_model(p):
    with numpyro.plate("rows", p.shape[0]):
        numpyro.sample("shares", dist.Dirichlet(jnp.ones(3)), obs=p)


class CubicFlow(dist.transforms.ParameterFreeTransform):
    """y = x + x³: a user's flow with no inverse (log q needs the sampled x)."""

    domain = codomain = dist.constraints.real

    def __call__(self, x):
        return x + x**3

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        return jnp.log1p(3 * x**2)


def gaussian_model():
    numpyro.sample("z", dist.Normal(0.0, 1.0))


def flow_guide():
    loc = numpyro.param("loc", 0.0)
    numpyro.sample("z", dist.TransformedDistribution(dist.Normal(loc, 1.0), CubicFlow()))


def model_with_observed_strategy():
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    numpyro.sample("x", dist.Normal(z, 1.0), obs=0.5, infer={"grad": "mvd"})


def program_with_observed_strategy():
    numpyro.sample("x", dist.Bernoulli(0.3), obs=1.0, infer={"grad": "reinforce"})
    return 0.0


def check_trace(m, data):
    return lambda: check_observed(trace(seed(m, 0)).get_trace(data), "ppl.density")


def baseline_program(baseline):
    def program():
        with numpyro.plate("n", 5):
            z = numpyro.sample("z", dist.Bernoulli(0.3), infer={"grad": ppl.reinforce(baseline)})
        return jnp.sum(z)

    return lambda: ppl.expectation(program)(KEY)


def running_baseline_guide(data):
    b = ppl.running_baseline("z_baseline", shape=(3,))
    with numpyro.plate("d", data.shape[0]):
        numpyro.sample("z", dist.Bernoulli(0.5), infer={"grad": ppl.reinforce(b)})


def plated_model(data):
    with numpyro.plate("d", data.shape[0]):
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Bernoulli(0.2 + 0.6 * z), obs=data)


def empty_plate_model(data):
    with numpyro.plate("flips", data.shape[0]):
        numpyro.sample("x", dist.Bernoulli(0.5), obs=data)


def no_latents(data):
    pass


@ppl.objective
def forgot_return(model, guide, *args, **kwargs):
    q = ppl.simulate(guide, *args, **kwargs)
    ppl.density(model, q, *args, **kwargs) - q.log_prob  # noqa: B018


# constructors taking counts: (thunk of a value, the argument's name in the message)
COUNTS = {
    "elbo": (lambda v: obj.elbo(v), "elbo: num_particles"),
    "iwae": (lambda v: obj.iwae(v), "iwae: num_particles"),
    "renyi": (lambda v: obj.renyi(0.5, v), "renyi: num_particles"),
    "vimco": (lambda v: obj.vimco(v), "vimco: num_particles"),
    "cubo": (lambda v: obj.cubo(2.0, v), "cubo: num_particles"),
    "rws": (lambda v: obj.rws(v), "rws: num_particles"),
    "rws steps": (lambda v: obj.rws(2, steps=v), "rws: steps"),
    "tail_adaptive": (lambda v: obj.tail_adaptive(v), "tail_adaptive: num_particles"),
    "iwhvi": (lambda v: obj.iwhvi(["z"], guide, v), "iwhvi: num_samples"),
    "diwhvi": (lambda v: obj.diwhvi(["z"], guide, v), "diwhvi: num_particles"),
    "forward_kl": (lambda v: obj.forward_kl(num_pairs=v), "forward_kl: num_pairs"),
    "annealed": (lambda v: obj.annealed(v), "annealed: num_steps"),
    "msc": (lambda v: obj.msc(v), "msc: num_particles"),
    "brain": (lambda v: obj.brain(v), "brain: num_samples"),
    "fdiv": (lambda v: obj.fdiv("js", v), "fdiv: num_samples"),
    "ppo": (lambda v: obj.ppo(v), "ppo: num_samples"),
    "dpo": (lambda v: obj.dpo(num_pairs=v), "dpo: num_pairs"),
    "Objective": (lambda v: ppl.Objective(obj.log_weight, num_estimates=v), "num_estimates"),
    "normalize": (lambda v: ppl.normalize(model, guide, v), "ppl.normalize: num_particles"),
    "marginal": (lambda v: ppl.marginal(guide, ["z"], guide, v), "ppl.marginal: num_samples"),
    "running_baseline": (lambda v: ppl.running_baseline("b", shape=(v,)), "shape"),
    "snapshot": (lambda v: ppl.reward.snapshot(v), "ppl.reward.snapshot: every"),
    "posterior": (
        lambda v: ppl.reward.posterior(model, lambda y, p: y, response_ndim=v),
        "ppl.reward.posterior: response_ndim",
    ),
    "repeat": (lambda v: ppl.mcmc.repeat(ppl.mcmc.mala(LOGP, 0.1), v), "repeat: n"),
    "hmc": (lambda v: ppl.mcmc.hmc(LOGP, 0.1, v), "hmc: num_steps"),
    "leapfrog": (lambda v: ppl.mcmc.leapfrog(LOGP, 0.1, v), "leapfrog: num_steps"),
    "hmc_involution": (lambda v: ppl.mcmc.hmc_involution(LOGP, 0.1, v), "hmc_involution"),
    "HMC": (lambda v: ppl.mcmc.HMC(model, num_steps=v), "HMC: num_steps"),
    "SMC": (lambda v: ppl.mcmc.SMC(model, num_particles=v), "SMC: num_particles"),
    "resumable_run": (
        lambda v: ppl.resumable_run(None, KEY, 10, checkpoint="unused", every=v),
        "resumable_run: every",
    ),
    "save_checkpoint": (
        lambda v: ppl.save_checkpoint(folder() / "s.ckpt", {"w": jnp.ones(2)}, step=v),
        "save_checkpoint: step",
    ),
    "amortized_forward_kl": (
        lambda v: dt.amortized_forward_kl(model, latent="z", data="x", prior="p", num_problems=v),
        "amortized_forward_kl: num_problems",
    ),
}

CATALOGUE = {
    # checkpoints: corrupt, crafted, from another run, unwritable
    "checkpoint with a flipped bit": (
        corrupt(flip_a_data_bit),
        ppl.CheckpointError,
        "c.ckpt: corrupt or truncated checkpoint .its SHA-256 digest does not match",
    ),
    "checkpoint cut short": (
        corrupt(lambda d: d.__delitem__(slice(-10, None))),
        ppl.CheckpointError,
        "corrupt or truncated",
    ),
    "checkpoint header nested 10^5 deep": (
        crafted(b"[" * 100_000),
        ppl.CheckpointError,
        "crafted.ckpt: corrupt checkpoint header .nested deeper than 6",
    ),
    "checkpoint header asks for 10^12 losses": (
        crafted(header(losses={"count": 10**12, "dtype": "float64"})),
        ppl.CheckpointError,
        "the header describes 8000000000012 bytes of arrays, the file holds 12",
    ),
    "checkpoint header with an object dtype": (
        crafted(header(losses={"count": 1, "dtype": "object"})),
        ppl.CheckpointError,
        r"the losses' dtype must be one of .*got 'object'",
    ),
    "checkpoint header with a fractional step": (
        crafted(header(step=2.7)),
        ppl.CheckpointError,
        "step must be a non-negative int, got 2.7",
    ),
    "checkpoint of format 1": (old_format, ppl.CheckpointError, "older ppl"),
    "checkpoint resumed on other data": (
        resume(data=jnp.array([1.0, 0.0, 0.0, 1.0])),
        ppl.CheckpointError,
        r"differs in data: saved 'sha256 .*allow_mismatch=\('data',\)",
    ),
    "checkpoint resumed with another key": (
        resume(key=jax.random.PRNGKey(1)),
        ppl.CheckpointError,
        "differs in key: saved 'raw uint32 0000000000000000', now 'raw uint32 0000000001000000'",
    ),
    "checkpoint resumed by another model": (
        resume(svi=lambda: make_svi(binomial_model)),
        ppl.CheckpointError,
        "differs in model: saved 'sample x: ExpandedDistribution.BernoulliProbs.",
    ),
    "checkpoint resumed with another optimizer": (
        resume(svi=lambda: make_svi(optimizer=optax.adabelief(1e-2))),
        ppl.CheckpointError,
        "differs in optimizer: .*ScaleByAdamState.*ScaleByBeliefState",
    ),
    "checkpoint override names a field": (
        resume(allow_mismatch=("datum",)),
        ValueError,
        r"allow_mismatch: unknown fields \['datum'\]",
    ),
    "checkpoint folder missing": (
        lambda: ppl.resumable_run(None, KEY, 10, checkpoint=folder() / "no" / "x.ckpt"),
        FileNotFoundError,
        "checkpoint folder .*/no does not exist",
    ),
    "checkpoint write fails": (
        full_disk,
        OSError,
        "cannot write checkpoint .*big.ckpt: File too large",
    ),
    "checkpoint of a string leaf": (
        lambda: ppl.save_checkpoint(folder() / "s.ckpt", {"name": "run"}),
        TypeError,
        r"leaf \['name'\] is a str",
    ),
    # observed data, checked once at trace time
    "NaN observation (SVI loss)": (
        svi_loss(jnp.array([1.0, jnp.nan, 0.0, 1.0])),
        ValueError,
        r"elbo.*: observed site 'x' is NaN: value nan at index \(1,\)",
    ),
    "observation outside the support (SVI loss)": (
        svi_loss(jnp.array([1.0, 1.0, 2.0, 1.0])),
        ValueError,
        r"observed site 'x' is outside the support of BernoulliProbs .Boolean.: value 2\. at "
        r"index \(2,\)",
    ),
    "NaN observation (svi.run, compiled)": (
        svi_run(jnp.array([jnp.nan, 1.0, 0.0, 1.0])),
        ValueError,
        r"observed site 'x' is NaN: value nan at index \(0,\)",
    ),
    "negative count (ppl.density check)": (
        check_trace(poisson_model, jnp.array([2, 0, -1, 4])),
        ValueError,
        r"ppl.density: observed site 'calls' is outside the support of Poisson "
        r".IntegerNonnegative.: value -1 at index \(2,\)",
    ),
    "row off the simplex (ppl.density check)": (
        check_trace(dirichlet_model, jnp.array([[0.2, 0.3, 0.5], [0.5, 0.5, 0.5]])),
        ValueError,
        r"observed site 'shares' is outside the support of Dirichlet .Simplex.: value "
        r"\[0.5 0.5 0.5\] at index \(1,\)",
    ),
    # keys, baselines, plates, returns
    "float key": (
        lambda: obj.elbo().loss(1.5, {}, model, guide, DATA),
        TypeError,
        r"ppl.Objective\(elbo\(num_particles=1\)\): rng_key must be a random key .*got float",
    ),
    "batch of keys": (
        lambda: obj.elbo().loss(jax.random.split(KEY, 3), {}, model, guide, DATA),
        TypeError,
        r"rng_key must be a random key .*got an array of dtype uint32 and shape \(3, 2\)",
    ),
    "key of typed keys batch": (
        lambda: obj.elbo().loss(jax.random.split(jax.random.key(0), 2), {}, model, guide, DATA),
        TypeError,
        r"expected one random key, got a batch of keys of shape \(2,\)",
    ),
    "int seed for SMC": (
        lambda: ppl.mcmc.SMC(model, num_particles=4).run(0, DATA),
        TypeError,
        r"SMC.run: rng_key must be a random key .*\), got int 0",
    ),
    "None key for resumable_run": (
        lambda: ppl.resumable_run(make_svi(), None, 1, DATA, checkpoint=folder() / "k"),
        TypeError,
        "resumable_run: rng_key must be a random key .*got NoneType None",
    ),
    "baseline of the wrong shape": (
        baseline_program(jnp.zeros(3)),
        ppl.StrategyError,
        r"site 'z': the reinforce baseline has shape \(3,\), the site's batch shape is \(5,\)",
    ),
    "running baseline of the wrong shape": (
        svi_loss(DATA, m=plated_model, g=running_baseline_guide),
        ppl.StrategyError,
        r"site 'z': the running baseline 'z_baseline' has shape \(3,\), the site's batch "
        r"shape is \(4,\)",
    ),
    "baseline None": (
        lambda: ppl.reinforce(baseline=None),
        TypeError,
        "reinforce: baseline must be 'none', 'loo', a number or array .*got NoneType",
    ),
    "baseline True": (lambda: ppl.reinforce(baseline=True), TypeError, "got bool True"),
    "reinforce learn='yes'": (
        lambda: ppl.reinforce(jnp.zeros(()), learn="yes"),
        TypeError,
        "reinforce: learn must be a bool, got 'yes'",
    ),
    "running baseline decay True": (
        lambda: ppl.running_baseline("b", decay=True),
        ValueError,
        r"running_baseline 'b': decay must be in \[0, 1\), got True",
    ),
    "running baseline without a name": (
        lambda: ppl.running_baseline(None),
        TypeError,
        "running_baseline: name must be a non-empty str, got None",
    ),
    "empty plate": (
        svi_loss(jnp.zeros(0), m=empty_plate_model, g=no_latents),
        ValueError,
        r"plate 'flips' has size 0; a plate needs at least one element",
    ),
    "objective returns None": (
        svi_loss(DATA, loss=forgot_return),
        TypeError,
        "objective 'forgot_return' returned None; its program must return a scalar",
    ),
    "objective of a non-callable": (
        lambda: ppl.Objective("elbo"),
        TypeError,
        "ppl.Objective needs a callable program, got str",
    ),
    "normalize a non-callable target": (
        lambda: ppl.normalize("model", guide, 4),
        TypeError,
        "ppl.normalize: target must be a program",
    ),
    "hmc step_size_jitter 1": (
        lambda: ppl.mcmc.hmc(LOGP, 0.1, 3, step_size_jitter=1.0),
        ValueError,
        r"hmc: step_size_jitter must be a number in \[0, 1\), got 1.0",
    ),
    "HMC step_size_jitter '0.1'": (
        lambda: ppl.mcmc.HMC(model, step_size_jitter="0.1"),
        ValueError,
        r"HMC: step_size_jitter must be a number in \[0, 1\), got '0.1'",
    ),
    "expectation additive=True on a user's program": (
        lambda: ppl.expectation(lambda key: 2.0 * ppl.density(model, {}, key), additive=True),
        ValueError,
        "ppl.expectation: additive=True cannot be verified for a user's program",
    ),
    "Objective additive=True on a user's program": (
        lambda: ppl.Objective(lambda m, g: 0.0, additive=True),
        ValueError,
        "ppl.Objective: additive=True cannot be verified",
    ),
    "objective decorator additive=True": (
        lambda: ppl.objective(additive=True)(lambda m, g: 0.0),
        ValueError,
        "ppl.Objective: additive=True cannot be verified",
    ),
    "iwae dreg with a flow without inverse": (
        lambda: obj.iwae(4, dreg=True).loss(KEY, {}, gaussian_model, flow_guide),
        ppl.StrategyError,
        "site 'z': iwae.dreg=True. needs log q at the sampled value with the guide's "
        "parameters held fixed, and TransformedDistribution cannot give it",
    ),
    "tail_adaptive with a flow without inverse": (
        lambda: obj.tail_adaptive(4).loss(KEY, {}, gaussian_model, flow_guide),
        ppl.StrategyError,
        "site 'z': tail_adaptive needs log q at the sampled value",
    ),
    "expectation with a bad key": (
        lambda: ppl.expectation(lambda: 0.0)(jnp.zeros(3)),
        TypeError,
        "ppl.expectation: rng_key must be a random key",
    ),
    "expectation program returns None": (
        lambda: ppl.expectation(lambda: None)(KEY),
        TypeError,
        "program '<lambda>' returned None",
    ),
    "expectation over an empty plate": (
        lambda: ppl.expectation(lambda: ppl.density(empty_plate_model, {}, jnp.zeros(0)))(KEY),
        ValueError,
        "plate 'flips' has size 0",
    ),
    "density of NaN data": (
        lambda: ppl.density(poisson_model, {}, jnp.array([1.0, jnp.nan])),
        ValueError,
        "ppl.density.*'calls'.*nan",
    ),
    "particles count True": (
        lambda: ppl.particles(lambda: 0.0, True),
        ValueError,
        "ppl.particles: num_particles must be a positive int, got True",
    ),
    "strategy on an observed model site": (
        lambda: ppl.density(model_with_observed_strategy, {"z": 0.1}),
        ppl.StrategyError,
        r"ppl.density: site 'x' is observed but has infer\['grad'\]='mvd'",
    ),
    "strategy on an observed site of a guide": (
        lambda: seed(lambda: ppl.simulate(model_with_observed_strategy), 0)(),
        ppl.StrategyError,
        r"ppl.simulate: site 'x' is observed but has infer\['grad'\]='mvd'",
    ),
    "strategy on an observed site of a program": (
        lambda: ppl.expectation(program_with_observed_strategy)(KEY),
        ppl.StrategyError,
        r"ppl.expectation: site 'x' is observed but has infer\['grad'\]='reinforce'",
    ),
    "tempered_smc max_stages 0": (
        lambda: ppl.mcmc.tempered_smc(KEY, jnp.zeros((4, 1)), LOGP, LOGP, None, max_stages=0),
        ValueError,
        "tempered_smc: max_stages must be a positive int, got 0",
    ),
}
for who, (make, name) in COUNTS.items():  # one bool case per constructor taking a count
    CATALOGUE[f"{who} count True"] = (functools.partial(make, True), ValueError, f"{name}.*True")
for bad in (2.7, True, np.int64(-1)):
    CATALOGUE[f"checkpoint step {bad!r}"] = (
        functools.partial(COUNTS["save_checkpoint"][0], bad),
        ValueError,
        "save_checkpoint: step must be an int >= 0, got " + re.escape(repr(bad)),
    )


def test_catalogue_is_large():
    assert len(CATALOGUE) >= 60


@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_bad_input_is_a_clear_error(case):
    thunk, exc, message = CATALOGUE[case]
    with pytest.raises(exc, match=message):
        thunk()


@pytest.mark.parametrize("who", sorted(set(COUNTS) - {"resumable_run"}))  # a run, not built
def test_numpy_integers_are_counts(who):
    """``elbo(np.int64(4))`` works: NumPy integers (and 0-d integer arrays) are counts."""
    make, _ = COUNTS[who]
    value = 4 if who not in ("posterior", "save_checkpoint") else 1
    make(np.int64(value))
    make(np.int32(value))
    make(jnp.asarray(value))
