"""The installed jaxlib computes right what jaxlib 0.10.2 miscompiles on CPU, and ppl
warns at import where an affected jaxlib is installed without the workaround flag."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl import jaxlib_check


def test_matmul_against_a_constant_matrix_is_right():
    """jaxlib 0.10.2: off by up to 3.4 (float32 and float64); 0.9.2, 0.10.0, 0.10.1: 4e-7.
    Fails where the requirements let an affected jaxlib in (or the workaround flag is lost)."""
    z = np.random.default_rng(0).normal(size=(500, 3, 2)).astype(np.float32)
    got = jax.jit(lambda z: (z @ jnp.full((2, 3), 0.3)).sum(-1))(z)
    want = (z.astype(np.float64) @ np.full((2, 3), 0.3)).sum(-1)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5)


def test_affected_version_warns_unless_the_flag_is_set():
    with pytest.warns(RuntimeWarning, match=r"jaxlib 0\.10\.2 .*xla_cpu_experimental_ynn"):
        assert jaxlib_check.warn_if_affected("0.10.2", "--xla_foo=1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not jaxlib_check.warn_if_affected("0.10.2", f"--a=1 {jaxlib_check.WORKAROUND}")
        assert not jaxlib_check.warn_if_affected("0.10.1", "")
