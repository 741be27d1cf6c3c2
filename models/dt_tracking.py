"""Distribution-transformer task (c): tracking with a cluttered range sensor and a bearing sensor.

Task (c) of the DT paper (Bayesian sensor fusion). The state x = (px, py, vx, vy) moves
with constant-velocity linear-Gaussian dynamics, x_t = A x_{t-1} + w_t, w_t ~ N(0, Q)
(white-noise acceleration, step ``DT_STEP``), so the predict step is exact for GMMs
(:func:`ppl.dt.linear_gaussian`). Each step a sensor at the origin reports

* a range ‖p‖ + N(0, ``SIGMA_R``²), replaced with probability ``CLUTTER`` by clutter
  uniform on [0, ``R_MAX``] (:class:`ClutteredRange`, exact density), and
* a bearing atan2(py, px) ~ VonMises(·, ``KAPPA``) (≈ N(·, ``SIGMA_B``²), wrapped).

The posterior is non-Gaussian (the clutter makes each range reading "real or not", the
bearing makes it banana-shaped), so a GMM filter and a particle filter are both sensible.

Everything is a NumPyro program: :func:`series_model` (initial prior → T steps of
dynamics and measurements) is the evaluation simulator; :func:`training_simulator` draws
the initial prior from a meta-prior over K-component GMMs (:func:`meta_prior`) and runs a
short series with randomly dropped readings. The data stream has one token per reading
(:func:`features`: sensor one-hot, range, cos/sin bearing). The network
(:func:`make_network`) is a :class:`WhitenedDT`: a ``DistributionTransformer`` run in the
prior's whitened frame on EKF-style innovation features (a first version on raw
coordinates and raw tokens stayed near the predicted prior: NLL −0.04 vs the PF's −5.5
after 3600 steps). :class:`FilterForwardKL` trains it through :func:`ppl.dt.filter`: the
amortized forward KL summed over a rollout, so the network is trained on its own
predicted posteriors as priors. The baselines are a bootstrap particle filter
(:func:`particle_filter`, ``lax.scan``, systematic resampling) and an EKF that ignores
the clutter (:func:`ekf`).
"""

from __future__ import annotations

import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import lax
from numpyro.contrib.control_flow import scan as np_scan
from numpyro.distributions import constraints

# -- the task's constants ----------------------------------------------------------------
DT_STEP = 1.0  # time step
Q_DENSITY = 5e-4  # white-noise acceleration spectral density
SIGMA_R = 0.1  # range noise (standard deviation)
CLUTTER = 0.2  # probability that a range reading is clutter
R_MAX = 10.0  # clutter is uniform on [0, R_MAX]
SIGMA_B = 0.03  # bearing noise (radians)
KAPPA = 1.0 / SIGMA_B**2  # von Mises concentration of the bearing
T_SERIES = 30  # steps per evaluation series
P0_SD = (0.3, 0.3, 0.05, 0.05)  # initial prior standard deviations (evaluation series)
OBS_DIM = 5  # token features: [is_range, is_bearing, range / 5, cos bearing, sin bearing]


def dynamics() -> tuple[jax.Array, jax.Array]:
    """(A, Q_tril): constant velocity, x' = A x + w, w ~ N(0, Q) (white-noise acceleration)."""
    h, q = DT_STEP, Q_DENSITY
    eye, zero = np.eye(2), np.zeros((2, 2))
    A = np.block([[eye, h * eye], [zero, eye]])
    Q = q * np.block([[h**3 / 3 * eye, h**2 / 2 * eye], [h**2 / 2 * eye, h * eye]])
    return jnp.asarray(A, jnp.float32), jnp.asarray(np.linalg.cholesky(Q), jnp.float32)


