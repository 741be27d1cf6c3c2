"""Checkpoint files are tamper-evident and parsed under bounds: every single-bit flip is
detected, no crafted header gets past ``CheckpointError`` or allocates more than a small
multiple of the file's size, writes fail with their cause, stale temporaries go away."""

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ppl
from ppl.infer import ckpt_file

LIKE = {"b": jnp.zeros(2), "key": jax.random.key(1), "n": jnp.zeros((), jnp.int32)}
STATE = {"b": jnp.array([0.5, -2.0]), "key": jax.random.key(7), "n": jnp.asarray(3, jnp.int32)}


def small_checkpoint(tmp_path):
    path = tmp_path / "small.ckpt"
    fingerprint = {"data": "x: float32[2]\nsha256 00", "key": "seed 0"}
    ppl.save_checkpoint(path, STATE, step=4, losses=[1.5, 0.25], fingerprint=fingerprint)
    return path


def test_every_single_bit_flip_is_detected(tmp_path):
    """Exhaustive: each bit of a small checkpoint (magic, length, header, arrays, losses,
    digest) flipped in turn; every flip is a CheckpointError."""
    path = small_checkpoint(tmp_path)
    good = path.read_bytes()
    state, step, losses = ppl.load_checkpoint(path, LIKE)
    assert step == 4 and losses.tolist() == [1.5, 0.25]
    assert jax.random.key_data(state["key"]).tolist() == jax.random.key_data(STATE["key"]).tolist()
    flipped = tmp_path / "flipped.ckpt"
    missed = []
    for bit in range(8 * len(good)):
        data = bytearray(good)
        data[bit // 8] ^= 1 << (bit % 8)
        flipped.write_bytes(data)
        try:
            ppl.load_checkpoint(flipped, LIKE)
            missed.append(bit)
        except ppl.CheckpointError:
            pass
    assert 8 * len(good) > 2000  # the whole file: header, data and digest
    assert missed == [], f"{len(missed)} of {8 * len(good)} flips loaded silently"


def _file(header_blob: bytes, data: bytes, length: int | None = None) -> bytes:
    """A checkpoint with the given header bytes and data and a valid digest."""
    length = len(header_blob) if length is None else length
    body = ckpt_file.MAGIC + length.to_bytes(8, "little") + header_blob + data
    return body + hashlib.sha256(body).digest()


def _valid_header():
    return {
        "format": 2,
        "byteorder": sys.byteorder,
        "step": 4,
        "leaves": [["['b']", [2], "float32"], ["['key']", [2], "uint32"], ["['n']", [], "int32"]],
        "losses": {"count": 2, "dtype": "float32"},
        "fingerprint": {"key": "seed 0"},
    }


VALID_DATA = (
    np.zeros(2, np.float32).tobytes() + np.zeros(2, np.uint32).tobytes() + bytes(4) + bytes(8)
)

extremes = st.sampled_from(
    [-1, 0, 2**31, 2**40, 2**47, 2**63, 10**40, True, None, 2.5, "x" * 300, "V99999999999"]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)


@st.composite
def crafted(draw):
    """A crafted file: raw header bytes, a random JSON document, or a valid header with one
    field replaced; a declared length that may lie; valid or random data; a valid digest."""
    kind = draw(st.sampled_from(["bytes", "json", "nested"] + ["mutated"] * 5))
    if kind == "bytes":
        blob = draw(st.binary(max_size=400))
    elif kind == "json":
        blob = json.dumps(draw(json_values)).encode()
    elif kind == "nested":
        depth = draw(st.integers(1, 200_000))
        blob = draw(st.sampled_from([b"[", b'{"a":', b"[1,"])) * depth
    else:  # a valid header with some fields replaced
        header = _valid_header()
        leaf = header["leaves"][draw(st.integers(0, 2))]
        targets = {
            "format": (header, "format"),
            "byteorder": (header, "byteorder"),
            "step": (header, "step"),
            "leaves": (header, "leaves"),
            "path": (leaf, 0),
            "shape": (leaf, 1),
            "dim": (leaf[1], 0) if leaf[1] else (leaf, 1),
            "dtype": (leaf, 2),
            "count": (header["losses"], "count"),
            "losses dtype": (header["losses"], "dtype"),
            "fingerprint": (header, "fingerprint"),
        }
        for name in draw(st.lists(st.sampled_from(sorted(targets)), min_size=1, max_size=2)):
            where, key = targets[name]
            where[key] = draw(extremes | st.integers() | json_values)
        blob = json.dumps(header).encode()
    data = draw(st.sampled_from([VALID_DATA, b""]) | st.binary(max_size=64))
    length = None if draw(st.integers(0, 3)) else draw(st.integers(0, 2**64 - 1))
    return _file(blob, data, length)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crafted())
