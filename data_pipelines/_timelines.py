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
  """Everything `build` derives from RawData (what the cache stores).

  The kept users' events are held as columns sorted by (user, time); `timeline(u)`
  cuts one user's table out of them, so no per-user copy exists all at once.
  """

  users: list[str]  # Raw id of each kept user, by record index.
  starts: np.ndarray  # int64[U + 1]: user u's events are rows starts[u]:starts[u + 1].
  columns: np.ndarray  # int32[N, len(COLUMNS) - 1]: every column but the timestamp.
  timestamps: np.ndarray  # int64[N]
  text_ids: np.ndarray  # int32[N]: index into text_pool (-1 = its last entry, '').
  text_pool: list[str]
  vocabs: dict[str, Vocab]
  items: list[tuple[str, str, tuple[str, ...]]]  # (raw id, name, genres) by index.
  windows: dict[str, np.ndarray]  # split -> int32[N, 3]: (user, target, has_text)

  @property
  def num_events(self) -> int:
    return int(self.starts[-1])

  def timeline(self, u: int) -> Timeline:
    a, b = self.starts[u], self.starts[u + 1]
    table = np.concatenate([self.columns[a:b], self.timestamps[a:b, None]], axis=1)
    pool = self.text_pool
    return Timeline(self.users[u], table, [pool[i] for i in self.text_ids[a:b].tolist()])


def split_targets(n: int, history_len: int, stride: int, test_events: int = 1,
                  valid_events: int = 1, pad_short: bool = False) -> dict[str, list[int]]:
  """Target event indices of each split for a timeline of n events (latest first)."""
  first = 1 if pad_short else history_len  # Smallest target index with a history.
  test = [t for t in range(n - 1, n - 1 - test_events, -1) if t >= first]
  valid = [t for t in range(n - 1 - test_events, n - 1 - test_events - valid_events, -1)
           if t >= first]
  train = list(range(n - 1 - test_events - valid_events, first - 1, -stride))
  return {'train': train, 'validation': valid, 'test': test}


