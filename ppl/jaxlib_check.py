"""A warning at import for a jaxlib known to compute wrong numbers on CPU.

jaxlib 0.10.2's CPU backend miscompiles a matrix product against a constant matrix of
equal entries followed by a reduction, under ``jit`` with a batch of about 500 or more
(``jax.jit(lambda z: (z @ jnp.full((2, 3), 0.3)).sum(-1))`` on a (500, 3, 2) array is off
by up to 3.4), in float32 and float64, with no error. jaxlib 0.9.2, 0.10.0 and 0.10.1 compute
it right, and XLA's flag ``--xla_cpu_experimental_ynn_fusion_type=`` (an empty value) avoids
it in 0.10.2. ppl's requirements exclude 0.10.2; this warns where it is installed anyway.
"""

from __future__ import annotations

import os
import warnings

__all__ = ["warn_if_affected"]

AFFECTED = ("0.10.2",)
WORKAROUND = "--xla_cpu_experimental_ynn_fusion_type="


def warn_if_affected(version: str | None = None, xla_flags: str | None = None) -> bool:
    """Warn (and return True) where jaxlib ``version`` (default: the installed one) is
    known to miscompute on CPU and ``xla_flags`` (default: ``$XLA_FLAGS``) lacks the
    workaround."""
    if version is None:
        import jaxlib

        version = getattr(jaxlib, "__version__", None) or jaxlib.version.__version__
    flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    if version not in AFFECTED or WORKAROUND in flags.split():
        return False
    warnings.warn(
        f"jaxlib {version} computes some jitted matrix products against constant matrices "
        "wrongly on CPU, without an error (ppl's README: 'Known issue'). Install another "
        f"version (pip install 'jax[cpu]!={version}'; ppl's requirements exclude it), or "
        f"start Python with XLA_FLAGS='{WORKAROUND}'.",
        RuntimeWarning,
        stacklevel=3,
    )
    return True