class ClutteredRange(dist.Distribution):
    """r ~ (1 − c) N(loc, σ²) + c U(0, r_max): a range reading that is clutter w.p. c."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    reparametrized_params = []
    pytree_aux_fields = ("clutter", "r_max")

    def __init__(self, loc, scale=SIGMA_R, clutter=CLUTTER, r_max=R_MAX, *, validate_args=None):
        self.loc, self.scale = jnp.asarray(loc), jnp.asarray(scale)
        self.clutter, self.r_max = clutter, r_max
        super().__init__(jnp.shape(self.loc), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        k1, k2, k3 = jax.random.split(key, 3)
        shape = sample_shape + self.batch_shape
        real = self.loc + self.scale * jax.random.normal(k1, shape)
        fake = self.r_max * jax.random.uniform(k2, shape)
        return jnp.where(jax.random.bernoulli(k3, self.clutter, shape), fake, real)

    def log_prob(self, value):
        real = jnp.log1p(-self.clutter) + dist.Normal(self.loc, self.scale).log_prob(value)
        inside = (value >= 0) & (value <= self.r_max)
        fake = jnp.where(inside, math.log(self.clutter / self.r_max), -jnp.inf)
        return jnp.logaddexp(real, fake)


def bearing_of(x) -> jax.Array:
    """atan2(py, px) of states x (..., 4)."""
    return jnp.arctan2(x[..., 1], x[..., 0])


def range_of(x) -> jax.Array:
    """‖(px, py)‖ of states x (..., 4)."""
    return jnp.sqrt(x[..., 0] ** 2 + x[..., 1] ** 2)


def sensors(x, observed=None):
    """One step's readings of state x as NumPyro sites ``range`` and ``bearing`` (masked)."""
    obs = jnp.ones(2, bool) if observed is None else observed
    with numpyro.handlers.mask(mask=obs[0]):
        r = numpyro.sample("range", ClutteredRange(range_of(x)))
    with numpyro.handlers.mask(mask=obs[1]):
        b = numpyro.sample("bearing", dist.VonMises(bearing_of(x), KAPPA))
    return r, b


def log_likelihood(x, reading) -> jax.Array:
    """log p(range, bearing | x) for states x (..., 4); ``reading`` = (r, b, observed (2,))."""
    r, b, obs = reading
    lr = ClutteredRange(range_of(x)).log_prob(r)
    lb = dist.VonMises(bearing_of(x), KAPPA).log_prob(b)
    return jnp.where(obs[0], lr, 0.0) + jnp.where(obs[1], lb, 0.0)


def _steps(x0, num_steps: int, p_observe: float):
    A, Q_tril = dynamics()

    def step(x, _):
        x = numpyro.sample("x", dist.MultivariateNormal(A @ x, scale_tril=Q_tril))
        observed = numpyro.sample("observed", dist.Bernoulli(p_observe).expand([2]))
        sensors(x, observed.astype(bool))
        return x, None

    np_scan(step, x0, None, length=num_steps)


def series_model(num_steps: int = T_SERIES):
    """Evaluation series: prior mean m0 (range U(3, 7), any bearing, speed N(0, 0.05²) per
    axis), x0 ~ N(m0, diag(P0_SD)²), then ``num_steps`` steps of dynamics and readings."""
    rho = numpyro.sample("rho0", dist.Uniform(3.0, 7.0))
    phi = numpyro.sample("phi0", dist.Uniform(-math.pi, math.pi))
    v = numpyro.sample("v0", dist.Normal(0.0, 0.05).expand([2]).to_event(1))
    m0 = jnp.concatenate([rho * jnp.stack([jnp.cos(phi), jnp.sin(phi)]), v])
    x0 = numpyro.sample("x0", dist.MultivariateNormal(m0, scale_tril=jnp.diag(jnp.array(P0_SD))))
    _steps(x0, num_steps, 1.0)


def initial_prior(values: dict, num_components: int) -> jax.Array:
    """The evaluation prior N(m0, P0) as a K-component GMM (means spread by ±0.1 sd along px,
    equal weights, so a permutation-equivariant network can tell the components apart)."""
    from ppl.dt import GMM

    m0, _ = prior_mean_cov(values)
    L0 = jnp.diag(jnp.array(P0_SD))
    offsets = 0.1 * jnp.linspace(-1.0, 1.0, num_components)
    means = m0 + offsets[:, None] * L0[:, 0]
    return GMM(
        jnp.full(num_components, -math.log(num_components)),
        means,
        jnp.broadcast_to(L0, (num_components, 4, 4)),
    )


