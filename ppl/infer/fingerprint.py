"""The fingerprint of a training run: what produced a state, stored with its checkpoints.

A fingerprint maps a few names to plain strings (no floats computed on a device, so it is
the same on every machine):

- ``model``: the sites of the guide and the model as ``SVI.init`` ran them (type, name,
  distribution, batch and event shapes, observed or not; params with their shapes and
  constraints; plates with their sizes);
- ``optimizer``: the optimizer's class and the tree structure of its state (e.g. Adam's
  ``ScaleByAdamState``);
- ``mutable``: the tree structure of the mutable state (running baselines, snapshots);
- ``loss``: the loss, e.g. ``ppl.Objective(elbo(num_particles=1))``;
- ``data``: the dtype and shape of every argument of the model and guide, and one SHA-256
  over their bytes (other arguments by value or type);
- ``key``: the random key the run started from.

:func:`differences` compares two fingerprints field by field.
"""

from __future__ import annotations

import hashlib
import re

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.primitives import Messenger

FIELDS = ("model", "optimizer", "mutable", "loss", "data", "key")
_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+")


class record_sites(Messenger):
    """Describe every site that passes (as ``SVI.init`` runs the guide and the model)."""

    def __init__(self, fn=None):
        self.lines: list[str] = []
        super().__init__(fn)

    def postprocess_message(self, msg):
        line = _site_line(msg)
        if line is not None:
            self.lines.append(line)


def _site_line(msg) -> str | None:
    kind, name = msg["type"], msg.get("name")
    if kind == "sample":
        fn = msg["fn"]
        base = fn
        while hasattr(base, "base_dist"):
            base = base.base_dist
        obs = " observed" if msg.get("is_observed") else ""
        kind = type(fn).__name__ + (f"({type(base).__name__})" if base is not fn else "")
        return (
            f"sample {name}: {kind} "
            f"batch {tuple(fn.batch_shape)} event {tuple(fn.event_shape)}{obs}"
        )
    if kind == "param":
        constraint = msg["kwargs"].get("constraint")
        c = type(constraint).__name__ if constraint is not None else "real"
        return f"param {name}: shape {tuple(jnp.shape(msg['value']))} constraint {c}"
    if kind == "plate":
        size, subsample = msg["args"]
        return f"plate {name}: size {size} subsample {subsample}"
    if kind in ("mutable", "deterministic"):
        return f"{kind} {name}: shape {_shape(msg['value'])}"
    return None


def _shape(x):
    return [tuple(jnp.shape(v)) for v in jax.tree.leaves(x)]


def structure(tree) -> str:
    """The tree structure of ``tree`` (node types, keys, field names), without addresses."""
    return _ADDRESS.sub("", str(jax.tree.structure(tree)))


def describe_data(tree) -> str:
    """Dtype and shape of every array of ``tree`` (other leaves by value or type), then
    one SHA-256 over the arrays' bytes."""
    digest, lines = hashlib.sha256(), []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        where = jax.tree_util.keystr(path)
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            if isinstance(leaf, jax.core.Tracer):
                lines.append(f"{where}: traced {leaf.dtype}{list(leaf.shape)}")
                continue
            array = np.asarray(leaf)
            if jnp.issubdtype(array.dtype, jax.dtypes.prng_key):
                array = np.asarray(jax.random.key_data(leaf))
            lines.append(f"{where}: {array.dtype}{list(array.shape)}")
            digest.update(f"{where}|{array.dtype}|{array.shape}|".encode())
            digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        elif isinstance(leaf, (bool, int, float, complex, str, bytes)) or leaf is None:
            lines.append(f"{where}: {leaf!r}")
            digest.update(f"{where}|{leaf!r}|".encode())
        else:
            name = getattr(leaf, "__qualname__", type(leaf).__qualname__)
            lines.append(f"{where}: {_ADDRESS.sub('', name)}")
    lines.append(f"sha256 {digest.hexdigest()}")
    return "\n".join(lines)


def describe_key(key) -> str:
    """The random key as hex (its implementation named for typed keys), or the int seed."""
    if isinstance(key, (int, np.integer)):
        return f"seed {int(key)}"
    if jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(key))
        return f"{impl} {np.asarray(jax.random.key_data(key)).tobytes().hex()}"
    return f"raw {np.asarray(key).dtype} {np.asarray(key).tobytes().hex()}"


def svi_fingerprint(svi, rng_key, args, kwargs, state, sites: list[str]) -> dict[str, str]:
    """The fingerprint of an SVI run started by ``svi.init(rng_key, *args, **kwargs)`` (which
    gave ``state`` and, recorded by :class:`record_sites`, ``sites``)."""
    optim_state = getattr(state, "optim_state", None)
    loss = svi.loss
    return {
        "model": "\n".join(sites),
        "optimizer": f"{type(svi.optim).__qualname__}: {structure(optim_state)}",
        "mutable": structure(getattr(state, "mutable_state", None)),
        "loss": _ADDRESS.sub("", repr(loss)),
        "data": describe_data((args, {**kwargs, **getattr(svi, "static_kwargs", {})})),
        "key": describe_key(rng_key),
    }


def differences(saved: dict, current: dict, allowed=frozenset()) -> list[str]:
    """One line per field of ``current`` that ``saved`` records differently (or not at
    all), except those in ``allowed``: the field and the first differing line of each."""
    out = []
    for name, now in current.items():
        if name in allowed:
            continue
        before = saved.get(name)
        if before is None:
            out.append(f"{name}: not recorded in the checkpoint")
        elif before != now:
            out.append(f"{name}: {_first_difference(before, now)}")
    return out


def _first_difference(before: str, now: str) -> str:
    a, b = before.split("\n"), now.split("\n")
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else "(nothing)"
        y = b[i] if i < len(b) else "(nothing)"
        if x != y:
            return f"saved {_clip(x)!r}, now {_clip(y)!r}"
    return "differs"


def _clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
