"""Per-feature vocabularies: 0 = padding, 1 = out-of-vocabulary, values from 2 on."""

from __future__ import annotations

import collections
from typing import Iterable, Sequence

PAD_ID = 0
OOV_ID = 1
NUM_RESERVED = 2  # Ids below this (pad, OOV) are no value: never a prediction candidate.
PAD_VALUE = '<pad>'
OOV_VALUE = '<oov>'

# Ratings are half stars in (0, 5]: a closed set, so the vocabulary is fixed rather
# than learned (integer-star datasets use 5 of the 10 buckets).
RATING_VALUES = tuple(f'{x / 2:.1f}' for x in range(1, 11))


class Vocab:
  """A string <-> id map with reserved padding and OOV ids."""

  def __init__(self, values: Sequence[str]):
    self._values = list(values)
    self._ids = {v: i + 2 for i, v in enumerate(self._values)}
    if len(self._ids) != len(self._values):
      raise ValueError('Vocab values must be unique.')

  @classmethod
  def from_counts(cls, counts: collections.Counter, min_count: int = 1) -> 'Vocab':
    """Most frequent first, ties by value, so ids are deterministic."""
    kept = [(-n, v) for v, n in counts.items() if n >= min_count]
    return cls([v for _, v in sorted(kept)])

  @property
  def size(self) -> int:
    """Number of ids including padding and OOV (the embedding table size)."""
    return len(self._values) + 2

  @property
  def values(self) -> list[str]:
    """The real values in id order (id = index + 2)."""
    return list(self._values)

  def id(self, value: str) -> int:
    """Id of `value`, OOV_ID when it was not seen in training data."""
    return self._ids.get(value, OOV_ID)

  def ids(self, values: Iterable[str]) -> list[int]:
    return [self._ids.get(v, OOV_ID) for v in values]

  def value(self, id_: int) -> str:
    """Value of `id_` ('<pad>' for 0, '<oov>' for 1)."""
    if id_ == PAD_ID:
      return PAD_VALUE
    if id_ == OOV_ID:
      return OOV_VALUE
    return self._values[id_ - 2]

  def __len__(self) -> int:
    return self.size

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocab) and self._values == other._values

  def __repr__(self) -> str:
    return f'Vocab(size={self.size}, first={self._values[:5]})'


def rating_bucket(stars: float | None) -> str:
  """Half-star bucket of a rating ('0.5' .. '5.0'); '' (-> OOV) when missing."""
  if stars is None:
    return ''
  half = min(max(round(stars * 2), 1), 10)
  return f'{half / 2:.1f}'