def prior_mean_cov(values: dict) -> tuple[jax.Array, jax.Array]:
    """(m0, P0) of an evaluation series (for the particle filter and the EKF)."""
    rho, phi = values["rho0"], values["phi0"]
    m0 = jnp.concatenate([rho * jnp.stack([jnp.cos(phi), jnp.sin(phi)]), values["v0"]])
    return m0, jnp.diag(jnp.array(P0_SD) ** 2)


# -- training: a meta-prior over GMM priors, short series -----------------------------------
META_LOG_SD = ((0.02, 0.8), (0.003, 0.15))  # (low, high) sd for positions, velocities


def meta_prior(num_components: int):
    """A random K-component GMM over the state (NumPyro sites), covering the filter's priors.

    Centre at range U(1, 12), any bearing, velocity N(0, 0.15²); per-axis sd log-uniform in
    ``META_LOG_SD``; correlations LKJ(4, 1); component means centre + L δ_k with
    δ_k ~ N(0, s²), s ~ U(0, 1.5); logits N(0, 1).
    """
    from ppl.dt import GMM

    rho = numpyro.sample("meta_rho", dist.Uniform(1.0, 12.0))
    phi = numpyro.sample("meta_phi", dist.Uniform(-math.pi, math.pi))
    vel = numpyro.sample("meta_vel", dist.Normal(0.0, 0.15).expand([2]).to_event(1))
    (pl, ph), (vl, vh) = META_LOG_SD
    lo = jnp.log(jnp.array([pl, pl, vl, vl]))
    hi = jnp.log(jnp.array([ph, ph, vh, vh]))
    log_sd = numpyro.sample("meta_log_sd", dist.Uniform(lo, hi).to_event(1))
    corr = numpyro.sample("meta_corr", dist.LKJCholesky(4, 1.0))
    spread = numpyro.sample("meta_spread", dist.Uniform(0.0, 1.5))
    k = num_components
    delta = numpyro.sample("meta_delta", dist.Normal(0.0, 1.0).expand([k, 4]).to_event(2))
    logits = numpyro.sample("meta_logits", dist.Normal(0.0, 1.0).expand([k]).to_event(1))
    L = jnp.exp(log_sd)[:, None] * corr
    centre = jnp.concatenate([rho * jnp.stack([jnp.cos(phi), jnp.sin(phi)]), vel])
    means = centre + spread * delta @ L.T
    return GMM.from_logits(logits, means, jnp.broadcast_to(L, (k, 4, 4)), validate=False)


def training_simulator(num_components: int = 4, num_steps: int = 6, p_observe: float = 0.9):
    """Meta-prior GMM q0, x0 ~ q0, then ``num_steps`` steps; each reading seen w.p. p_observe."""
    q0 = meta_prior(num_components)
    x0 = numpyro.sample("x0", q0.to_distribution())
    _steps(x0, num_steps, p_observe)


# -- observation tokens ----------------------------------------------------------------------
def features(r, b) -> jax.Array:
    """Tokens (..., 2, OBS_DIM): [1, 0, r/5, 0, 0] for the range, [0, 1, 0, cos b, sin b]."""
    r, b = jnp.asarray(r), jnp.asarray(b)
    z, o = jnp.zeros_like(r), jnp.ones_like(r)
    rng = jnp.stack([o, z, r / 5.0, z, z], -1)
    brg = jnp.stack([z, o, z, jnp.cos(b), jnp.sin(b)], -1)
    return jnp.stack([rng, brg], -2)


def stream(values: dict) -> tuple[jax.Array, jax.Array]:
    """(tokens (T, 2, OBS_DIM), mask (T, 2)) of one simulated series."""
    return features(values["range"], values["bearing"]), values["observed"].astype(bool)


def simulate(key, model, num: int, *args) -> dict:
    """``num`` independent runs of a NumPyro program: {site: values stacked on axis 0}."""
    from numpyro.handlers import seed, trace

    def one(k):
        tr = trace(seed(model, k)).get_trace(*args)
        return {n: s["value"] for n, s in tr.items() if s["type"] == "sample"}

    return jax.vmap(one)(jax.random.split(key, num))


# -- network and objective -------------------------------------------------------------------
LOCAL_DIM = 9  # features the inner network sees per reading (see local_features)


