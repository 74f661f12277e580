"""Mesh from config, parameter shardings from path-regex rules, batch sharding.

Rules are data: a list of `(regex, spec)` where spec is a tuple with one entry per
array dimension (a mesh axis name, a tuple of names, or None), as in
`jax.sharding.PartitionSpec`. The first rule whose regex fully matches the
'/'-joined parameter path wins; the regex may also match a suffix of the path, so
the same rules shard optimizer states (`.../mu/user_encoder/...`). A dimension not
divisible by its mesh axes, or a spec longer than the array rank, falls back to
replication for that dimension/array. Unmatched arrays are replicated.
"""

from collections.abc import Iterator, Sequence
import contextlib
import contextvars
import math
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ('data', 'fsdp')  # Batches are split over these mesh axes.

# The mesh whose batch axes activations are pinned to while a step is traced
# (`activations_on`); None = no constraint (unsharded calls, tests, decoding).
_ACTIVATION_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar(
    'activation_mesh', default=None)


@contextlib.contextmanager
def activations_on(mesh: Mesh | None) -> Iterator[None]:
  """While tracing under it, `constrain_batch` splits activations over `mesh`'s batch axes."""
  token = _ACTIVATION_MESH.set(mesh)
  try:
    yield
  finally:
    _ACTIVATION_MESH.reset(token)


def constrain_batch(x: jax.Array) -> jax.Array:
  """x [B, ...] with B split over the batch axes of the `activations_on` mesh (else x).

  Why: with FSDP, parameters and batch are both split over 'fsdp', and without a
  constraint XLA's propagation may keep a weight sharded on its model dimension and
  all-gather the *activations* instead, so every device computes the whole global
  batch (measured: a stage-2 step's memory per example grew with the device count,
  docs/scaling.md). Pinning the residual stream keeps each device on its own rows and
  all-gathers the weights, which is what FSDP means.
  """
  mesh = _ACTIVATION_MESH.get()
  if mesh is None:
    return x
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  if not axes or x.shape[0] % _axis_size(mesh, axes):
    return x
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, P(axes, *([None] * (x.ndim - 1)))))


def make_mesh(mesh_config: Sequence[tuple[str, int]], devices=None) -> Mesh:
  """`jax.make_mesh` from `[(axis, size), ...]`; one size may be -1 (the rest)."""
  devices = list(np.ravel(devices if devices is not None else jax.devices()))
  names = tuple(n for n, _ in mesh_config)
  sizes = [int(s) for _, s in mesh_config]
  if sizes.count(-1) > 1:
    raise ValueError(f'At most one mesh axis may be -1: {mesh_config}')
  known = math.prod(s for s in sizes if s != -1)
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  # jax.make_mesh silently drops spare devices; a config that leaves some idle is a mistake.
  if math.prod(sizes) != len(devices):
    raise ValueError(f'Mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, '
                     f'have {len(devices)}.')
  # Auto axes: jax.make_mesh defaults to Explicit, which changes how jit traces shardings.
  return jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def path_str(path) -> str:
  """'/'-joined names of a jax tree path."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


def _axis_size(mesh: Mesh, axes) -> int:
  axes = axes if isinstance(axes, (tuple, list)) else (axes,)
  return int(np.prod([mesh.shape[a] for a in axes if a is not None]))


def spec_for(path: str, shape: tuple[int, ...], rules, mesh: Mesh) -> P:
  """PartitionSpec of one array from the first matching rule."""
  # Hand-written like big_vision's: flax's logical-axis rules need axis names on every param.
  for pattern, spec in rules:
    if re.fullmatch(f'(?:.*/)?(?:{pattern})', path):
      if spec is None or len(spec) > len(shape):
        return P()
      spec = [s if s is None or dim % _axis_size(mesh, s) == 0 else None
              for s, dim in zip(spec, shape)]
      spec = [tuple(s) if isinstance(s, list) else s for s in spec]
      return P(*spec)
  return P()


def tree_shardings(tree: Any, rules, mesh: Mesh) -> Any:
  """NamedSharding for every leaf of an (abstract) tree."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: NamedSharding(mesh, spec_for(path_str(p), tuple(x.shape), rules, mesh)),
      tree)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading dimension split over the data-parallel axes present in the mesh."""
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  return NamedSharding(mesh, P(axes, *([None] * (ndim - 1))))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Puts this host's numpy batch on the mesh, split over the batch axes.

  Each host passes its local slice; `make_array_from_process_local_data` assembles
  the global array (on one host this is a plain sharded device_put).
  """
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
          for k, v in batch.items()}
