"""Mesh from config, parameter shardings from path-regex rules, batch sharding.

Rules are data: a list of `(regex, spec)` where spec is a tuple with one entry per
array dimension (a mesh axis name, a tuple of names, or None), as in
`jax.sharding.PartitionSpec`. The first rule whose regex fully matches the
'/'-joined parameter path wins; the regex may also match a suffix of the path, so
the same rules shard optimizer states (`.../mu/user_encoder/...`). A dimension not
divisible by its mesh axes, or a spec longer than the array rank, falls back to
replication for that dimension/array. Unmatched arrays are replicated.
"""

from collections.abc import Sequence
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ('data', 'fsdp')  # Batches are split over these mesh axes.


def make_mesh(mesh_config: Sequence[tuple[str, int]], devices=None) -> Mesh:
  """Builds a Mesh from `[(axis, size), ...]`; one size may be -1 (the rest)."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  names = [n for n, _ in mesh_config]
  sizes = [int(s) for _, s in mesh_config]
  if sizes.count(-1) > 1:
    raise ValueError(f'At most one mesh axis may be -1: {mesh_config}')
  known = int(np.prod([s for s in sizes if s != -1]))
  sizes = [devices.size // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != devices.size:
    raise ValueError(f'Mesh {dict(zip(names, sizes))} needs {np.prod(sizes)} devices, '
                     f'have {devices.size}.')
  return Mesh(devices.reshape(sizes), tuple(names))


def path_str(path) -> str:
  """'/'-joined names of a jax tree path."""
  parts = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(parts)


def _axis_size(mesh: Mesh, axes) -> int:
  axes = axes if isinstance(axes, (tuple, list)) else (axes,)
  return int(np.prod([mesh.shape[a] for a in axes if a is not None]))


def spec_for(path: str, shape: tuple[int, ...], rules, mesh: Mesh) -> P:
  """PartitionSpec of one array from the first matching rule."""
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