def local_features(tokens, m, L) -> jax.Array:
    """Per reading, relative to a prior with mean m and covariance L Lᵀ (EKF quantities):
    [is_range, is_bearing, ν̃, log(1 + ν̃²)/4, log(s/σ), g/s (4)] with h the sensor's
    prediction at m, ν = z − h(m) (bearing wrapped), g = Lᵀ∇h(m), s = ‖g‖, σ the sensor
    noise and ν̃ = ν / √(s² + σ²) clipped to ±10."""
    is_r = tokens[:, 0]
    r, b = 5.0 * tokens[:, 2], jnp.arctan2(tokens[:, 4], tokens[:, 3])
    px, py = m[0], m[1]
    r2 = px**2 + py**2 + 1e-12
    rh = jnp.sqrt(r2)
    grad_r = jnp.array([px / rh, py / rh, 0.0, 0.0])
    grad_b = jnp.array([-py / r2, px / r2, 0.0, 0.0])
    nu_r = r - rh
    nu_b = jnp.angle(jnp.exp(1j * (b - jnp.arctan2(py, px))))
    sel = is_r[:, None] > 0.5
    g = jnp.where(sel, L.T @ grad_r, L.T @ grad_b)  # (N, 4)
    nu = jnp.where(is_r > 0.5, nu_r, nu_b)
    sigma = jnp.where(is_r > 0.5, SIGMA_R, SIGMA_B)
    sd = jnp.sqrt(jnp.sum(g**2, -1) + 1e-20)
    nt = jnp.clip(nu / jnp.sqrt(sd**2 + sigma**2), -10.0, 10.0)
    return jnp.concatenate(
        [
            tokens[:, :2],
            jnp.stack([nt, 0.25 * jnp.log1p(nt**2), jnp.log(sd / sigma)], -1),
            g / sd[:, None],
        ],
        -1,
    )


class WhitenedDT(eqx.Module):
    """A distribution transformer run in the prior's whitened frame.

    With the prior's mixture mean m and covariance L Lᵀ, the inner network maps the prior
    of u = L⁻¹(x − m) and the readings' :func:`local_features` to a GMM posterior of u,
    mapped back to x (means m + L μ_k, Cholesky factors L L_k). The network therefore
    sees priors of unit overall scale and EKF-style innovations rather than raw positions,
    so it only learns the non-Gaussian part of the update (clutter, curvature). It takes
    the raw tokens of :func:`features` and is called like a ``DistributionTransformer``
    (so :func:`ppl.dt.filter` runs it); an untrained inner network returns the prior.
    """

    net: eqx.Module
    dim: int = eqx.field(static=True, default=4)
    obs_dim: int = eqx.field(static=True, default=OBS_DIM)

    @property
    def num_components(self) -> int:
        return self.net.num_components

    def encode_prior(self, params):
        return self.net.encode_prior(params)

    def __call__(self, prior, data, mask=None):
        from ppl.dt import GMM

        m, P = prior.mean(), prior.covariance()
        L = jnp.linalg.cholesky(0.5 * (P + P.T) + 1e-10 * jnp.eye(4))
        solve = lambda B: jax.scipy.linalg.solve_triangular(L, B, lower=True)  # noqa: E731
        u_prior = GMM(
            prior.log_weights,
            solve((prior.means - m).T).T,
            jax.vmap(solve)(prior.scale_tril),
            validate=False,
        )
        post = self.net(u_prior, local_features(jnp.asarray(data), m, L), mask)
        return GMM(post.log_weights, m + post.means @ L.T, L @ post.scale_tril, validate=False)


def make_network(num_components: int, key, d_model: int = 32, num_layers: int = 2):
    """The task's network: a :class:`WhitenedDT` around a 4-d ``DistributionTransformer``
    with ``LOCAL_DIM`` token features and GMM priors (no prior encoder)."""
    from ppl.dt import DistributionTransformer

    inner = DistributionTransformer(
        4, LOCAL_DIM, num_components, key=key, d_model=d_model, num_layers=num_layers, num_heads=4
    )
    return WhitenedDT(inner)


NETWORK = Path(__file__).resolve().parent / "dt_tracking" / "dt4.eqx"


