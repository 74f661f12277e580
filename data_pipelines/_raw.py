"""The reader output shared by all datasets: a columnar event log and an item catalogue.

Readers stream their files row by row into an `EventLog`, which keeps a few bytes
per event in typed arrays (no Python object per event), so that MovieLens-20M size
releases fit in memory.
"""

from __future__ import annotations

import array
import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Item:
  """An item as its publisher describes it.

  Attributes:
    name: display name (movie title, product title, place name); the item id
      when the metadata has none.
    genres: genre (MovieLens) or category (Amazon, Google Local) strings, in the
      publisher's order; the first one is the event's categorical 'genre' feature.
  """

  name: str
  genres: tuple[str, ...]


class EventLog:
  """Interactions in file order, stored as columns (about 30 bytes per event).

  Raw user and item id strings are interned to dense ints (`user_ids`, `item_ids`
  hold the strings by int); texts are stored once each, events without text share
  index -1.
  """

  def __init__(self):
    self._users: dict[str, int] = {}
    self._items: dict[str, int] = {}
    self.user_ids: list[str] = []
    self.item_ids: list[str] = []
    self.texts: list[str] = []
    self._user = array.array('i')
    self._item = array.array('i')
    self._time = array.array('q')
    self._rating = array.array('f')
    self._text = array.array('i')

  def add(self, user: str, item: str, timestamp: int, rating: float | None,
          text: str = '') -> None:
    """Appends one event (rating None = missing; text '' = none).

    The hot loop of every reader (20M calls for ml-20m): interning is inlined.
    """
    u = self._users.get(user)
    if u is None:
      u = self._users[user] = len(self.user_ids)
      self.user_ids.append(user)
    i = self._items.get(item)
    if i is None:
      i = self._items[item] = len(self.item_ids)
      self.item_ids.append(item)
    self._user.append(u)
    self._item.append(i)
    self._time.append(timestamp)
    self._rating.append(math.nan if rating is None else rating)
    if text:
      self._text.append(len(self.texts))
      self.texts.append(text)
    else:
      self._text.append(-1)

  def _codes(self, table: dict[str, int], ids: list[str], keys: np.ndarray) -> np.ndarray:
    """int32 codes of byte-string ids, new ids interned in order of first appearance."""
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    codes = np.empty(len(uniq), np.int32)
    for j in np.argsort(first):
      key = uniq[j].decode()
      code = table.get(key)
      if code is None:
        code = table[key] = len(ids)
        ids.append(key)
      codes[j] = code
    return codes[inverse.reshape(-1)]

  def add_block(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray,
                ratings: np.ndarray) -> None:
    """Appends events without text whose ids are byte strings (bytes_[n] arrays): the
    vectorised form of `add` for a parsed block of a numeric ratings file."""
    self._user.frombytes(self._codes(self._users, self.user_ids, users).tobytes())
    self._item.frombytes(self._codes(self._items, self.item_ids, items).tobytes())
    self._time.frombytes(timestamps.astype(np.int64).tobytes())
    self._rating.frombytes(ratings.astype(np.float32).tobytes())
    self._text.frombytes(np.full(len(users), -1, np.int32).tobytes())

  def attach_texts(self, texts: dict[tuple[str, str], str]) -> list[tuple[str, str]]:
    """Gives the first event (in file order) of each (user, item) key its text.

    Returns:
      the keys that match no event.
    """
    n_items = max(len(self.item_ids), 1)
    key = np.frombuffer(self._user, np.int32).astype(np.int64) * n_items
    key += np.frombuffer(self._item, np.int32)
    order = np.argsort(key, kind='stable')
    key = key[order]
    want, unmatched = [], []
    for pair, text in texts.items():
      u, i = self._users.get(pair[0]), self._items.get(pair[1])
      if u is None or i is None:
        unmatched.append(pair)
      else:
        want.append((u * n_items + i, pair, text))
    pos = np.searchsorted(key, np.array([w[0] for w in want], np.int64))
    text_col = np.frombuffer(self._text, np.int32)  # Writable: the array's own buffer.
    for (k, pair, text), p in zip(want, pos.tolist()):
      if p < len(key) and key[p] == k:
        text_col[order[p]] = len(self.texts)
        self.texts.append(text)
      else:
        unmatched.append(pair)
    return unmatched

  def __len__(self) -> int:
    return len(self._user)

  def columns(self) -> dict[str, np.ndarray]:
    """user int32, item int32, timestamp int64, rating float32 (NaN = missing),
    text int32 (index into `texts`, -1 = none), one entry per event in file order."""
    return {'user': np.frombuffer(self._user, np.int32),
            'item': np.frombuffer(self._item, np.int32),
            'timestamp': np.frombuffer(self._time, np.int64),
            'rating': np.frombuffer(self._rating, np.float32),
            'text': np.frombuffer(self._text, np.int32)}

  def text_pool(self) -> list[str]:
    """`texts` + [''], so that a `text` column value (-1 = none) indexes it directly."""
    return self.texts + ['']


@dataclasses.dataclass
class RawData:
  """Everything a reader returns.

  Attributes:
    events: interactions in file order (ties in time keep this order).
    items: raw item id -> Item, for every item the item file describes.
    sources: the files read (their hashes go into the cache manifest).
  """

  events: EventLog
  items: dict[str, Item]
  sources: list[str]


UNKNOWN_GENRE = '(unknown)'  # Genre of items whose metadata gives none.
