"""The reader output shared by all datasets: raw events and an item catalogue."""

from __future__ import annotations

import dataclasses


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


@dataclasses.dataclass(frozen=True)
class RawEvent:
  """One interaction in file order, before vocabularies exist.

  Attributes:
    user: raw user id string.
    item: raw item id string.
    timestamp: Unix seconds.
    rating: stars in [0.5, 5] (None if the row has none).
    text: review text ('' if none; MovieLens: the user's tags for the movie).
  """

  user: str
  item: str
  timestamp: int
  rating: float | None
  text: str = ''


@dataclasses.dataclass
class RawData:
  """Everything a reader returns.

  Attributes:
    events: interactions in file order (ties in time keep this order).
    items: raw item id -> Item, for every item the item file describes.
    sources: the files read (their hashes go into the cache manifest).
  """

  events: list[RawEvent]
  items: dict[str, Item]
  sources: list[str]


UNKNOWN_GENRE = '(unknown)'  # Genre of items whose metadata gives none.