def load_network(path: str | Path = NETWORK):
    """A trained network (default: the shipped DT-4); its architecture is read from the
    ``train_info*.json`` written beside it by ``python -m benchmarks.dt_tracking train``."""
    import json

    path = Path(path)
    info = path.with_name(path.stem.replace("dt4", "train_info", 1) + ".json")
    info = json.loads(info.read_text())
    skeleton = eqx.filter_eval_shape(
        make_network, info["num_components"], jax.random.key(0), **info["arch"]
    )  # shapes only: no initialization work
    return eqx.tree_deserialise_leaves(path, skeleton)


def dt_filter(net, prior, tokens, mask):
    """``ppl.dt.filter`` with the task's exact GMM predict step; posteriors of shape (T,)."""
    from ppl.dt import filter, linear_gaussian

    return filter(net, prior, tokens, mask, transition=linear_gaussian(*dynamics()))


class FilterForwardKL(eqx.Module):
    """Amortized forward KL along a rollout: E[Σ_t log q_t(x_t)] / T with q_t from dt_filter.

    q_0 is a meta-prior GMM (:func:`meta_prior`), q_t = dt(predict(q_{t-1}), z_t). With
    ``num_steps=1`` its terms are those of ``ppl.dt.amortized_forward_kl(consistency=0)``
    with prior predict(q_0) and latent x_1 (checked in tests/dt/test_tracking_task.py);
    longer rollouts train the network on its own posteriors, as :func:`ppl.dt.filter` uses
    it (gradients flow through the recursion).
    """

    num_components: int = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)
    num_problems: int = eqx.field(static=True)
    p_observe: float = eqx.field(static=True, default=0.9)

    def simulate(self, key) -> dict:
        return simulate(
            key,
            training_simulator,
            self.num_problems,
            self.num_components,
            self.num_steps,
            self.p_observe,
        )

    def terms(self, net, values: dict) -> jax.Array:
        """log q_t(x_t), shape (num_problems, num_steps)."""

        def one(v):
            q0 = numpyro.handlers.substitute(meta_prior, data=v)(self.num_components)
            tokens, mask = stream(v)
            return dt_filter(net, q0, tokens, mask).log_prob(v["x"])

        return jax.vmap(one)(jax.lax.stop_gradient(values))

    def value(self, net, key) -> jax.Array:
        return self.terms(net, self.simulate(key)).mean()

    def loss(self, net, key) -> jax.Array:
        return -self.value(net, key)


# -- baselines ---------------------------------------------------------------------------
def _systematic(key, log_w):
    n = log_w.shape[0]
    cdf = jnp.cumsum(jax.nn.softmax(log_w))
    u = (jax.random.uniform(key) + jnp.arange(n)) / n
    return jnp.clip(jnp.searchsorted(cdf, u), 0, n - 1)


def moments(particles, log_w, _=None) -> tuple[jax.Array, jax.Array]:
    """Weighted mean and covariance of a particle set (the default per-step summary)."""
    w = jax.nn.softmax(log_w)
    m = w @ particles
    d = particles - m
    return m, (w[:, None] * d).T @ d


def particle_filter(key, particles, readings, log_lik=log_likelihood, summary=moments):
    """Bootstrap particle filter: propagate by the dynamics, weight by ``log_lik``, summarize,
    resample (systematic) every step; one ``lax.scan``.

    ``particles`` (N, 4) are draws of x_0; ``readings`` a pytree with leading axis T (one
    entry per step, passed to ``log_lik(x, reading)`` and to ``summary(particles, log_w,
    reading)``). Returns (stacked summaries, log evidence log p(z_1:T) estimate).
    """
    A, Q_tril = dynamics()
    n = particles.shape[0]

    def step(carry, inputs):
        x, log_z = carry
        k, reading = inputs
        k1, k2 = jax.random.split(k)
        x = x @ A.T + jax.random.normal(k1, x.shape) @ Q_tril.T
        log_w = log_lik(x, reading)
        log_z = log_z + jax.nn.logsumexp(log_w) - math.log(n)
        out = summary(x, log_w, reading)
        return (x[_systematic(k2, log_w)], log_z), out

    t = jax.tree.leaves(readings)[0].shape[0]
    (_, log_z), out = lax.scan(step, (particles, 0.0), (jax.random.split(key, t), readings))
    return out, log_z


