"""Locating non-finite values: which site (or operation) produced the first NaN / inf."""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpyro
from jax.experimental import checkify

from .distributions import base_distribution
from .runtime import current_run

_ACTIVE = contextvars.ContextVar("ppl_check_finite", default=False)


class NonFiniteError(FloatingPointError):
    """A NaN or infinity in an estimate or a gradient, with the site that produced it."""


def _params(fn) -> dict:
    base = base_distribution(fn)
    out = {}
    for name in getattr(base, "arg_constraints", {}):
        value = getattr(base, name, None)
        if value is not None and jnp.issubdtype(jnp.result_type(value), jnp.inexact):
            out[name] = jnp.asarray(value)
    return out


def check_site(name: str, site: dict, lp, where: str) -> None:
    """Inside :func:`check_finite`: checks that a site's distribution parameters, value
    and log density are finite (a no-op otherwise)."""
    run = current_run()
    if not _ACTIVE.get() or (run is not None and run.mode in ("discover", "provenance")):
        return  # shape discovery and provenance analysis compute no values
    fn = site["fn"]
    kind = type(base_distribution(fn)).__name__
    label = f"site '{name}' ({kind}) in {where}"
    params = _params(fn)
    for p, value in params.items():
        checkify.check(
            jnp.all(jnp.isfinite(value)), f"{label}: parameter {p} is not finite: {{v}}", v=value
        )
    value = jnp.asarray(site["value"])
    if jnp.issubdtype(jnp.result_type(value), jnp.inexact):
        checkify.check(
            jnp.all(jnp.isfinite(value)), f"{label}: value is not finite: {{v}}", v=value
        )
    shown = ", ".join(f"{p}={{{p}}}" for p in params)
    checkify.check(
        jnp.all(jnp.isfinite(lp)),
        f"{label}: log density is {{lp}} at value {{value}}" + (f" ({shown})" if shown else ""),
        lp=jnp.asarray(lp),
        value=value,
        **params,
    )


_LIBRARIES = tuple(
    str(Path(m.__file__).parent) for m in (jax, numpyro, contextvars) if m.__file__
) + (str(Path(__file__).parents[1]),)


def _user_frames(err, limit: int = 3) -> str:
    """' at file:line (fn)' for the innermost frames outside jax / numpyro / ppl."""
    try:
        frames = str(err.get_exception().traceback_info).splitlines()
    except Exception:  # no traceback recorded (user checks) or a changed jax internal
        return ""
    user = [f for f in frames if f.startswith(("/", "<")) and not f.startswith(_LIBRARIES)]
    return "".join(f"\n  at {f}" for f in user[:limit])


def check_finite(fn: Callable) -> Callable:
    """``fn`` (array arguments and outputs) compiled with NaN / inf localization.

    Calls ``fn`` under ``jax.jit`` with checks at every ``ppl.simulate`` / ``ppl.density``
    site (distribution parameters, value, log density) and on every operation that
    creates a NaN or divides by zero, forward and backward (``jax.experimental.checkify``);
    raises :class:`NonFiniteError` naming the first failure, else returns ``fn``'s
    output. Slower than ``fn``: a debugging aid.

    Example::

        loss_and_grad = ppl.check_finite(
            jax.value_and_grad(lambda p: loss.loss(key, p, model, guide, data))
        )
        loss_and_grad(params)  # NonFiniteError: site 'x' (Normal) in ppl.density: ...
    """

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        def run(*args, **kwargs):
            token = _ACTIVE.set(True)
            try:
                return fn(*args, **kwargs)
            finally:
                _ACTIVE.reset(token)

        errors = checkify.user_checks | checkify.float_checks
        err, out = jax.jit(checkify.checkify(run, errors=errors))(*args, **kwargs)
        message = err.get()
        if message is not None:
            raise NonFiniteError(message + _user_frames(err))
        return out

    return wrapped
