"""Scale out through JAX sharding: particles, data and chains placed on a device mesh.

Nothing here communicates by hand. Arrays are laid out over a
:class:`jax.sharding.Mesh` with :class:`jax.sharding.NamedSharding`
(``jax.device_put`` for inputs, ``jax.lax.with_sharding_constraint`` inside traced
code); XLA's SPMD partitioner splits the work and inserts the collectives (the
all-reduce of a sum over particles or data, the gather of a resampling step).

Without an active :func:`shard` context every function here is the identity and
:func:`ppl.particles` runs exactly as on one device. Example::

    mesh = ppl.sharding.make_mesh()                 # all devices, axis "devices"
    data = ppl.sharding.put(data, mesh)             # leading axis split over devices
    with ppl.sharding.shard(mesh, particles="devices"):
        svi_result = svi.run(key, 1000, data)       # trace inside the context

The context must be active when the program is *traced* (``jax.jit``, ``svi.run``,
``svi.update`` under ``jit``): it decides the layout that is compiled. The mesh is
also installed with :func:`jax.set_mesh`, so a function jitted outside and called
inside the context is traced again rather than served from the cache.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "Config",
    "make_mesh",
    "shard",
    "active",
    "put",
    "replicate",
    "constrain",
    "run_chains",
    "num_collectives",
]

Axis = str | tuple[str, ...] | None


class Config(NamedTuple):
    """The active layout: the ``mesh``, the mesh axis (or axes) that split the particle
    axis of :func:`ppl.particles` (``particles``) and the data axis (``data``); ``None``
    leaves that axis unsplit (replicated)."""

    mesh: Mesh
    particles: Axis
    data: Axis


_CONFIG: contextvars.ContextVar[Config | None] = contextvars.ContextVar(
    "ppl_sharding", default=None
)
# True while the body of a split ppl.particles is traced: nested particles stay local.
_INSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("ppl_sharding_inside", default=False)


def make_mesh(
    num_devices: int | None = None,
    axis_name: str = "devices",
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A one-dimensional mesh over the first ``num_devices`` of ``devices`` (default: all
    of ``jax.devices()``), its single axis named ``axis_name``.

    On many hosts (after ``jax.distributed.initialize()``) ``jax.devices()`` lists every
    device of every process, so the same call builds the global mesh. Example::

        mesh = ppl.sharding.make_mesh(8)   # Mesh('devices': 8)
    """
    devices = list(jax.devices() if devices is None else devices)
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(
                f"ppl.sharding.make_mesh: num_devices={num_devices} but {len(devices)} "
                "devices are available"
            )
        devices = devices[:num_devices]
    return Mesh(np.array(devices), (axis_name,))


def _check_axis(mesh: Mesh, axis: Axis, what: str) -> None:
    names = (axis,) if isinstance(axis, str) else (axis or ())
    for name in names:
        if name not in mesh.axis_names:
            raise ValueError(
                f"ppl.sharding.shard: {what}={axis!r} is not an axis of the mesh "
                f"(axes {mesh.axis_names})"
            )


@contextlib.contextmanager
def shard(mesh: Mesh, particles: Axis = "devices", data: Axis = None) -> Iterator[Config]:
    """Context manager: programs traced inside it split the particle axis of every
    (outermost) :func:`ppl.particles` over the mesh axis ``particles``, and
    :func:`put` / :func:`constrain` split data over the mesh axis ``data``.

    Each device then evaluates its share of the particles (and of the data); the sums
    and means an objective takes over them become XLA all-reduces, and so do the
    gradients. Results equal the one-device results up to the order of floating-point
    reductions. Nested ``ppl.particles`` (inside a split one) run locally on each
    device. Example::

        mesh = ppl.sharding.make_mesh()
        with ppl.sharding.shard(mesh, particles="devices"):
            value = jax.jit(ppl.objectives.iwae(num_particles=64).estimate)(
                key, params, model, guide, data)
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"ppl.sharding.shard needs a jax.sharding.Mesh, got {type(mesh).__name__}")
    _check_axis(mesh, particles, "particles")
    _check_axis(mesh, data, "data")
    config = Config(mesh, particles, data)
    token = _CONFIG.set(config)
    try:
        with jax.set_mesh(mesh):
            yield config
    finally:
        _CONFIG.reset(token)


def active() -> Config | None:
    """The :class:`Config` of the innermost active :func:`shard` context, or ``None``."""
    return _CONFIG.get()


def _leading(mesh: Mesh, axis: Axis, leaf) -> NamedSharding:
    ndim = np.ndim(leaf)
    return NamedSharding(mesh, P(axis, *([None] * (ndim - 1))) if ndim else P())


def _resolve(mesh: Mesh | None, axis: Axis, role: str) -> tuple[Mesh, Axis]:
    """Mesh and axis for ``role`` ("data" or "particles"): explicit ones first, then
    the active context's; an explicit mesh without an axis uses its first axis."""
    config = active()
    if mesh is None:
        if config is None:
            raise ValueError(
                f"ppl.sharding: no mesh given and no active ppl.sharding.shard context ({role})"
            )
        return config.mesh, axis if axis is not None else getattr(config, role)
    if axis is None:
        same = config is not None and mesh is config.mesh
        axis = getattr(config, role) if same else mesh.axis_names[0]
    return mesh, axis


