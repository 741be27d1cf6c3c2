"""A second ``MCMC.run`` with a ppl kernel, and a ``post_warmup_state`` continuation,
compile nothing of ppl's: what they compile is exactly what NumPyro's own NUTS compiles in
the same run (NumPyro 0.22's driver re-jits its collection loop ``_fori_collect_loop`` on
every run, for every kernel: its static ``_body_fn`` argument is a fresh ``jax.jit``
wrapper each call). Compilations are counted from JAX's compile log, which names every
program lowered for XLA whether or not the persistent cache then serves it.
"""

import logging
import re

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC

from ppl import mcmc


def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    s = numpyro.sample("s", dist.HalfNormal(2.0))
    numpyro.sample("y", dist.Normal(mu, s), obs=y)


Y = jnp.array([1.0, 2.0, 0.5, 3.0])


class _CompileLog(logging.Handler):
    def __init__(self):
        super().__init__()
        self.names = []

    def emit(self, record):
        m = re.match(r"Compiling (\S+) ", record.getMessage())
        if m:
            self.names.append(m.group(1))


def compiled_names(kernel, chains, method):
    """Sorted names of the programs compiled by (second run, continuation)."""
    log, jax_logger = _CompileLog(), logging.getLogger("jax")
    m = MCMC(
        kernel,
        num_warmup=20,
        num_samples=20,
        num_chains=chains,
        chain_method=method,
        progress_bar=False,
    )
    m.run(jax.random.key(0), Y)
    jax_logger.addHandler(log)
    jax.config.update("jax_log_compiles", True)
    try:
        m.run(jax.random.key(1), Y)
        second, log.names = sorted(log.names), []
        m.post_warmup_state = m.last_state
        m.run(jax.random.key(2), Y)
        continuation = sorted(log.names)
    finally:
        jax.config.update("jax_log_compiles", False)
        jax_logger.removeHandler(log)
    return second, continuation


DRIVER = ["jit(_fori_collect_loop)"]  # what NumPyro's driver re-jits on every run


@pytest.mark.slow
def test_second_hmc_run_compiles_only_numpyros_driver_loop():
    """One chain: the second run and the continuation each compile the driver's loop only
    (the search for a step size at ``init`` compiled again before it was cached)."""
    assert compiled_names(mcmc.HMC(model, num_steps=5), 1, "vectorized") == (DRIVER, DRIVER)


@pytest.mark.slow
@pytest.mark.parametrize(
    "make, chains, method",
    [
        (lambda: mcmc.HMC(model, num_steps=5), 2, "vectorized"),
        (lambda: mcmc.NUTS(model), 1, "vectorized"),
        (lambda: mcmc.MALA(model), 2, "sequential"),
        (lambda: mcmc.RandomWalk(model), 2, "vectorized"),
        (lambda: mcmc.NUTS(model, dense_mass=True), 2, "vectorized"),
        (lambda: mcmc.HMC(model, num_steps=5, dense_mass=[("mu",)]), 1, "vectorized"),
    ],
    ids=[
        "hmc-vectorized",
        "nuts",
        "mala-sequential",
        "random-walk",
        "nuts-dense-vectorized",
        "hmc-structured",
    ],
)
def test_second_run_compiles_only_what_numpyro_nuts_does(make, chains, method):
    ours = compiled_names(make(), chains, method)
    assert ours == compiled_names(numpyro.infer.NUTS(model), chains, method)
