"""Test configuration, set before JAX is imported.

- JAX runs on the CPU unless the caller chose a platform (``JAX_PLATFORMS``).
- XLA compiles with backend optimization level 0 (``XLA_FLAGS``): most of the suite's time
  is XLA compiling small programs that then run for milliseconds, and level 0 compiles them
  2-4x faster. The optimization level changes how fast a program runs, not what it computes
  (XLA's CPU backend does not enable fast math at any level). Set ``PPL_TEST_XLA_OPT=1`` to
  test with XLA's default optimization instead (CI's slow step does).
- JAX's persistent compilation cache in ``.cache/jax`` at the repository root (or
  ``PPL_TEST_JAX_CACHE``; ``0`` turns it off), for every compilation
  (``jax_persistent_cache_min_compile_time_secs = 0``): a second run of the suite reads
  its executables instead of compiling them. CI may keep the folder between runs.
  Tests that need a compilation of their own use the ``fresh_compilation`` fixture.
"""

import contextlib
import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_OPT_FLAG = "--xla_backend_optimization_level"
if os.environ.get("PPL_TEST_XLA_OPT", "0") in ("", "0") and _OPT_FLAG not in os.environ.get(
    "XLA_FLAGS", ""
):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_OPT_FLAG}=0".strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402

CACHE_DIR = os.environ.get("PPL_TEST_JAX_CACHE", str(Path(__file__).parents[1] / ".cache" / "jax"))
if CACHE_DIR != "0":
    jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@contextlib.contextmanager
def _fresh_compilation():
    """Compilations inside the block bypass the persistent cache (they really compile)."""
    enabled = jax.config.jax_enable_compilation_cache
    compilation_cache.reset_cache()
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)
        compilation_cache.reset_cache()


@pytest.fixture
def fresh_compilation():
    """A context manager: ``with fresh_compilation(): ...`` compiles without the cache."""
    return _fresh_compilation
