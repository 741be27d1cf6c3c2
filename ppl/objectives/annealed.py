"""Annealed importance sampling with unadjusted Langevin transitions (UHA / MCD / DAIS).

The guide's sample is moved by T unadjusted Langevin steps towards the posterior along
the path pi_t = q^(1 - beta_t) p^beta_t; the weight uses the Langevin step from the new
point as backward kernel (Doucet et al. 2022, "Score-based diffusion meets annealed
importance sampling"; Geffner & Domke 2021; Zhang et al. 2021), so that
E[w] = p(x) exactly and E[log w] is a lower bound, tighter than the ELBO. Everything is
reparameterized: the gradient is pathwise through the transitions, and the step sizes
and schedule are learnable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree
from numpyro.distributions import constraints

from ..core.arguments import count
from ..core.constructs import density, simulate
from ..core.strategies import StrategyError
from ..infer.svi import Objective, numpyro_loss_options
from .weights import require_reparameterized

STEP_SIZE = "annealed_step_size"
SCHEDULE = "annealed_schedule_logits"


def annealing_params(num_steps: int, step_size: float = 0.05):
    """Declare the learnable step sizes (T,) and schedule logits (T,); call in the guide.

    The schedule is beta_t = cumsum(softmax(logits))_t (increasing, beta_T = 1); without
    this call the objective uses ``step_size`` and a linear schedule, fixed.
    """
    num_steps = count(num_steps, "num_steps", "annealing_params", minimum=0)
    eps = numpyro.param(STEP_SIZE, jnp.full(num_steps, step_size), constraint=constraints.positive)
    logits = numpyro.param(SCHEDULE, jnp.zeros(num_steps))
    return eps, jnp.cumsum(jax.nn.softmax(logits))


def _require_real(trace, names, who):
    for name in names:
        support = trace[name]["fn"].support
        base = getattr(support, "base_constraint", support)  # independent(real, n) -> real
        if base is not constraints.real:
            raise StrategyError(
                f"site '{name}': {who} moves latents with Langevin steps and needs real "
                f"support, got {support}; reparameterize the site to an unconstrained "
                "variable (e.g. numpyro.handlers.reparam with TransformReparam)"
            )


@numpyro_loss_options
def annealed(num_steps: int = 5, step_size: float = 0.05) -> Objective:
    """E[log w], w = p(x, z_T) prod_t B_t(z_(t-1) | z_t) / (q(z_0) prod_t F_t(z_t | z_(t-1))).

    F_t(z' | z) = N(z + eps_t grad log pi_t(z), 2 eps_t) is an unadjusted Langevin step
    targeting pi_t = q^(1 - beta_t) p^beta_t, B_t the same step taken from z'. Lower bound
    on log p(x), equal to the ELBO for ``num_steps=0``; ``exp`` of the estimate is an
    unbiased estimate of p(x). Needs a reparameterized guide over real-valued latents.
    Learnable step sizes and schedule: call :func:`annealing_params` in the guide.

    Example::

        def guide(x):
            ppl.objectives.annealing_params(num_steps=5)
            numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), 1.0))

        svi = SVI(model, guide, optax.adam(1e-2), loss=ppl.objectives.annealed(5))
    """
    num_steps = count(num_steps, "num_steps", "annealed", minimum=0)
    if not step_size > 0:
        raise ValueError(f"annealed: step_size must be > 0, got {step_size!r}")

    def program(model, guide, *args, **kwargs):
        q = simulate(guide, *args, **kwargs)
        require_reparameterized(q, "annealed")
        names = [n for n, s in q.trace.items() if s["type"] == "sample" and not s["is_observed"]]
        _require_real(q.trace, names, "annealed")
        z, unravel = ravel_pytree({n: q.values[n] for n in names})

        def log_q(x):
            return density(guide, {**q.values, **unravel(x)}, *args, **kwargs)

        def log_p(x):
            return density(model, {**q.values, **unravel(x)}, *args, **kwargs)

        def grads(x):  # (grad log q, grad log p): grad log pi_t mixes them with beta_t
            return jax.grad(log_q)(x), jax.grad(log_p)(x)

        def mix(g, beta):
            return (1 - beta) * g[0] + beta * g[1]

        log_w = -q.log_prob
        if num_steps:
            eps, betas = annealing_params(num_steps, step_size)
            g = grads(z)
        for t in range(num_steps):
            scale = jnp.sqrt(2 * eps[t])
            forward_mean = z + eps[t] * mix(g, betas[t])
            noise = numpyro.sample(
                f"_annealed_noise_{t}", dist.Normal(jnp.zeros_like(z), 1.0).to_event(1)
            )
            z_new = forward_mean + scale * noise
            g = grads(z_new)  # serves this step's backward kernel and the next forward one
            backward_mean = z_new + eps[t] * mix(g, betas[t])
            log_forward = jnp.sum(dist.Normal(forward_mean, scale).log_prob(z_new))
            log_backward = jnp.sum(dist.Normal(backward_mean, scale).log_prob(z))
            log_w = log_w + log_backward - log_forward
            z = z_new
        return log_w + log_p(z)

    return Objective(program, name=f"annealed(num_steps={num_steps}, step_size={step_size})")
