"""Checkpoints of training state: atomic, tamper-evident writes, checked loads, resumable
SVI runs that refuse to resume a different run."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer.svi import SVIRunResult

from ..core.arguments import check_key, count
from . import ckpt_file
from .ckpt_file import CheckpointError, LeafSpec
from .fingerprint import FIELDS, differences, record_sites, svi_fingerprint

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "resumable_run"]


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _plain(tree):
    """Typed PRNG keys (``jax.random.key``) as their raw data; other leaves unchanged."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _restore(tree, like):
    """Loaded numpy arrays as the kinds of leaves of ``like`` (jax arrays, numpy arrays,
    Python scalars, typed keys)."""

    def restore(x, ref):
        if _is_key(ref):
            return jax.random.wrap_key_data(jnp.asarray(x), impl=jax.random.key_impl(ref))
        if isinstance(ref, jax.Array):
            return jnp.asarray(x)
        if isinstance(ref, np.ndarray):
            return np.array(x)
        if isinstance(ref, np.generic):
            return x[()]
        return type(ref)(x.item())

    return jax.tree.map(restore, tree, like)


def _leaves(tree) -> list[tuple[LeafSpec, np.dtype, Any]]:
    """(spec, numpy dtype, leaf) of every array of ``tree`` (typed keys as their data)."""
    out = []
    for path, x in jax.tree_util.tree_flatten_with_path(_plain(tree))[0]:
        where = jax.tree_util.keystr(path)
        if isinstance(x, (jax.Array, np.ndarray, np.generic)):
            dtype = np.dtype(x.dtype)
        elif isinstance(x, (bool, int, float, complex)):
            dtype = np.dtype(jnp.result_type(x))
        else:
            raise TypeError(
                f"checkpoint: leaf {where} is a {type(x).__name__}; a checkpoint holds arrays "
                "and numbers only"
            )
        if not (dtype == np.bool_ or jnp.issubdtype(dtype, jnp.number)):
            raise TypeError(f"checkpoint: leaf {where} has dtype {dtype}, not a numeric array")
        out.append((LeafSpec(where, tuple(int(d) for d in np.shape(x)), str(dtype)), dtype, x))
    return out


def _step(step, who: str) -> int:
    return count(step, "step", who, minimum=0)


def save_checkpoint(path, state: Any, step: int = 0, losses=None, fingerprint=None) -> Path:
    """Write ``state`` (any pytree of arrays: an ``SVIState``, params, ...) to ``path``.

    The write is atomic: the data goes to a temporary file in the same folder, is flushed
    to disk, and then replaces ``path`` in one rename, so an interrupted write never
    replaces a good checkpoint; temporary files of writers killed mid-write are removed
    by the next successful write. The file carries a SHA-256 digest of its header and
    data, so any corruption is a :class:`CheckpointError` at load. ``step`` (an int >= 0)
    and ``losses`` (1-d) are stored alongside, and ``fingerprint`` (a dict of strings:
    what produced the state, as :func:`resumable_run` records it) in the header. A write
    that fails (a full disk, no permission) raises ``OSError`` naming the file and the
    cause.

    Example::

        ppl.save_checkpoint("run.ckpt", svi_state, step=1000)
        state, step, losses = ppl.load_checkpoint("run.ckpt", like=svi.init(key, data))
    """
    path = Path(path)
    step = _step(step, "save_checkpoint")
    losses = np.zeros((0,), np.float32) if losses is None else np.asarray(losses).reshape(-1)
    if str(losses.dtype) not in ckpt_file.LOSS_DTYPES:
        raise TypeError(
            f"save_checkpoint: losses must have one of the dtypes {sorted(ckpt_file.LOSS_DTYPES)},"
            f" got {losses.dtype}"
        )
    fingerprint = {} if fingerprint is None else dict(fingerprint)
    for k, v in fingerprint.items():
        if not (isinstance(k, str) and len(k) <= 64 and isinstance(v, str)):
            raise TypeError(
                "save_checkpoint: fingerprint must map names (at most 64 characters) to strings"
            )
    leaves = _leaves(state)
    arrays = [np.asarray(jax.device_get(x), dtype=dtype) for _, dtype, x in leaves]
    try:
        ckpt_file.write(path, step, [s for s, _, _ in leaves], arrays, losses, fingerprint)
    except OSError as e:
        raise _explained(e, f"cannot write checkpoint {path}") from e
    return path


def _explained(e: OSError, what: str) -> OSError:
    """``e`` (same class and errno) with ``what`` in front of its cause."""
    if e.errno is None:
        return type(e)(f"{what}: {e}")
    return type(e)(e.errno, f"{what}: {e.strerror or e}")


