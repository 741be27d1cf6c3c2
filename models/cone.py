"""The cone model of Becker et al. 2024 (Table 4) and its two variational families.

x, y ~ N(0, 10); z ~ N(r^2, 0.1 + r^2 / 100) with r^2 = x^2 + y^2; z = 5 observed. The
posterior is a thin ring of radius sqrt(5).
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

Z_OBS = 5.0


def model(z=Z_OBS):
    x = numpyro.sample("x", dist.Normal(0.0, 10.0))
    y = numpyro.sample("y", dist.Normal(0.0, 10.0))
    r2 = x**2 + y**2
    numpyro.sample("z", dist.Normal(r2, 0.1 + r2 / 100.0), obs=z)


def naive_guide(z=Z_OBS):
    """Mean-field Normal over (x, y)."""
    for name in ("x", "y"):
        loc = numpyro.param(f"{name}_loc", 0.0)
        log_scale = numpyro.param(f"{name}_log_scale", 0.0)
        numpyro.sample(name, dist.Normal(loc, jnp.exp(log_scale)))


def angle_guide(z=Z_OBS):
    """Auxiliary angle u ~ U(0, 1), theta = 2 pi u; (x, y) ~ N(sqrt(z) (cos, sin) theta, s)."""
    u = numpyro.sample("u", dist.Uniform(0.0, 1.0))
    theta = 2 * jnp.pi * u
    radius = jnp.sqrt(z)
    numpyro.sample("x", dist.Normal(radius * jnp.cos(theta), jnp.exp(numpyro.param("log_s1", 0.0))))
    numpyro.sample("y", dist.Normal(radius * jnp.sin(theta), jnp.exp(numpyro.param("log_s2", 0.0))))


def angle_reverse(kept, z=Z_OBS):
    """Reverse model r(u | x, y): the prior U(0, 1) on the angle (as in genjax.vi's sir)."""
    numpyro.sample("u", dist.Uniform(0.0, 1.0))
