"""Ranking and accuracy metrics over the full item catalogue (jit-friendly).

Rank of the target = number of candidates scoring strictly higher, plus equal
scores at a lower id (a deterministic tie-break that never favours the target).
"""

import jax
import jax.numpy as jnp

Array = jax.Array
NEG = -1e30  # Score of excluded candidates.


def exclusion_mask(seen: Array | None, batch_size: int, num_items: int,
                   num_special: int = 2) -> Array:
  """Candidates to drop: pad/OOV ids, and the items in `seen`.

  Args:
    seen: bool [B, V], True at items the user interacted with before the target
      (their whole past), or None to rank every item.
    batch_size: B; num_items: V.
    num_special: ids below this (0 pad, 1 OOV) are never candidates.

  Returns:
    bool [B, V], True = excluded.
  """
  special = jnp.arange(num_items)[None] < num_special
  excl = jnp.broadcast_to(special, (batch_size, num_items))
  return excl if seen is None else excl | seen


def rank_metrics(scores: Array, target: Array, excluded: Array,
                 ks=(1, 5, 10), ndcg_k: int = 10) -> dict[str, Array]:
  """Per-example Recall@K and NDCG@K.

  Args:
    scores: float [B, V]; target: int32 [B]; excluded: bool [B, V] (the target is
      always kept as a candidate, even if seen).

  Returns:
    name -> float32 [B] (recall@k is 1 if the target ranks in the top k).
  """
  b, v = scores.shape
  ids = jnp.arange(v)[None]
  excluded = excluded & (ids != target[:, None])
  scores = jnp.where(excluded, NEG, scores.astype(jnp.float32))
  t = jnp.take_along_axis(scores, target[:, None], axis=1)
  rank = ((scores > t) | ((scores == t) & (ids < target[:, None]))).sum(-1)
  out = {f'recall@{k}': (rank < k).astype(jnp.float32) for k in ks}
  out[f'ndcg@{ndcg_k}'] = jnp.where(rank < ndcg_k, 1.0 / jnp.log2(rank + 2.0), 0.0)
  return out


def accuracy(logits: Array, labels: Array) -> Array:
  """Per-example top-1 accuracy: float32 [...] for logits [..., V], labels [...]."""
  return (logits.argmax(-1) == labels).astype(jnp.float32)
