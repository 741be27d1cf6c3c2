"""The MCMC run the NumPyro-adapter tests share: vectorized chains, no progress bar."""

import jax
from numpyro.infer import MCMC


def run_mcmc(
    kernel, *args, num_warmup=500, num_samples=2000, num_chains=2, seed=0, **run_kwargs
) -> MCMC:
    """``MCMC(kernel)`` run with ``num_chains`` vectorized chains from
    ``jax.random.key(seed)``; ``run_kwargs`` go to ``MCMC.run`` (e.g. ``extra_fields``)."""
    m = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    m.run(jax.random.key(seed), *args, **run_kwargs)
    return m
