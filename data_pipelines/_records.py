"""Byte layout of one stored timeline (one ArrayRecord record per user).

  int32 n, int32 c | int32[n, c] table | int32[n + 1] text offsets | utf-8 texts

A flat layout rather than pickle or np.savez: decoding is two np.frombuffer calls,
which keeps the per-example cost of the Grain pipeline low.
"""

from __future__ import annotations

import numpy as np


def encode(table: np.ndarray, texts: list[str]) -> bytes:
  """Serialises a timeline: table int[n, c] (values must fit int32), n texts."""
  n, c = table.shape
  if len(texts) != n:
    raise ValueError(f'{len(texts)} texts for {n} events.')
  blobs = [t.encode('utf-8') for t in texts]
  offsets = np.zeros(n + 1, np.int32)
  offsets[1:] = np.cumsum([len(b) for b in blobs])
  return b''.join([np.asarray([n, c], np.int32).tobytes(),
                   table.astype(np.int32).tobytes(), offsets.tobytes()] + blobs)


def decode(record: bytes) -> tuple[np.ndarray, np.ndarray, bytes]:
  """Inverse of `encode`.

  Returns:
    table int32[n, c], offsets int32[n + 1] into `blob`, blob (utf-8 texts).
  """
  n, c = np.frombuffer(record, np.int32, 2)
  table = np.frombuffer(record, np.int32, n * c, 8).reshape(n, c)
  start = 8 + 4 * n * c
  offsets = np.frombuffer(record, np.int32, n + 1, start)
  return table, offsets, record[start + 4 * (n + 1):]


def text(offsets: np.ndarray, blob: bytes, i: int) -> str:
  """The i-th text of a decoded timeline."""
  return blob[offsets[i]:offsets[i + 1]].decode('utf-8')
