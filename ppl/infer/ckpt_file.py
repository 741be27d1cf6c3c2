"""The checkpoint file: a bounded JSON header, raw arrays, and a SHA-256 digest of both.

Layout::

    MAGIC | header length (8 bytes, little-endian) | header (UTF-8 JSON) | data | digest

``data`` is the bytes of every array (C order, the writer's byte order, recorded in the
header) and ``digest`` the SHA-256 of everything before it. A load verifies the digest
before it parses anything, parses the header under bounds (its size, nesting depth and
number of containers, the length of every field) and reads only arrays whose count,
shapes and dtypes the caller expects, after checking that they fill the file exactly:
no input allocates more than a small multiple of the file's size, and every defect is a
:class:`CheckpointError`. Writes are atomic (a temporary file in the same folder,
fsync, rename), and each successful write removes the temporary files that writers
killed mid-write left behind. No pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

MAGIC = b"PPLCKPT2\n"
_OLD_MAGICS = (b"PPLCKPT1\n",)
FORMAT = 2
_LEN = 8
_DIGEST = 32
_CHUNK = 1 << 20

# bounds on what a header may hold
MAX_HEADER_BYTES = 16 << 20
MAX_DEPTH = 6  # header {} > leaves [] > leaf [] > shape []
MAX_CONTAINERS = 1 << 21
MAX_LEAVES = 1 << 20
MAX_NDIM = 32
MAX_DIM = 1 << 48
MAX_PATH = 4096
MAX_FIELDS = 64
MAX_FIELD = MAX_HEADER_BYTES
MAX_STEP = 1 << 62
LOSS_DTYPES = {
    "float16": jnp.float16,
    "bfloat16": jnp.bfloat16,
    "float32": jnp.float32,
    "float64": jnp.float64,
    "int32": jnp.int32,
    "int64": jnp.int64,
}
_KEYS = {"format", "byteorder", "step", "leaves", "losses", "fingerprint"}


class CheckpointError(ValueError):
    """A checkpoint file that is corrupt, truncated, or does not match the expected state
    or the run resuming from it."""


class LeafSpec(NamedTuple):
    """What one array of a checkpoint is: its tree path, shape and dtype."""

    path: str
    shape: tuple
    dtype: str


class Header(NamedTuple):
    """A parsed, validated header."""

    step: int
    leaves: list  # LeafSpec per array
    num_losses: int
    losses_dtype: str
    fingerprint: dict  # str -> str
    size: int  # the file's size in bytes
    offset: int  # where the data starts


# -- writing ----------------------------------------------------------------------------
def write(path: Path, step: int, leaves: list, arrays: list, losses, fingerprint: dict) -> None:
    """Atomically write a checkpoint; then remove stale temporary files of ``path``."""
    header = {
        "format": FORMAT,
        "byteorder": sys.byteorder,
        "step": step,
        "leaves": [[s.path, list(s.shape), s.dtype] for s in leaves],
        "losses": {"count": int(losses.shape[0]), "dtype": str(losses.dtype)},
        "fingerprint": fingerprint,
    }
    blob = json.dumps(header, separators=(",", ":")).encode()
    if len(blob) > MAX_HEADER_BYTES:
        raise ValueError(f"checkpoint header of {len(blob)} bytes exceeds {MAX_HEADER_BYTES}")
    folder = path.parent
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            digest = hashlib.sha256()

            def put(data):
                digest.update(data)
                f.write(data)

            put(MAGIC + len(blob).to_bytes(_LEN, "little") + blob)
            for a in [*arrays, losses]:
                put(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)
    remove_stale_temporaries(path)


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_prefix(path: Path) -> str:
    """Temporary files name their writer (host tag and pid), so stale ones can be told apart."""
    return f".{path.name}.{_HOST}-{os.getpid()}."


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove temporary files of ``path`` left by writers on this host that no longer run
    (a process killed mid-write); the files of live writers are kept. Returns the removed."""
    pattern = re.compile(re.escape(f".{path.name}.{_HOST}-") + r"(\d+)\.[A-Za-z0-9_]+\.tmp")
    removed = []
    for tmp in path.parent.glob(f".{_glob_escape(path.name)}.*.tmp"):
        match = pattern.fullmatch(tmp.name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- reading ----------------------------------------------------------------------------
def read_header(f, path) -> Header:
    """Verify the digest of the open file ``f`` and return its validated header."""
    size = os.fstat(f.fileno()).st_size
    magic = f.read(len(MAGIC))
    if magic in _OLD_MAGICS:
        raise CheckpointError(
            f"{path} was written by an older ppl (checkpoint format 1, without a digest); "
            "it cannot be verified: start the run again or load it with that version"
        )
    if magic != MAGIC:
        raise CheckpointError(f"{path} is not a ppl checkpoint (bad header)")
    if size < len(MAGIC) + _LEN + _DIGEST:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({size} bytes)")
    _verify_digest(f, path, size)
    f.seek(len(MAGIC))
    length = int.from_bytes(f.read(_LEN), "little")
    room = size - len(MAGIC) - _LEN - _DIGEST
    if length > min(room, MAX_HEADER_BYTES):
        raise CheckpointError(
            f"{path}: corrupt checkpoint header (length {length}, at most "
            f"{min(room, MAX_HEADER_BYTES)} possible)"
        )
    blob = f.read(length)
    return _validate(_parse(blob, path), path, size, len(MAGIC) + _LEN + length)


def _verify_digest(f, path, size: int) -> None:
    f.seek(0)
    digest, left = hashlib.sha256(), size - _DIGEST
    while left > 0:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    stored = f.read(_DIGEST)
    if left != 0 or stored != digest.digest():
        raise CheckpointError(
            f"{path}: corrupt or truncated checkpoint (its SHA-256 digest does not match "
            "its contents)"
        )


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _parse(blob: bytes, path):
    """JSON from ``blob`` after checking its nesting depth and number of containers."""
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: corrupt checkpoint header ({e})") from None
    brackets = _STRINGS.sub(b"", blob).translate(None, _NOT_BRACKETS)
    depth = containers = 0
    for b in brackets:
        if b in b"[{":
            depth += 1
            containers += 1
            if depth > MAX_DEPTH or containers > MAX_CONTAINERS:
                raise CheckpointError(
                    f"{path}: corrupt checkpoint header (nested deeper than {MAX_DEPTH} "
                    f"or more than {MAX_CONTAINERS} containers)"
                )
        else:
            depth -= 1
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: corrupt checkpoint header ({_short(e)})") from None


def _reject_constant(name):
    raise ValueError(f"{name} is not allowed")


def _short(x, limit: int = 80) -> str:
    text = str(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad(path, what: str, value) -> CheckpointError:
    return CheckpointError(f"{path}: corrupt checkpoint header ({what}, got {_short(repr(value))})")


def _int(x, lo: int, hi: int) -> bool:
    return type(x) is int and lo <= x <= hi


def _str(x, limit: int) -> bool:
    return type(x) is str and len(x) <= limit


def _validate(h, path, size: int, offset: int) -> Header:
    if type(h) is not dict or set(h) != _KEYS:
        keys = sorted(h) if type(h) is dict else type(h).__name__
        raise _bad(path, f"expected the fields {sorted(_KEYS)}", keys)
    if h["format"] != FORMAT or type(h["format"]) is not int:
        raise _bad(path, f"format must be {FORMAT}", h["format"])
    if h["byteorder"] != sys.byteorder:
        raise CheckpointError(
            f"{path} was written on a {_short(h['byteorder'])}-endian machine; "
            f"this one is {sys.byteorder}-endian"
        )
    if not _int(h["step"], 0, MAX_STEP):
        raise _bad(path, "step must be a non-negative int", h["step"])
    losses = h["losses"]
    if type(losses) is not dict or set(losses) != {"count", "dtype"}:
        raise _bad(path, "losses must be {count, dtype}", losses)
    if not _int(losses["count"], 0, MAX_DIM):
        raise _bad(path, "the number of losses must be a non-negative int", losses["count"])
    if type(losses["dtype"]) is not str or losses["dtype"] not in LOSS_DTYPES:
        raise _bad(path, f"the losses' dtype must be one of {sorted(LOSS_DTYPES)}", losses["dtype"])
    leaves = h["leaves"]
    if type(leaves) is not list or len(leaves) > MAX_LEAVES:
        raise _bad(path, f"leaves must be a list of at most {MAX_LEAVES}", type(leaves).__name__)
    specs = [_leaf(x, path) for x in leaves]
    fp = h["fingerprint"]
    if type(fp) is not dict or len(fp) > MAX_FIELDS:
        raise _bad(path, "the fingerprint must be a dict of strings", type(fp).__name__)
    for k, v in fp.items():
        if not (_str(k, 64) and _str(v, MAX_FIELD)):
            raise _bad(path, "the fingerprint must map names to strings", k)
    return Header(h["step"], specs, losses["count"], losses["dtype"], fp, size, offset)


def _leaf(x, path) -> LeafSpec:
    ok = (
        type(x) is list
        and len(x) == 3
        and _str(x[0], MAX_PATH)
        and type(x[1]) is list
        and len(x[1]) <= MAX_NDIM
        and all(_int(d, 0, MAX_DIM) for d in x[1])
        and _str(x[2], 32)
    )
    if not ok:
        raise _bad(path, "a leaf must be [path, shape, dtype]", x)
    return LeafSpec(x[0], tuple(x[1]), x[2])


def read_arrays(f, header: Header, dtypes: list, path) -> tuple[list, np.ndarray]:
    """The arrays of ``header.leaves`` (already matched to the expected ones, whose numpy
    ``dtypes`` are given) and the losses, after checking they fill the data exactly."""
    loss_dtype = np.dtype(LOSS_DTYPES[header.losses_dtype])
    sizes = [
        int(np.prod(s.shape, dtype=object)) * np.dtype(d).itemsize
        for s, d in zip(header.leaves, dtypes, strict=True)
    ]
    expected = sum(sizes) + header.num_losses * loss_dtype.itemsize
    present = header.size - header.offset - _DIGEST
    if expected != present:
        raise CheckpointError(
            f"{path}: corrupt checkpoint (the header describes {expected} bytes of arrays, "
            f"the file holds {present})"
        )
    f.seek(header.offset)
    arrays = []
    for spec, dtype, n in zip(header.leaves, dtypes, sizes, strict=True):
        arrays.append(_take(f, n, dtype, spec.shape, path))
    losses = _take(
        f, header.num_losses * loss_dtype.itemsize, loss_dtype, (header.num_losses,), path
    )
    return arrays, losses


def _take(f, n: int, dtype, shape, path) -> np.ndarray:
    data = f.read(n)
    if len(data) != n:
        raise CheckpointError(f"{path}: truncated checkpoint (the file changed while read)")
    return np.frombuffer(data, dtype=dtype).reshape(shape)