def kde_log_density(particles, log_w, x) -> jax.Array:
    """Weighted Gaussian KDE at x: bandwidth h² Σ_w with Scott's h = n_eff^(−1/(d+4))."""
    w = jax.nn.softmax(log_w)
    n_eff = 1.0 / jnp.sum(w**2)
    _, cov = moments(particles, log_w)
    d = particles.shape[-1]
    h = n_eff ** (-1.0 / (d + 4))
    L = jnp.linalg.cholesky(h**2 * cov + 1e-9 * jnp.eye(d))
    comp = dist.MultivariateNormal(particles, scale_tril=L)
    return jax.nn.logsumexp(jnp.log(w + 1e-30) + comp.log_prob(x))


def ekf(m0, P0, readings) -> tuple[jax.Array, jax.Array]:
    """Extended Kalman filter on (range, bearing) with Gaussian noise (σ_r, σ_b), clutter
    ignored; returns per-step posterior means (T, 4) and covariances (T, 4, 4)."""
    A, Q_tril = dynamics()
    Q = Q_tril @ Q_tril.T
    R = jnp.diag(jnp.array([SIGMA_R**2, SIGMA_B**2]))

    def step(carry, reading):
        m, P = carry
        r, b, obs = reading
        m, P = A @ m, A @ P @ A.T + Q
        px, py = m[0], m[1]
        rr = jnp.sqrt(px**2 + py**2)
        H = jnp.array([[px / rr, py / rr, 0.0, 0.0], [-py / rr**2, px / rr**2, 0.0, 0.0]])
        innov = jnp.array([r - rr, jnp.angle(jnp.exp(1j * (b - jnp.arctan2(py, px))))])
        o = obs.astype(m.dtype)
        H, innov = H * o[:, None], innov * o
        S = H @ P @ H.T + R
        K = jnp.linalg.solve(S, H @ P).T
        m, P = m + K @ innov, (jnp.eye(4) - K @ H) @ P
        return (m, 0.5 * (P + P.T)), (m, P)

    _, out = lax.scan(step, (m0, P0), readings)
    return out


# -- evaluation: −log q_t(x_t) per series and step ------------------------------------------
def readings(values: dict):
    """(range, bearing, observed) with leading axis T: the per-step input of the baselines."""
    return values["range"], values["bearing"], values["observed"].astype(bool)


@eqx.filter_jit
def dt_nll(net, series: dict, num_components: int = 4) -> jax.Array:
    """−log q_t(x_t) of the DT filter, shape (num_series, T)."""

    def one(v):
        tokens, mask = stream(v)
        return -dt_filter(net, initial_prior(v, num_components), tokens, mask).log_prob(v["x"])

    return jax.vmap(one)(series)


def pf_nll(key, series: dict, num_particles: int) -> dict:
    """−log q_t(x_t) of the bootstrap PF, with q_t a moment-matched Gaussian ("gauss") and a
    weighted Gaussian KDE ("kde") of the weighted particles; shapes (num_series, T)."""

    def summary(x, log_w, reading):
        m, cov = moments(x, log_w)
        truth = reading[-1]
        gauss = dist.MultivariateNormal(m, cov + 1e-9 * jnp.eye(4)).log_prob(truth)
        return -gauss, -kde_log_density(x, log_w, truth)

    def one(k, v):
        m0, P0 = prior_mean_cov(v)
        k0, k1 = jax.random.split(k)
        x0 = m0 + jax.random.normal(k0, (num_particles, 4)) * jnp.sqrt(jnp.diag(P0))
        (g, kd), log_z = particle_filter(k1, x0, (*readings(v), v["x"]), _pf_lik, summary)
        return g, kd, log_z

    keys = jax.random.split(key, jax.tree.leaves(series)[0].shape[0])
    g, kd, log_z = jax.jit(jax.vmap(one))(keys, series)
    return {"gauss": g, "kde": kd, "log_z": log_z}


def _pf_lik(x, reading):
    return log_likelihood(x, reading[:3])


@jax.jit
def ekf_nll(series: dict) -> jax.Array:
    """−log N(x_t; m_t, P_t) of the EKF, shape (num_series, T)."""

    def one(v):
        m, P = ekf(*prior_mean_cov(v), readings(v))
        return -dist.MultivariateNormal(m, P).log_prob(v["x"])

    return jax.vmap(one)(series)