def put(tree: Any, mesh: Mesh | None = None, axis: Axis = None) -> Any:
    """Place every array of ``tree`` on ``mesh`` with its leading (data) axis split over
    the mesh axis ``axis`` (``jax.device_put`` with a ``NamedSharding``); scalars are
    replicated.

    Defaults: the active :func:`shard` context's mesh and ``data`` axis; with an explicit
    ``mesh`` and no ``axis``, the mesh's first axis. The leading axis must be divisible
    by the number of devices along ``axis``. Example::

        batch = ppl.sharding.put(batch, mesh)   # batch.shape[0] % 8 == 0 on 8 devices
    """
    mesh, axis = _resolve(mesh, axis, "data")
    return jax.tree.map(lambda x: jax.device_put(x, _leading(mesh, axis, x)), tree)


def replicate(tree: Any, mesh: Mesh | None = None) -> Any:
    """Place every array of ``tree`` whole on every device of ``mesh`` (default: the
    active context's), e.g. parameters or an optimizer state. Example::

        params = ppl.sharding.replicate(params, mesh)
    """
    mesh, _ = _resolve(mesh, None, "data")
    return jax.device_put(tree, NamedSharding(mesh, P()))


def constrain(tree: Any, axis: Axis | str = "data") -> Any:
    """Inside traced code: ask XLA to split the leading axis of every array of ``tree``
    over a mesh axis of the active :func:`shard` context. ``axis`` is ``"data"`` or
    ``"particles"`` (the context's axis of that role) or a mesh axis name; the identity
    without an active context or when that role is unsplit. Leaves with no axes are
    returned unchanged. Example::

        def model(x):
            x = ppl.sharding.constrain(x)   # per-datum work split over devices
            ...
    """
    config = active()
    if config is None:
        return tree
    name = getattr(config, axis) if axis in ("data", "particles") else axis
    if name is None:
        return tree

    def one(x):
        if np.ndim(x) == 0:
            return x
        return jax.lax.with_sharding_constraint(x, _leading(config.mesh, name, x))

    return jax.tree.map(one, tree)


def _particle_placement() -> Callable | None:
    """Used by :func:`ppl.particles`: ``None`` (nothing to do: no context, an unsplit
    particle axis, or inside a split ``particles``) or ``place(run, keys)`` that splits
    the keys and the output over the particle axis and traces ``run`` marked as inside."""
    config = active()
    if config is None or config.particles is None or _INSIDE.get():
        return None

    def place(run: Callable, keys):
        token = _INSIDE.set(True)
        try:
            out = run(constrain(keys, "particles"))
        finally:
            _INSIDE.reset(token)
        return constrain(out, "particles")

    return place


def run_chains(
    kernel: Any,
    rng_key: jax.Array,
    positions: Any,
    num_steps: int,
    mesh: Mesh | None = None,
    axis: Axis = None,
) -> tuple[Any, Any]:
    """Run one chain of the pure ``kernel`` (a :class:`ppl.mcmc.Kernel`) per row of
    ``positions`` (leading axis = chains) for ``num_steps`` steps, vectorized with
    ``vmap``, the chain axis split over ``axis`` of ``mesh`` (default: the active
    context's mesh and ``particles`` axis; with neither, one device). Returns the final
    states and the per-step infos (leading axes: chains, steps).

    Chain ``c`` uses key ``jax.random.split(rng_key, C)[c]``, so the draws do not depend
    on the number of devices. Example::

        k = ppl.mcmc.random_walk(logdensity, 0.5)
        states, infos = ppl.sharding.run_chains(k, key, jnp.zeros((64, 2)), 1000, mesh)
    """
    num_chains = jax.tree.leaves(positions)[0].shape[0]
    layout = None
    if mesh is not None or active() is not None:
        mesh, axis = _resolve(mesh, axis, "particles")
        if axis is not None:
            layout = NamedSharding(mesh, P(axis))

    def place(x):
        if layout is None:
            return x
        spec = P(layout.spec[0], *([None] * (np.ndim(x) - 1)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(layout.mesh, spec))

    def chain(key, position):
        def body(state, k):
            return kernel.step(k, state)

        return jax.lax.scan(body, kernel.init(position), jax.random.split(key, num_steps))

    @jax.jit
    def run(rng_key, positions):
        keys = place(jax.random.split(rng_key, num_chains))
        states, infos = jax.vmap(chain)(keys, jax.tree.map(place, positions))
        return jax.tree.map(place, (states, infos))

    return run(rng_key, positions)


def num_collectives(hlo_text: str) -> dict[str, int]:
    """Count the cross-device collectives in compiled HLO text (``compiled.as_text()``):
    all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute. Example::

        text = jax.jit(f).lower(*args).compile().as_text()
        ppl.sharding.num_collectives(text)   # {'all-reduce': 3, ...}
    """
    ops = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
    counts = dict.fromkeys(ops, 0)
    for line in hlo_text.splitlines():
        if "=" not in line:
            continue
        rhs = line.split("=", 1)[1]
        for op in ops:
            if f" {op}(" in rhs or f" {op}-start(" in rhs:
                counts[op] += 1
    return counts
