"""Checkpoints of training state: atomic writes, checked loads, resumable SVI runs."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer.svi import SVIRunResult

_MAGIC = b"PPLCKPT1\n"


class CheckpointError(ValueError):
    """A checkpoint file that is corrupt, truncated or does not match the expected state."""


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _plain(tree):
    """Typed PRNG keys (``jax.random.key``) as their raw data; other leaves unchanged."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _restore_keys(tree, like):
    def restore(x, ref):
        return jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)) if _is_key(ref) else x

    return jax.tree.map(restore, tree, like)


def _fingerprint(tree) -> list[list[str]]:
    """[path, shape, dtype] of every leaf: what a checkpoint must match to be loaded."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
        [jax.tree_util.keystr(path), str(tuple(np.shape(x))), str(jnp.result_type(x))]
        for path, x in leaves
    ]


def save_checkpoint(path, state: Any, step: int = 0, losses=None) -> Path:
    """Write ``state`` (any pytree of arrays: an ``SVIState``, params, ...) to ``path``.

    The write is atomic: the data goes to a temporary file in the same folder, is flushed
    to disk, and then replaces ``path`` in one rename, so an interrupted write never
    replaces a good checkpoint. ``step`` and ``losses`` (1-d) are stored alongside.

    Example::

        ppl.save_checkpoint("run.ckpt", svi_state, step=1000)
        state, step, losses = ppl.load_checkpoint("run.ckpt", like=svi.init(key, data))
    """
    path = Path(path)
    losses = np.zeros((0,), np.float32) if losses is None else np.asarray(losses).reshape(-1)
    header = {
        "step": int(step),
        "num_losses": int(losses.shape[0]),
        "losses_dtype": str(losses.dtype),
        "leaves": _fingerprint(_plain(state)),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            blob = json.dumps(header).encode()
            f.write(_MAGIC + len(blob).to_bytes(8, "little") + blob)
            eqx.tree_serialise_leaves(f, (jax.device_get(_plain(state)), losses))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path, like: Any) -> tuple[Any, int, np.ndarray]:
    """(state, step, losses) from ``path``; ``like`` is a state of the expected structure.

    Raises :class:`CheckpointError` naming the first mismatching leaf (path, shape,
    dtype) when the file holds a different state, and when the file is corrupt or
    truncated.
    """
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(len(_MAGIC)) != _MAGIC:
            raise CheckpointError(f"{path} is not a ppl checkpoint (bad header)")
        try:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt checkpoint header ({e})") from None
        expected = _fingerprint(_plain(like))
        saved = header["leaves"]
        if len(saved) != len(expected):
            raise CheckpointError(
                f"{path} holds {len(saved)} arrays, the expected state has {len(expected)}"
            )
        for got, want in zip(saved, expected, strict=True):
            if got != want:
                raise CheckpointError(
                    f"{path}: leaf {got[0]} has shape {got[1]} dtype {got[2]}; "
                    f"the expected state has {want[0]} with shape {want[1]} dtype {want[2]}"
                )
        losses_like = np.zeros((header["num_losses"],), header["losses_dtype"])
        try:
            state, losses = eqx.tree_deserialise_leaves(f, (_plain(like), losses_like))
        except Exception as e:  # numpy and equinox raise several kinds on bad bytes
            raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({e})") from None
        if f.read(1):
            raise CheckpointError(f"{path}: trailing data after the checkpoint")
    return _restore_keys(state, like), int(header["step"]), np.asarray(losses)


def resumable_run(
    svi,
    rng_key,
    num_steps: int,
    *args,
    checkpoint,
    every: int = 500,
    stable_update: bool = False,
    **kwargs,
) -> SVIRunResult:
    """``svi.run`` that saves its state to ``checkpoint`` every ``every`` steps and, when
    that file exists, resumes from it; a resumed run equals an uninterrupted one bit for
    bit (the SVI state carries the RNG key, optimizer and mutable state, e.g. running
    baselines).

    Example::

        result = ppl.resumable_run(svi, key, 10_000, data, checkpoint="svi.ckpt", every=1000)
    """
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"resumable_run: every must be a positive int, got {every!r}")
    like = svi.init(rng_key, *args, **kwargs)
    state, step, losses = like, 0, np.zeros((0,), np.float32)
    if Path(checkpoint).exists():
        state, step, losses = load_checkpoint(checkpoint, like)
        if step > num_steps:
            raise CheckpointError(
                f"{checkpoint} is at step {step}, past the requested num_steps={num_steps}"
            )
    update = svi.stable_update if stable_update else svi.update

    def body(state, _):
        return update(state, *args, **kwargs)

    chunk = jax.jit(lambda s, n: jax.lax.scan(body, s, None, length=n), static_argnums=1)
    losses = [losses]
    while step < num_steps:
        n = min(every, num_steps - step)
        state, chunk_losses = chunk(state, n)
        step += n
        losses.append(np.asarray(chunk_losses))
        save_checkpoint(checkpoint, state, step, np.concatenate(losses))
    return SVIRunResult(svi.get_params(state), state, jnp.asarray(np.concatenate(losses)))
