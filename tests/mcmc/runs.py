"""The MCMC run the NumPyro-adapter tests share: 2 vectorized chains, no progress bar."""

import jax
from numpyro.infer import MCMC


def run_mcmc(kernel, *args, num_warmup=500, num_samples=2000, seed=0) -> MCMC:
    """``MCMC(kernel)`` run with 2 vectorized chains from ``jax.random.key(seed)``."""
    m = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    m.run(jax.random.key(seed), *args)
    return m
