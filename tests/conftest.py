"""Test configuration, set before JAX is imported.

- JAX runs on the CPU unless the caller chose a platform (``JAX_PLATFORMS``).
- XLA compiles for speed of compilation (``XLA_FLAGS``): backend optimization level 0 and
  the CPU backend's elemental emitters instead of its MLIR fusion emitters. Most of the
  suite's time is XLA compiling small programs that then run for milliseconds; these two
  flags cut that compile time 3-6x. They change how fast a program runs, not what it
  computes (results agree with XLA's defaults to float32 rounding; XLA's CPU backend does
  not enable fast math either way). ``PPL_TEST_XLA_OPT=1`` keeps XLA's defaults (CI runs
  every step, the slow one included, with the fast-compile flags).
- JAX's persistent compilation cache in ``.cache/jax`` at the repository root (or
  ``PPL_TEST_JAX_CACHE``; ``0`` turns it off), for compilations of 1 s or more
  (``jax_persistent_cache_min_compile_time_secs``): a second run of the suite reads
  those executables instead of compiling them. CI may keep the folder between runs.
  Writing every compilation (a threshold of 0) cost a cold run about 40 s of CPU
  (636 s against 597 s with the cache off, 923 tests).
  Tests that need a compilation of their own use the ``fresh_compilation`` fixture.
"""

import contextlib
import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
if os.environ.get("PPL_TEST_XLA_OPT", "0") in ("", "0"):
    _flags = os.environ.get("XLA_FLAGS", "")
    _extra = [f for f in _FAST_COMPILE if f.split("=")[0] not in _flags]
    os.environ["XLA_FLAGS"] = " ".join([_flags, *_extra]).strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402

CACHE_DIR = os.environ.get("PPL_TEST_JAX_CACHE", str(Path(__file__).parents[1] / ".cache" / "jax"))
if CACHE_DIR != "0":
    jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


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
