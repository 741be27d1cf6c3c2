"""Random-program fuzzing: ppl's estimators against exact answers (issue 9, part 1).

Hypothesis generates small random NumPyro programs (``ppl.validate.fuzz``): chains and
trees of Bernoulli / Categorical sites (in a plate or not) and Normal leaves, random
strategies (reparam / reinforce / reinforce with a constant baseline / enum / mvd /
default), and a random objective (``ppl.expectation`` of a nonlinear function of the
samples, ``elbo()`` or ``iwae(K)`` of a model / guide pair with observations and factors).
Each hypothesis example is one random *structure* instantiated with PROGRAMS_PER_EXAMPLE
independent sets of numbers (parameters, coefficients, data; zeros, hence logits exactly
0, are common); the programs of an example share one compiled estimator. The exact value
and gradient come from enumeration / closed forms in plain JAX; the estimator's mean over
NUM_SAMPLES keys must be within N_SIGMA standard errors of it in every coordinate.

A failure shrinks to a minimal program and prints it as NumPyro source.

Runs:

- CI subset (fixed seed, ``derandomize=True``): ``python -m pytest tests/fuzz``
  (CI_EXAMPLES examples x PROGRAMS_PER_EXAMPLE = 448 programs; hypothesis repeats some
  examples, so 226 distinct programs over 27 distinct structures).
- Long profile (>= 5,000 programs, random seed unless ``PPL_FUZZ_SEED`` is set)::

      PPL_FUZZ_EXAMPLES=5000 python -m pytest tests/fuzz -m slow -k long

  ``PPL_FUZZ_EXAMPLES`` counts programs; the test is skipped when it is unset. Above
  CHUNK_PROGRAMS the run is split into processes of CHUNK_PROGRAMS programs with seeds
  PPL_FUZZ_SEED, PPL_FUZZ_SEED + 1, ... (add ``-s`` to see each chunk's time); the
  per-coordinate threshold is the Bonferroni one for the whole run.

Recorded runs (2 shared, loaded CPU cores), no failure: CI subset 2.5 min; long runs,
generation only (no shrinking needed): seed 11, 4 programs per example, 19 min: 316
examples = 1,264 programs (673 distinct, 127 distinct structures); seed 12, 8 per example,
14 min: 376 examples = 3,008 programs (1,415 distinct, 153 structures); the full long
profile, ``PPL_FUZZ_SEED=2027 PPL_FUZZ_EXAMPLES=5000``, 2026-11-27: 5 processes x 1,000
programs (seeds 2027-2031; 391, 489, 458, 303, 389 s), 5,000 programs at 5.77 SE, all
passed in 34 min. (Before the compiled-program cache was bounded, two single-process
5,000-program runs aborted inside XLA after about 55 min: the process ran out of memory
maps, vm.max_map_count = 65530.)
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, seed, settings

from ppl.validate.fuzz import bonferroni_sigma, check_programs, describe, estimator, programs

KEY = jax.random.PRNGKey(0)
NUM_SAMPLES = 2000
PROGRAMS_PER_EXAMPLE = 8
CI_EXAMPLES = 56  # 448 programs, 226 of them distinct (hypothesis repeats examples)
LONG_PROGRAMS = int(os.environ.get("PPL_FUZZ_EXAMPLES", "0"))
CHUNK_PROGRAMS = 1000  # the long profile runs in processes of at most this many programs
# Each program checks at most MAX_COORDINATES coordinates (its value and one derivative per
# parameter: <= 12 for an expectation, <= 21 for an ELBO / IWAE). Bonferroni over every
# coordinate of every program of a run at a family-wise false-alarm rate of 1e-3 gives the
# per-coordinate two-sided threshold: 5.35 SE for the 448-program subset, 5.77 SE for 5,000
# programs. (A coordinate computed exactly, e.g. under enumeration, passes by the float32
# floor instead.) Never raised to make a failure pass.
MAX_COORDINATES = 25
FAMILY_ALPHA = 1e-3
CI_SIGMA = bonferroni_sigma(CI_EXAMPLES * PROGRAMS_PER_EXAMPLE * MAX_COORDINATES, FAMILY_ALPHA)

SETTINGS = dict(
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


def _check(specs, n_sigma):
    note(describe(specs[0]))
    check_programs(specs, KEY, NUM_SAMPLES, n_sigma=n_sigma)


@pytest.mark.slow  # CI's time-budgeted statistical step (about 2.5 min on 2 cores)
@settings(max_examples=CI_EXAMPLES, derandomize=True, **SETTINGS)
@given(programs(instances=PROGRAMS_PER_EXAMPLE))
def test_fuzz_programs(specs):
    _check(specs, CI_SIGMA)


@pytest.mark.slow
@pytest.mark.skipif(LONG_PROGRAMS == 0, reason="set PPL_FUZZ_EXAMPLES=<programs> to run")
def test_fuzz_programs_long():
    base_seed = int(os.environ.get("PPL_FUZZ_SEED", "20261127"))
    if LONG_PROGRAMS > CHUNK_PROGRAMS:
        _run_in_chunks(base_seed)
        return
    # The threshold covers every program of the whole run (all chunks).
    total = int(os.environ.get("PPL_FUZZ_TOTAL", LONG_PROGRAMS))
    n_sigma = bonferroni_sigma(
        math.ceil(total / PROGRAMS_PER_EXAMPLE) * PROGRAMS_PER_EXAMPLE * MAX_COORDINATES,
        FAMILY_ALPHA,
    )

    @seed(base_seed)
    @settings(max_examples=math.ceil(LONG_PROGRAMS / PROGRAMS_PER_EXAMPLE), **SETTINGS)
    @given(programs(instances=PROGRAMS_PER_EXAMPLE))
    def run(specs):
        try:
            _check(specs, n_sigma)
        finally:
            # Every example compiles a fresh estimator: drop it so that thousands of
            # programs do not pile up compiled executables in one process.
            jax.clear_caches()

    run()


def _run_in_chunks(base_seed):
    """CHUNK_PROGRAMS programs per process, seeds base_seed, base_seed + 1, ...: a crash in
    one process (e.g. XLA aborting, as when the compiled-program cache was unbounded and
    exhausted the memory maps) costs one chunk, and each chunk's time is reported."""
    for i, start in enumerate(range(0, LONG_PROGRAMS, CHUNK_PROGRAMS)):
        n = min(CHUNK_PROGRAMS, LONG_PROGRAMS - start)
        env = dict(
            os.environ,
            PPL_FUZZ_EXAMPLES=str(n),
            PPL_FUZZ_SEED=str(base_seed + i),
            PPL_FUZZ_TOTAL=str(LONG_PROGRAMS),
        )
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", __file__, "-m", "slow", "-k", "fuzz_programs_long"]
            + ["-q", "-p", "no:cacheprovider"],
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, (
            f"chunk {i} (PPL_FUZZ_SEED={base_seed + i}, {n} programs) failed:\n"
            f"{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
        )
        print(
            f"chunk {i}: seed {base_seed + i}, {n} programs passed in "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )


