"""SMC on a NumPyro model: particles in unconstrained space, the reference distribution
(the prior, with a standard normal in unconstrained space for each improper site) and the
tempered or data-annealed run."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.distributions import ExpandedDistribution, ImproperUniform, Independent, biject_to
from numpyro.distributions.distribution import MaskedDistribution
from numpyro.infer.util import log_density
from numpyro.primitives import Messenger

from ..core.arguments import check_key, count
from .base import Kernel
from .smc import SMCResult, _options, data_annealed_smc, tempered_smc


def _is_improper(fn) -> bool:
    while isinstance(fn, (ExpandedDistribution, Independent, MaskedDistribution)):
        fn = fn.base_dist
    return isinstance(fn, ImproperUniform)


class _draw_reference(Messenger):
    """Give each improper latent site a value whose unconstrained image is N(0, I)."""

    def __init__(self, fn, key):
        self.key, self.num = key, 0
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"] or not _is_improper(msg["fn"]):
            return
        t = biject_to(msg["fn"].support)
        shape = t.inverse_shape(msg["fn"].shape())
        msg["value"] = t(jax.random.normal(jax.random.fold_in(self.key, self.num), shape))
        self.num += 1


def _batch_loglik(sites, num_batches):
    """(num_batches,) log-likelihoods: each observed site's log-prob elements (along its
    leading axis) are split into ``num_batches`` contiguous batches."""
    total = 0.0
    for s in sites:
        lp = s["fn"].log_prob(s["value"])
        lp = lp if s.get("scale") is None else s["scale"] * lp
        lp = jnp.reshape(lp, (jnp.shape(lp)[0], -1)).sum(1) if jnp.ndim(lp) else lp[None]
        m = lp.shape[0]
        which = (jnp.arange(m) * num_batches) // m
        total = total + jax.nn.one_hot(which, num_batches, dtype=lp.dtype).T @ lp
    return total


def _log_prob(site):
    lp = jnp.sum(site["fn"].log_prob(site["value"]))
    return lp if site.get("scale") is None else site["scale"] * lp


class SMC:
    """SMC on a NumPyro model; ``run`` returns an :class:`SMCResult` with constrained
    particles (latent and deterministic sites), the log evidence log ∫ prior·likelihood
    and the per-stage record (``res.summary()``). ``anneal="likelihood"`` (default)
    tempers the likelihood of the observed sites in (adaptive schedule);
    ``anneal="data"`` adds the observations in ``num_batches`` contiguous batches along
    each observed site's leading axis (:func:`data_annealed_smc`). Moves run in
    unconstrained space; the defaults tune them at every stage (see :func:`tempered_smc`
    for ``move``, ``num_mcmc_steps``, ``max_mcmc_steps``, ``correlation_threshold``,
    ``num_resampled``).

    Particles start at prior draws. An improper site (``dist.ImproperUniform``, posteriordb's
    flat priors) has no draws: it starts from N(0, I) in unconstrained space, and the run
    tempers q^(1−β)·(prior·likelihood)^β, q the reference (the prior's proper part times
    these normals), so ``log_evidence`` estimates log ∫ prior·likelihood with the flat
    density taken as 1.

    Example::

        res = ppl.mcmc.SMC(model, num_particles=1000).run(jax.random.key(0), y)
        res.log_evidence, res.particles["mu"].mean(); print(res.summary())
        res = ppl.mcmc.SMC(model, anneal="data", num_batches=5).run(jax.random.key(0), y)
    """

    def __init__(
        self,
        model: Callable,
        num_particles: int = 1000,
        make_kernel: Callable[[Callable], Kernel] | None = None,
        num_mcmc_steps: int | None = None,
        betas: jax.Array | None = None,
        target_ess: float = 0.5,
        anneal: str = "likelihood",
        num_batches: int = 10,
        resample_threshold: float = 1.0,
        *,
        move: str = "rwm",
        max_mcmc_steps: int = 100,
        correlation_threshold: float = 0.1,
        num_resampled: int | None = None,
        max_stages: int = 500,
    ):
        if anneal not in ("likelihood", "data"):
            raise ValueError(f"anneal must be 'likelihood' or 'data', got {anneal!r}")
        self.num_particles = count(num_particles, "num_particles", "SMC")
        if num_mcmc_steps is not None:
            num_mcmc_steps = count(num_mcmc_steps, "num_mcmc_steps", "SMC", minimum=0)
        self.num_batches = count(num_batches, "num_batches", "SMC")
        self.model, self.anneal, self.betas, self.target_ess = model, anneal, betas, target_ess
        self.max_stages = count(max_stages, "max_stages", "SMC")
        _options(
            "SMC", self.num_particles, make_kernel, num_mcmc_steps, move, max_mcmc_steps,
            correlation_threshold, num_resampled, resample_threshold,
        )  # fmt: skip
        self.moves = dict(
            make_kernel=make_kernel,
            num_mcmc_steps=num_mcmc_steps,
            resample_threshold=resample_threshold,
            move=move,
            max_mcmc_steps=max_mcmc_steps,
            correlation_threshold=correlation_threshold,
            num_resampled=num_resampled,
        )

    @property
    def sample_field(self):
        # the first thing numpyro.infer.MCMC reads of its kernel
        raise TypeError(
            "ppl.mcmc.SMC is not an MCMC kernel for numpyro.infer.MCMC (SMC is a population"
            " of particles, not a Markov chain): run it directly, res ="
            " ppl.mcmc.SMC(model).run(key, *args); res.particles holds the posterior draws"
        )

    def run(self, rng_key: jax.Array, *args, **kwargs) -> SMCResult:
        """Run SMC on ``model(*args, **kwargs)``; jit- and vmap-compatible."""
        check_key(rng_key, "SMC.run", seeds=False)
        k_prior, k_smc = jax.random.split(rng_key)

        def draw(k):
            model = _draw_reference(self.model, jax.random.fold_in(k, 1))
            tr = handlers.trace(handlers.seed(model, k)).get_trace(*args, **kwargs)
            return {n: s for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]}

        sites = draw(k_prior)
        transforms = {n: biject_to(s["fn"].support) for n, s in sites.items()}
        improper = {n for n, s in sites.items() if _is_improper(s["fn"])}

        def constrain(u):
            return {n: transforms[n](v) for n, v in u.items()}

        def split_density(u, batches=False):
            """(log q, log prior·lik − log q) at unconstrained u, per batch if ``batches``."""
            v = constrain(u)
            _, tr = log_density(self.model, args, kwargs, v)
            sample_sites = [s for s in tr.values() if s["type"] == "sample"]
            observed = [s for s in sample_sites if s["is_observed"]]
            if batches:
                lik = _batch_loglik(observed, self.num_batches)
            else:
                lik = sum((_log_prob(s) for s in observed), jnp.zeros(()))
            prior = {s["name"]: _log_prob(s) for s in sample_sites if not s["is_observed"]}
            for n, t in transforms.items():
                prior[n] = prior[n] + jnp.sum(t.log_abs_det_jacobian(u[n], v[n]))
            normal = sum(jnp.sum(-0.5 * u[n] ** 2 - 0.9189385332046727) for n in improper)
            flat = sum(prior[n] for n in improper) - normal
            logq = sum(prior[n] for n in prior if n not in improper) + normal
            if batches:
                return logq, lik.at[0].add(flat)
            return logq, lik + flat

        keys = jax.random.split(k_prior, self.num_particles)
        u0 = jax.vmap(lambda k: {n: transforms[n].inv(s["value"]) for n, s in draw(k).items()})(
            keys
        )
        if self.anneal == "data":
            res = data_annealed_smc(
                k_smc,
                u0,
                lambda u: split_density(u)[0],
                lambda u: split_density(u, batches=True)[1],
                self.num_batches,
                **self.moves,
            )
        else:
            res = tempered_smc(
                k_smc,
                u0,
                lambda u: split_density(u)[0],
                lambda u: split_density(u)[1],
                betas=self.betas,
                target_ess=self.target_ess,
                max_stages=self.max_stages,
                **self.moves,
            )

        def values(u):  # constrained latent values and the deterministic sites
            v = constrain(u)
            model = handlers.substitute(handlers.seed(self.model, k_prior), v)
            tr = handlers.trace(model).get_trace(*args, **kwargs)
            return v | {n: s["value"] for n, s in tr.items() if s["type"] == "deterministic"}

        return res._replace(particles=jax.vmap(values)(res.particles))
