"""Timelines, windows, splits and vocabularies built from a reader's RawData.

Protocol (default, config-selectable through seq_len / stride / min_events):
- a user's timeline is their events sorted by timestamp (stable: ties keep the
  order of the source file);
- users with fewer than `min_events` (default seq_len + 2) events are dropped and
  counted under 'users_too_short';
- a window is `seq_len` history events plus the next event (the target). Windows
  are anchored at the END of the timeline and step back by `stride`: targets
  n-1, n-1-stride, n-1-2*stride, ... down to index seq_len;
- the last window (target n-1) is test, the one before it (target n-1-stride)
  validation, all earlier ones train. A user with exactly seq_len + 2 events thus
  gives a test and a validation window and no training window;
- vocabularies count only events inside training windows (history or target), so
  validation/test targets the training data never saw map to OOV.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from data_pipelines import _io
from data_pipelines._raw import RawData
from data_pipelines._vocab import RATING_VALUES, Vocab, rating_bucket

SPLITS = ('train', 'validation', 'test')
FEATURES = ('item', 'genre', 'rating')  # Categorical features every dataset has.
# Columns of a stored timeline: catalogue index of the item, the three feature ids,
# the timestamp in seconds.
COLUMNS = ('item_index', 'item', 'genre', 'rating', 'timestamp')


@dataclasses.dataclass
class Timeline:
  """One user's events sorted by time.

  Attributes:
    user: raw user id.
    table: int64[n, len(COLUMNS)] (see COLUMNS).
    texts: n review texts ('' where none).
  """

  user: str
  table: np.ndarray
  texts: list[str]


@dataclasses.dataclass
class Built:
  """Everything `build` derives from RawData (what the cache stores)."""

  timelines: list[Timeline]
  vocabs: dict[str, Vocab]
  items: list[tuple[str, str, tuple[str, ...]]]  # (raw id, name, genres) by index.
  windows: dict[str, np.ndarray]  # split -> int32[N, 3]: (user, target, has_text)


def _window_targets(n: int, seq_len: int, stride: int) -> list[int]:
  """Target indices, last first: n-1, n-1-stride, ... (all >= seq_len)."""
  return list(range(n - 1, seq_len - 1, -stride))


def build(raw: RawData, log: _io.ReadLog, seq_len: int, stride: int,
          min_events: int | None = None, min_count: int = 1) -> Built:
  """Turns raw events into timelines, windows per split and vocabularies.

  Args:
    raw: reader output.
    log: counters ('events_with_unknown_item', 'users_too_short', ...).
    seq_len: history length U of a window.
    stride: step between consecutive windows of a user.
    min_events: users with fewer events are dropped (default seq_len + 2).
    min_count: an item/genre needs this many training occurrences to get an id.
  """
  if seq_len < 1 or stride < 1:
    raise ValueError(f'seq_len ({seq_len}) and stride ({stride}) must be >= 1.')
  min_events = seq_len + 2 if min_events is None else min_events
  if min_events < seq_len + 1:
    raise ValueError(f'min_events={min_events} < seq_len + 1: no window fits.')

  by_user: dict[str, list[int]] = collections.defaultdict(list)
  for i, e in enumerate(raw.events):
    if e.item not in raw.items:
      log.count('events_with_unknown_item', example=f'user {e.user} item {e.item}')
      continue
    by_user[e.user].append(i)

  kept: list[tuple[str, list[int]]] = []
  for user, idx in by_user.items():
    if len(idx) < min_events:
      log.count('users_too_short')
      log.count('events_of_short_users', len(idx))
      continue
    # Python's sort is stable: equal timestamps keep file order.
    kept.append((user, sorted(idx, key=lambda i: raw.events[i].timestamp)))
  if not kept:
    raise ValueError(f'No user has >= {min_events} events (seq_len={seq_len}); '
                     f'counts: {dict(log.counts)}')

  # Vocabularies from events inside training windows only.
  item_counts, genre_counts = collections.Counter(), collections.Counter()
  windows = {s: [] for s in SPLITS}
  for u, (_, idx) in enumerate(kept):
    targets = _window_targets(len(idx), seq_len, stride)
    for k, t in enumerate(targets):
      split = SPLITS[2 - min(k, 2)]
      windows[split].append((u, t, int(bool(raw.events[idx[t]].text))))
    if len(targets) > 2:
      for i in idx[:targets[2] + 1]:
        item = raw.events[i].item
        item_counts[item] += 1
        genre_counts.update(raw.items[item].genres)
  vocabs = {
      'item': Vocab.from_counts(item_counts, min_count),
      'genre': Vocab.from_counts(genre_counts, min_count),
      'rating': Vocab(RATING_VALUES),
  }

  item_index: dict[str, int] = {}
  items = []
  timelines = []
  for user, idx in kept:
    table = np.zeros((len(idx), len(COLUMNS)), np.int64)
    for row, i in enumerate(idx):
      e = raw.events[i]
      if e.item not in item_index:
        item_index[e.item] = len(items)
        meta = raw.items[e.item]
        items.append((e.item, meta.name, meta.genres))
      table[row] = (item_index[e.item], vocabs['item'].id(e.item),
                    vocabs['genre'].id(raw.items[e.item].genres[0]),
                    vocabs['rating'].id(rating_bucket(e.rating)), e.timestamp)
    timelines.append(Timeline(user, table,
                              [raw.events[i].text for i in idx]))
  arrays = {s: np.asarray(w, np.int32).reshape(-1, 3) for s, w in windows.items()}
  return Built(timelines, vocabs, items, arrays)
