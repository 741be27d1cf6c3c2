"""Checks of user arguments shared by ppl's public constructors: counts, random keys, plates."""

from __future__ import annotations

import contextlib
import operator
import traceback

import jax
import jax.numpy as jnp
import numpy as np


def count(value, name: str, who: str, minimum: int = 1) -> int:
    """``value`` as a Python int, if it is an integer >= ``minimum`` (a Python or NumPy
    integer, or a 0-d integer array; never a bool); else a ``ValueError`` naming ``who``
    and ``name``."""
    need = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    try:
        if (
            isinstance(value, (bool, np.bool_))
            or np.dtype(getattr(value, "dtype", int)) == np.bool_
        ):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{who}: {name} must be {need}, got {_short(value)}") from None
    if number < minimum:
        raise ValueError(f"{who}: {name} must be {need}, got {_short(value)}")
    return number


def check_key(key, who: str, seeds: bool = True) -> None:
    """Raise a ``TypeError`` naming ``who`` unless ``key`` is one random key: a typed key
    (``jax.random.key``), raw key data (``jax.random.PRNGKey``, uint32) or, where
    ``seeds`` (as ``numpyro.handlers.seed`` takes them), an int seed."""
    if seeds and isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and shape is not None:
        if jnp.issubdtype(dtype, jax.dtypes.prng_key):
            if shape == ():
                return
            raise TypeError(f"{who}: expected one random key, got a batch of keys of shape {shape}")
        if dtype == jnp.uint32 and shape == _RAW_KEY_SHAPE:
            return
        if seeds and jnp.issubdtype(dtype, jnp.integer) and shape == ():
            return  # an integer seed held in an array
    seed = " or an int seed" if seeds else ""
    raise TypeError(
        f"{who}: rng_key must be a random key (jax.random.key(0) or jax.random.PRNGKey(0))"
        f"{seed}, got {_describe(key)}"
    )


_RAW_KEY_SHAPE = (2,)


def _describe(x) -> str:
    if hasattr(x, "dtype") and hasattr(x, "shape"):
        return f"an array of dtype {x.dtype} and shape {tuple(x.shape)}"
    return f"{type(x).__name__} {_short(x)}"


def _short(x, limit: int = 60) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def named_plate_errors():
    """Turn NumPyro's bare ``AssertionError`` for a plate of size <= 0 into a ``ValueError``
    naming the plate and its size (an empty plate usually means empty data)."""
    try:
        yield
    except AssertionError as err:
        plate = _empty_plate(err)
        if plate is None:
            raise
        name, size = plate
        raise ValueError(
            f"plate '{name}' has size {size}; a plate needs at least one element "
            "(is the data it ranges over empty?)"
        ) from err


def _empty_plate(err: BaseException):
    """(name, size) of the ``numpyro.plate`` whose constructor raised ``err``, else None."""
    from numpyro.primitives import plate

    code = plate.__init__.__code__
    while err is not None:
        for frame, _ in traceback.walk_tb(err.__traceback__):
            if frame.f_code is code:
                return frame.f_locals.get("name"), frame.f_locals.get("size")
        err = err.__cause__ or err.__context__
    return None