def load_checkpoint(
    path, like: Any, fingerprint=None, allow_mismatch=()
) -> tuple[Any, int, np.ndarray]:
    """(state, step, losses) from ``path``; ``like`` is a state of the expected structure.

    Raises :class:`CheckpointError` when the file is corrupt, truncated or altered (its
    digest does not match), when it holds a different state (naming the first
    mismatching leaf: path, shape, dtype) and, given the ``fingerprint`` of the run that
    is resuming, when the checkpoint was written by a run that differs (naming what
    differs), except in the fields named in ``allow_mismatch`` (``True``: all).
    """
    path = Path(path)
    allowed = _allowed(allow_mismatch)
    expected = _leaves(like)
    with open(path, "rb") as f:
        header = ckpt_file.read_header(f, path)
        if fingerprint is not None:
            _check_fingerprint(path, header.fingerprint, fingerprint, allowed)
        specs = [s for s, _, _ in expected]
        if len(header.leaves) != len(specs):
            raise CheckpointError(
                f"{path} holds {len(header.leaves)} arrays, the expected state has {len(specs)}"
            )
        for got, want in zip(header.leaves, specs, strict=True):
            if got != want:
                raise CheckpointError(
                    f"{path}: leaf {got.path} has shape {got.shape} dtype {got.dtype}; "
                    f"the expected state has {want.path} with shape {want.shape} "
                    f"dtype {want.dtype}"
                )
        arrays, losses = ckpt_file.read_arrays(f, header, [d for _, d, _ in expected], path)
    treedef = jax.tree.structure(_plain(like))
    state = _restore(jax.tree.unflatten(treedef, arrays), like)
    return state, header.step, np.array(losses)


def _allowed(allow_mismatch) -> frozenset:
    if allow_mismatch is True:
        return frozenset(FIELDS)
    if allow_mismatch is False or allow_mismatch is None:
        return frozenset()
    if isinstance(allow_mismatch, str):
        allow_mismatch = (allow_mismatch,)
    if not isinstance(allow_mismatch, Iterable):
        raise TypeError(f"allow_mismatch must be True or names among {FIELDS}")
    names = frozenset(allow_mismatch)
    unknown = sorted(map(str, names - set(FIELDS)))
    if unknown:
        raise ValueError(f"allow_mismatch: unknown fields {unknown}; choose among {FIELDS}")
    return names


def _check_fingerprint(path, saved: dict, current: dict, allowed: frozenset) -> None:
    diffs = differences(saved, current, allowed)
    if diffs:
        names = tuple(d.split(":", 1)[0] for d in diffs)
        raise CheckpointError(
            f"{path} was written by a different run; it differs in "
            + "; ".join(diffs)
            + f". Pass allow_mismatch={names!r} to resume it anyway."
        )


def check_target(path) -> Path:
    """Fail now, before any work, if a checkpoint cannot be written to ``path``: its folder
    must exist and be writable (checked by creating and removing a file in it)."""
    path = Path(path)
    folder = path.parent
    if not folder.exists():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise NotADirectoryError(f"checkpoint folder {folder} is not a folder")
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder; give a file name")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise _explained(e, f"cannot write in checkpoint folder {folder}") from e
    return path


def resumable_run(
    svi,
    rng_key,
    num_steps: int,
    *args,
    checkpoint,
    every: int = 500,
    stable_update: bool = False,
    allow_mismatch=(),
    **kwargs,
) -> SVIRunResult:
    """``svi.run`` that saves its state to ``checkpoint`` every ``every`` steps and, when
    that file exists, resumes from it; a resumed run equals an uninterrupted one bit for
    bit (the SVI state carries the RNG key, optimizer and mutable state, e.g. running
    baselines).

    Each checkpoint records the run's fingerprint (see :mod:`ppl.infer.fingerprint`): the
    sites of model and guide, the optimizer's and the mutable state's structure, the
    loss, the data (dtypes, shapes and a SHA-256 of their bytes) and the key. Resuming
    from a checkpoint whose fingerprint differs is a :class:`CheckpointError` naming what
    differs, unless ``allow_mismatch`` names those fields (e.g. ``("data",)`` to continue
    on new data, ``True`` for any). The checkpoint's folder is checked before any work.

    Example::

        result = ppl.resumable_run(svi, key, 10_000, data, checkpoint="svi.ckpt", every=1000)
    """
    every = count(every, "every", "resumable_run")
    num_steps = count(num_steps, "num_steps", "resumable_run", minimum=0)
    allowed = _allowed(allow_mismatch)
    check_key(rng_key, "resumable_run")
    checkpoint = check_target(checkpoint)
    recorder = record_sites()
    with recorder:
        like = svi.init(rng_key, *args, **kwargs)
    fingerprint = svi_fingerprint(svi, rng_key, args, kwargs, like, recorder.lines)
    state, step, losses = like, 0, np.zeros((0,), np.float32)
    if checkpoint.exists():
        state, step, losses = load_checkpoint(checkpoint, like, fingerprint, allowed)
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
        save_checkpoint(checkpoint, state, step, np.concatenate(losses), fingerprint)
    return SVIRunResult(svi.get_params(state), state, jnp.asarray(np.concatenate(losses)))