@settings(max_examples=2, derandomize=True, **SETTINGS)
@given(programs(instances=1, max_sites=3))
def test_printed_source_is_the_tested_program(specs):
    """The reproducer a failure prints runs as is and computes what the fuzzer tested."""
    spec = specs[0]
    ns = {}
    exec(describe(spec, num_samples=2), ns)
    run = estimator(spec, 2, 1)
    thetas = jnp.asarray([spec.theta], jnp.float32)
    cs = jnp.asarray([spec.coef or (0.0,)], jnp.float32)
    value, grad = run(jax.random.split(jax.random.PRNGKey(0), 2), thetas, cs)
    np.testing.assert_allclose(ns["value"], value[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ns["grad"], grad[0], rtol=1e-4, atol=1e-5)


def test_compiled_program_cache_is_bounded_and_least_recently_used():
    """Compiled programs hold mapped JIT code: the fuzzer keeps at most MAX_COMPILED."""
    from ppl.validate.fuzz import _Compiled

    cache = _Compiled()
    n = _Compiled.MAX_COMPILED
    for i in range(n):
        cache.store(i, f"program {i}")
    assert cache.lookup(0) == "program 0"  # 0 becomes the most recently used
    cache.store(n, "new")
    assert len(cache) == n
    assert cache.lookup(1) is None  # the least recently used went
    assert cache.lookup(0) == "program 0" and cache.lookup(n) == "new"
