"""Readers for the review datasets: Amazon Review (2014, 2018) and Google Local.

Both ship a review file of JSON lines (optionally gzipped) and an optional metadata
file for item names and categories. The Amazon 2014 metadata lines are Python
literals (single quotes), which `_io.iter_records` also accepts.

Category rule (the 'genre' feature):
- Amazon: an item's category path is `categories[0]` (2014) or `category` (2018);
  the item gets ONE genre, the path element at `amazon_category_level` (default 1:
  the level below the store-wide root such as 'Books', which every item of a
  per-category file shares), or the deepest element when the path is shorter.
- Google Local: an item's genres are its `category` list as published (tags such
  as ['Mexican restaurant', 'Restaurant']); the first one is the event's feature.
Items without metadata categories get the genre '(unknown)'.
"""

from __future__ import annotations

import os
from typing import Any

from data_pipelines import _io
from data_pipelines._raw import UNKNOWN_GENRE, Item, RawData, RawEvent


def _resolve(path: str, explicit: str | None, patterns: tuple[str, ...], what: str,
             required: bool) -> str | None:
  """Picks the file: explicit config value, `path` itself if a file, or a glob."""
  if explicit:
    if not os.path.isfile(explicit):
      raise FileNotFoundError(f'{what} file not found: {explicit}')
    return explicit
  if os.path.isfile(path):
    return path if required else None
  if not os.path.isdir(path):
    raise FileNotFoundError(f'Data path not found: {path}')
  return _io.find_file(path, patterns, what, required)


def _get(row: dict[str, Any], key: str, path: str, line_no: int,
         log: _io.ReadLog) -> Any:
  """row[key], or a malformed-row report naming the key (returns None)."""
  value = row.get(key)
  if value is None:
    log.malformed(path, line_no, f'missing key {key!r}')
  return value


def _reviews(path: str, keys: tuple[str, str, str, str, str],
             log: _io.ReadLog) -> list[RawEvent]:
  """Reads review rows; keys = (user, item, rating, time, text) field names."""
  user_k, item_k, rating_k, time_k, text_k = keys
  events = []
  for line_no, row in _io.iter_records(path, log):
    user, item, time = (_get(row, k, path, line_no, log)
                        for k in (user_k, item_k, time_k))
    if user is None or item is None or time is None:
      continue
    rating = row.get(rating_k)
    try:
      seconds = _io.to_seconds(time)
      stars = None if rating is None else float(rating)
    except (TypeError, ValueError):
      log.malformed(path, line_no, f'{time_k}={time!r} / {rating_k}={rating!r} '
                    'not numeric')
      continue
    if stars is not None and not 0 < stars <= 5:
      # Google Local has a few 0-star rows: a missing rating, not an error.
      stars = None
      log.count('ratings_out_of_range', example=f'{path}:{line_no}')
    text = row.get(text_k) or ''
    events.append(RawEvent(str(user), str(item), seconds, stars,
                           ' '.join(str(text).split())))
  return events


def _amazon_genre(row: dict[str, Any], level: int) -> tuple[str, ...]:
  paths = row.get('categories')  # 2014: list of category paths.
  path = paths[0] if paths and isinstance(paths[0], list) else row.get('category')
  path = [p for p in (path or []) if isinstance(p, str) and p.strip()]
  if not path:
    return (UNKNOWN_GENRE,)
  return (path[min(level, len(path) - 1)].strip(),)


_PATTERNS = {
    'amazon': (('reviews_*_5.json.gz', 'reviews_*_5.json', '*_5.json.gz', '*_5.json'),
               ('meta_*.json.gz', 'meta_*.json')),
    'google_local': (('review*.json.gz', 'review*.json'),
                     ('meta*.json.gz', 'meta*.json')),
}


def find_sources(name: str, path: str, reviews_file: str | None = None,
                 meta_file: str | None = None) -> dict[str, str | None]:
  """The review file and optional metadata file of an Amazon / Google Local release.

  Args:
    name: 'amazon' or 'google_local'.
    path: folder holding the files (found by the globs in _PATTERNS), or the
      review file itself (metadata then searched next to it).
    reviews_file, meta_file: explicit files that override the globs.
  """
  review_globs, meta_globs = _PATTERNS[name]
  reviews = _resolve(path, reviews_file, review_globs, f'{name} review', True)
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  meta = _resolve(folder, meta_file, meta_globs, f'{name} metadata', False)
  return {'reviews': reviews, 'meta': meta}


def read_amazon(sources: dict[str, str | None], log: _io.ReadLog,
                category_level: int = 1) -> RawData:
  """Reads an Amazon Review 2014 or 2018 category (5-core review file + metadata).

  Args:
    sources: `find_sources('amazon', ...)`: `reviews_<Cat>_5.json[.gz]` (2014) or
      `<Cat>_5.json[.gz]` (2018), and optionally `meta_<Cat>.json[.gz]`.
    log: counters.
    category_level: which level of the category path is the genre (see module doc).
  """
  reviews, meta = sources['reviews'], sources['meta']
  events = _reviews(reviews, ('reviewerID', 'asin', 'overall', 'unixReviewTime',
                              'reviewText'), log)
  items: dict[str, Item] | None = None
  if meta:
    items = {}
    for _, row in _io.iter_records(meta, log):
      asin = row.get('asin')
      if asin is None or asin in items:  # 2018 meta has duplicate rows.
        continue
      items[asin] = Item(' '.join(str(row.get('title') or asin).split()),
                         _amazon_genre(row, category_level))
  return _finish(events, items, [reviews] + ([meta] if meta else []))


def read_google_local(sources: dict[str, str | None], log: _io.ReadLog) -> RawData:
  """Reads Google Local Reviews (2021): `review-*.json[.gz]` + `meta-*.json[.gz]`."""
  reviews, meta = sources['reviews'], sources['meta']
  events = _reviews(reviews, ('user_id', 'gmap_id', 'rating', 'time', 'text'), log)
  items: dict[str, Item] | None = None
  if meta:
    items = {}
    for _, row in _io.iter_records(meta, log):
      gmap_id = row.get('gmap_id')
      if gmap_id is None or gmap_id in items:
        continue
      cats = tuple(c.strip() for c in (row.get('category') or []) if c and c.strip())
      items[gmap_id] = Item(' '.join(str(row.get('name') or gmap_id).split()),
                            cats or (UNKNOWN_GENRE,))
  return _finish(events, items, [reviews] + ([meta] if meta else []))


def _finish(events: list[RawEvent], items: dict[str, Item] | None,
            sources: list[str]) -> RawData:
  """Without a metadata file every item is named by its id, genre '(unknown)'."""
  if items is None:
    items = {e.item: Item(e.item, (UNKNOWN_GENRE,)) for e in events}
  return RawData(events, items, sources)