def split_windows(lengths: np.ndarray, history_len: int, stride: int, test_events: int = 1,
                  valid_events: int = 1, pad_short: bool = False) -> dict[str, np.ndarray]:
  """`split_targets` of every user at once: split -> int32[N, 3] rows (user, target, 0),
  user-major, each user's targets latest first (the order `split_targets` lists them)."""
  lengths = np.asarray(lengths, np.int64)
  users = np.arange(len(lengths))
  first = 1 if pad_short else history_len

  def rows(user, target):
    keep = target >= first
    return np.stack([user[keep], target[keep], np.zeros(keep.sum(), np.int64)],
                    axis=1).astype(np.int32)

  def latest(k, skip):  # Targets n-1-skip, ..., n-k-skip of each user, user-major.
    j = np.tile(np.arange(k), len(lengths))
    user = np.repeat(users, k)
    return rows(user, lengths[user] - 1 - skip - j)

  last = lengths - 1 - test_events - valid_events  # Latest training target.
  count = np.where(last >= first, (last - first) // stride + 1, 0)
  user = np.repeat(users, count)
  step = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
  return {'train': rows(user, last[user] - stride * step),
          'validation': latest(valid_events, test_events), 'test': latest(test_events, 0)}


def default_min_events(history_len: int, test_events: int = 1, valid_events: int = 1,
                       pad_short: bool = False) -> int:
  """Fewest events that give every validation and test target its window."""
  return test_events + valid_events + (2 if pad_short else history_len)


def _dedup_and_sort(raw: RawData, log: _io.ReadLog) -> np.ndarray:
  """Indices of the events to keep, sorted by (user, time, file order).

  Dropped and counted: events of items absent from `raw.items`, and repeats of an
  earlier event with the same user, item and time (Amazon 2018 has such duplicates).
  Users are ordered by their first kept event in the file.
  """
  cols = raw.events.columns()
  known = np.array([i in raw.items for i in raw.events.item_ids], bool)
  unknown = np.flatnonzero(~known[cols['item']]) if len(cols['item']) else []
  for i in unknown[:5]:
    log.count('events_with_unknown_item', 0, example=f'user {raw.events.user_ids[cols["user"][i]]}'
              f' item {raw.events.item_ids[cols["item"][i]]}')
  if len(unknown):
    log.count('events_with_unknown_item', len(unknown))
  idx = np.flatnonzero(known[cols['item']]) if len(cols['item']) else np.zeros(0, np.int64)
  user, item, time = cols['user'][idx], cols['item'][idx], cols['timestamp'][idx]
  # Equal (user, item, time): the first in file order stays (lexsort is stable).
  order = np.lexsort((item, time, user))
  same = ((user[order[1:]] == user[order[:-1]]) & (item[order[1:]] == item[order[:-1]])
          & (time[order[1:]] == time[order[:-1]]))
  if same.any():
    log.count('duplicate_events', int(same.sum()))
    keep = np.ones(len(idx), bool)
    keep[order[1:][same]] = False
    idx, user, time = idx[keep], user[keep], time[keep]
  firsts = np.unique(user, return_index=True)[1]  # First kept event of each user id.
  rank = np.empty(len(raw.events.user_ids), np.int64)
  rank[user[np.sort(firsts)]] = np.arange(len(firsts))
  return idx[np.lexsort((time, rank[user]))]


def _vocabularies(raw: RawData, train_items: np.ndarray, min_count: int) -> dict[str, Vocab]:
  """Item and genre vocabularies counted over the training events' interned items."""
  counts = np.bincount(train_items, minlength=len(raw.events.item_ids))
  item_counts, genre_counts = collections.Counter(), collections.Counter()
  for i in np.flatnonzero(counts):
    raw_id, n = raw.events.item_ids[i], int(counts[i])
    item_counts[raw_id] = n
    for g in raw.items[raw_id].genres:
      genre_counts[g] += n
  return {
      'item': Vocab.from_counts(item_counts, min_count),
      'genre': Vocab.from_counts(genre_counts, min_count),
      'rating': Vocab(RATING_VALUES),
  }


def _feature_columns(raw: RawData, vocabs: dict[str, Vocab], item: np.ndarray,
                     ratings: np.ndarray) -> tuple[list, np.ndarray]:
  """The catalogue (items in order of first appearance in `item`, the kept events'
  interned items in timeline order) and int32[N, 4] (item_index, item, genre, rating)."""
  uniq, first = np.unique(item, return_index=True)
  catalogue = uniq[np.argsort(first)]
  index_of = np.zeros(len(raw.events.item_ids), np.int32)
  index_of[catalogue] = np.arange(len(catalogue))
  items = []
  item_id = np.zeros(len(raw.events.item_ids), np.int32)
  genre_id = np.zeros(len(raw.events.item_ids), np.int32)
  for i in catalogue:
    raw_id = raw.events.item_ids[i]
    meta = raw.items[raw_id]
    items.append((raw_id, meta.name, meta.genres))
    item_id[i], genre_id[i] = vocabs['item'].id(raw_id), vocabs['genre'].id(meta.genres[0])
  values, inverse = np.unique(ratings, return_inverse=True)  # NaN (missing) is one value.
  rating_ids = np.array([vocabs['rating'].id(rating_bucket(None if np.isnan(v) else float(v)))
                         for v in values], np.int32)
  return items, np.stack([index_of[item], item_id[item], genre_id[item],
                          rating_ids[inverse.reshape(-1)]], axis=1)


def _runs(user: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Of user-sorted events: (run starts + the end, run lengths, position in its run)."""
  starts = np.flatnonzero(np.diff(user)) + 1 if len(user) else np.zeros(0, np.int64)
  starts = np.concatenate([[0], starts, [len(user)]]).astype(np.int64)
  lengths = np.diff(starts)
  return starts, lengths, np.arange(len(user)) - np.repeat(starts[:-1], lengths)


def build(raw: RawData, log: _io.ReadLog, history_len: int, stride: int,
          min_events: int | None = None, min_count: int = 1, test_events: int = 1,
          valid_events: int = 1, pad_short: bool = False, drop_last_events: int = 0) -> Built:
  """Turns raw events into timelines, windows per split and vocabularies.

  Args:
    raw: reader output.
    log: counters ('events_with_unknown_item', 'duplicate_events',
      'users_too_short', ...).
    history_len: history events U before each target (a window: U + 1 events).
    stride: step between consecutive windows of a user.
    min_events: users with fewer events are dropped (default_min_events()).
    min_count: an item/genre needs this many training occurrences to get an id.
    test_events, valid_events: targets per user held out for test / validation.
    pad_short: allow histories shorter than history_len (left-padded downstream).
    drop_last_events: remove each user's last k events before anything else (model
      selection without the test targets: the held-out events then end one step
      earlier, and the new test target, like the real one, follows an event that no
      training window contains).
  """
  if history_len < 1 or stride < 1 or test_events < 1 or valid_events < 0:
    raise _io.BadInput(f'history_len ({history_len}), stride ({stride}), test_events '
                       f'({test_events}) must be >= 1 and valid_events ({valid_events}) >= 0; '
                       'fix these data config fields.')
  need = default_min_events(history_len, test_events, valid_events, pad_short)
  min_events = need if min_events is None else min_events
  if min_events < need:
    raise _io.BadInput(
        f'data.min_events={min_events} < {need}: the test and validation windows of a user '
        f'that short do not fit (history_len={history_len}, test_events={test_events}, '
        f'valid_events={valid_events}, pad_short={pad_short}); use -1 (the fewest that fit).')

  order = _dedup_and_sort(raw, log)
  cols = raw.events.columns()
  if drop_last_events > 0:
    _, lengths, position = _runs(cols['user'][order])
    keep = position < np.repeat(lengths - drop_last_events, lengths)
    log.count('events_dropped_last', int((~keep).sum()))
    order = order[keep]
  user, item = cols['user'][order], cols['item'][order]
  starts, lengths, position = _runs(user)

  # Vocabularies from the training part of every user (kept or not, see above).
  train = position < np.repeat(np.maximum(lengths - test_events - valid_events, 0), lengths)
  vocabs = _vocabularies(raw, item[train], min_count)

  kept = lengths >= min_events
  if (~kept).any():
    log.count('users_too_short', int((~kept).sum()))
    log.count('events_of_short_users', int(lengths[~kept].sum()))
  if not kept.any():
    raise _io.BadInput(
        f'No user has >= {min_events} events (history_len={history_len}, '
        f'pad_short={pad_short}); counts: {dict(log.counts)}; lower data.history_len, or set '
        'data.pad_short=True to keep short users with left-padded histories.')
  rows = np.repeat(kept, lengths)
  order, user, item = order[rows], user[rows], item[rows]
  kept_lengths = lengths[kept]
  starts = np.concatenate([[0], np.cumsum(kept_lengths)]).astype(np.int64)
  users = [raw.events.user_ids[u] for u in user[starts[:-1]]]
  text = cols['text'][order]

  items, columns = _feature_columns(raw, vocabs, item, cols['rating'][order])
  windows = split_windows(kept_lengths, history_len, stride, test_events, valid_events,
                          pad_short)
  for w in windows.values():  # Column 2: does the target have a text?
    w[:, 2] = text[starts[w[:, 0]] + w[:, 1]] >= 0
  return Built(users, starts, columns, cols['timestamp'][order], text,
               raw.events.text_pool(), vocabs, items, windows)
