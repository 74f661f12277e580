"""Timelines, windows, splits and vocabularies built from a reader's RawData.

Protocol (config-selectable through history_len / stride / min_events / test_events /
valid_events / pad_short):
- a user's timeline is their events sorted by timestamp (stable: ties keep the
  order of the source file);
- a window is up to `history_len` history events plus the next event (the target).
  Without `pad_short` a window needs a full history (target index >= history_len);
  with it, shorter histories are allowed and left-padded by the pipeline;
- the last `test_events` events of a timeline (k) are test targets, one window
  each (target n-1, ..., n-k); the `valid_events` before them are validation
  targets; training windows are anchored at the last remaining event T = n-k-v-1
  and step back by `stride` (targets T, T-stride, ...) down to the first target
  with a history (index history_len, or 1 with pad_short). A model that scores the last
  `stride` positions of each training window thus sees every training event once
  per epoch;
- users with fewer than `min_events` events (default: history_len + k + v, or k + v + 2
  with pad_short) are dropped and counted under 'users_too_short';
- vocabularies count the training part (events before the first validation
  target) of EVERY user, kept or not: two protocols that differ only in which users
  or windows they test on (e.g. all users left-padded vs users with full windows)
  share ids, so one encoder serves both. Validation/test targets the training part
  never saw map to OOV.

Defaults (k = v = 1, stride 1, no padding) give the classic layout: test = the last
window, validation = the one before, train = every earlier full window.
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


def split_targets(n: int, history_len: int, stride: int, test_events: int = 1,
                  valid_events: int = 1, pad_short: bool = False) -> dict[str, list[int]]:
  """Target event indices of each split for a timeline of n events (latest first)."""
  first = 1 if pad_short else history_len  # Smallest target index with a history.
  test = [t for t in range(n - 1, n - 1 - test_events, -1) if t >= first]
  valid = [t for t in range(n - 1 - test_events, n - 1 - test_events - valid_events, -1)
           if t >= first]
  train = list(range(n - 1 - test_events - valid_events, first - 1, -stride))
  return {'train': train, 'validation': valid, 'test': test}


def default_min_events(history_len: int, test_events: int = 1, valid_events: int = 1,
                       pad_short: bool = False) -> int:
  """Fewest events that give every validation and test target its window."""
  return test_events + valid_events + (2 if pad_short else history_len)


def build(raw: RawData, log: _io.ReadLog, history_len: int, stride: int,
          min_events: int | None = None, min_count: int = 1, test_events: int = 1,
          valid_events: int = 1, pad_short: bool = False) -> Built:
  """Turns raw events into timelines, windows per split and vocabularies.

  Args:
    raw: reader output.
    log: counters ('events_with_unknown_item', 'users_too_short', ...).
    history_len: history events U before each target (a window: U + 1 events).
    stride: step between consecutive windows of a user.
    min_events: users with fewer events are dropped (default_min_events()).
    min_count: an item/genre needs this many training occurrences to get an id.
    test_events, valid_events: targets per user held out for test / validation.
    pad_short: allow histories shorter than history_len (left-padded downstream).
  """
  if history_len < 1 or stride < 1 or test_events < 1 or valid_events < 0:
    raise ValueError(f'history_len ({history_len}), stride ({stride}), test_events ({test_events}) '
                     f'must be >= 1 and valid_events ({valid_events}) >= 0.')
  need = default_min_events(history_len, test_events, valid_events, pad_short)
  min_events = need if min_events is None else min_events
  if min_events < need:
    raise ValueError(f'min_events={min_events} < {need}: the test and validation windows '
                     f'of a user that short do not fit (history_len={history_len}, '
                     f'test_events={test_events}, valid_events={valid_events}, '
                     f'pad_short={pad_short}).')

  by_user: dict[str, list[int]] = collections.defaultdict(list)
  for i, e in enumerate(raw.events):
    if e.item not in raw.items:
      log.count('events_with_unknown_item', example=f'user {e.user} item {e.item}')
      continue
    by_user[e.user].append(i)

  # Vocabularies from the training part of every user (kept or not, see above).
  item_counts, genre_counts = collections.Counter(), collections.Counter()
  kept: list[tuple[str, list[int]]] = []
  for user, idx in by_user.items():
    # Python's sort is stable: equal timestamps keep file order.
    idx = sorted(idx, key=lambda i: raw.events[i].timestamp)
    for i in idx[:max(len(idx) - test_events - valid_events, 0)]:
      item = raw.events[i].item
      item_counts[item] += 1
      genre_counts.update(raw.items[item].genres)
    if len(idx) < min_events:
      log.count('users_too_short')
      log.count('events_of_short_users', len(idx))
      continue
    kept.append((user, idx))
  if not kept:
    raise ValueError(f'No user has >= {min_events} events (history_len={history_len}); '
                     f'counts: {dict(log.counts)}')

  windows = {s: [] for s in SPLITS}
  for u, (_, idx) in enumerate(kept):
    targets = split_targets(len(idx), history_len, stride, test_events, valid_events, pad_short)
    for split in SPLITS:
      windows[split].extend((u, t, int(bool(raw.events[idx[t]].text))) for t in targets[split])
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