def test_crafted_headers_raise_only_checkpoint_errors_in_bounded_memory(tmp_path_factory, blob):
    """Only CheckpointError, whatever the header says (sizes, counts, nesting, types), and
    peak memory within 1 MiB + 64x the file's size."""
    path = tmp_path_factory.mktemp("fuzz") / "crafted.ckpt"
    path.write_bytes(blob)
    tracemalloc.start()
    try:
        ppl.load_checkpoint(path, LIKE)
    except ppl.CheckpointError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < (1 << 20) + 64 * len(blob), f"peak {peak} bytes for a {len(blob)}-byte file"


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"[" * 100_000, "nested deeper"),  # json would recurse until RecursionError
        (b'{"a":' * 50_000, "nested deeper"),
        (json.dumps({**_valid_header(), "losses": {"count": 10**12, "dtype": "float64"}}), "holds"),
        (json.dumps({**_valid_header(), "leaves": [["['b']", [2**40], "float32"]]}), "holds 1 arr"),
        (json.dumps({**_valid_header(), "step": 2.7}), "step must be a non-negative int"),
        (json.dumps({**_valid_header(), "step": True}), "step must be a non-negative int"),
        ('{"format": 2, "step": 1' + "0" * 5000 + "}", "corrupt checkpoint header"),
    ],
)
def test_hostile_headers(tmp_path, blob, message):
    """What used to allocate terabytes (MemoryError) or recurse (RecursionError)."""
    blob = blob.encode() if isinstance(blob, str) else blob
    path = tmp_path / "hostile.ckpt"
    path.write_bytes(_file(blob, VALID_DATA))
    with pytest.raises(ppl.CheckpointError, match=message):
        ppl.load_checkpoint(path, LIKE)


def test_header_length_beyond_the_file(tmp_path):
    path = tmp_path / "long.ckpt"
    path.write_bytes(_file(json.dumps(_valid_header()).encode(), VALID_DATA, length=2**63))
    with pytest.raises(ppl.CheckpointError, match="length 9223372036854775808"):
        ppl.load_checkpoint(path, LIKE)


def test_format_1_files_are_refused_by_name(tmp_path):
    path = tmp_path / "old.ckpt"
    path.write_bytes(b"PPLCKPT1\n" + bytes(40))
    with pytest.raises(ppl.CheckpointError, match="older ppl .checkpoint format 1"):
        ppl.load_checkpoint(path, LIKE)


def test_steps_are_integers(tmp_path):
    path = tmp_path / "s.ckpt"
    for bad in (2.7, True, -1, "3", None):
        with pytest.raises(ValueError, match="save_checkpoint: step must be an int >= 0"):
            ppl.save_checkpoint(path, STATE, step=bad)
    assert not path.exists()
    ppl.save_checkpoint(path, STATE, step=np.int64(5))
    _, step, _ = ppl.load_checkpoint(path, LIKE)
    assert step == 5 and type(step) is int


def test_numpy_and_python_leaves_roundtrip(tmp_path):
    tree = {
        "a": np.arange(3, dtype=np.float64),
        "f": 1.5,
        "i": 2,
        "flag": True,
        "g": np.float32(0.25),
        "h": jnp.ones(2, jnp.bfloat16),
    }
    ppl.save_checkpoint(tmp_path / "t.ckpt", tree)
    loaded, _, _ = ppl.load_checkpoint(tmp_path / "t.ckpt", tree)
    assert loaded["a"].dtype == np.float64 and loaded["a"].tolist() == [0.0, 1.0, 2.0]
    assert (loaded["f"], loaded["i"], loaded["flag"]) == (1.5, 2, True)
    assert type(loaded["i"]) is int and type(loaded["flag"]) is bool
    assert loaded["g"].dtype == np.float32 and loaded["h"].dtype == jnp.bfloat16
    with pytest.raises(TypeError, match=r"leaf \['s'\] is a str"):
        ppl.save_checkpoint(tmp_path / "t.ckpt", {"s": "text"})


def test_a_failed_write_names_its_cause_and_keeps_the_good_checkpoint(tmp_path):
    """A write past the file-size limit (the kernel's EFBIG, as a full disk gives ENOSPC):
    an OSError naming the checkpoint and the cause; the previous file intact, no temporary."""
    path = tmp_path / "big.ckpt"
    ppl.save_checkpoint(path, {"x": jnp.ones(4)}, step=1)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, hard))
    try:
        with pytest.raises(OSError, match=r"cannot write checkpoint .*big.ckpt: File too large"):
            ppl.save_checkpoint(path, {"x": jnp.ones(1 << 15)}, step=2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert ppl.load_checkpoint(path, {"x": jnp.ones(4)})[1] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["big.ckpt"]


def test_missing_folder_fails_before_any_work(tmp_path):
    """svi=None: the folder is checked before the SVI is touched (no init, no chunk)."""
    missing = tmp_path / "no" / "such" / "run.ckpt"
    with pytest.raises(FileNotFoundError, match=r"checkpoint folder .*no/such does not exist"):
        ppl.resumable_run(None, jax.random.PRNGKey(0), 10, checkpoint=missing)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        ppl.resumable_run(None, jax.random.PRNGKey(0), 10, checkpoint=tmp_path)


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    """Temporaries of dead writers on this host go at the next save; a live writer's stay."""
    path = tmp_path / "run.ckpt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid, soon dead
    dead.wait()
    prefix = f".run.ckpt.{ckpt_file._HOST}-"
    stale = tmp_path / f"{prefix}{dead.pid}.abc123.tmp"
    live = tmp_path / f"{prefix}{os.getppid()}.def456.tmp"
    other = tmp_path / ".run.ckpt.someone-else.tmp"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    ppl.save_checkpoint(path, STATE)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, live.name, other.name])
