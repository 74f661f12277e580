"""Readers for the review datasets: Amazon Review (2014, 2018) and Google Local (2018, 2021).

Each release ships a review file of JSON lines (optionally gzipped; the 2014 Amazon
metadata and both Google Local 2018 files hold Python literals instead, which
`_io.iter_records` also reads) and an optional item file. The release is told apart
by the keys of the first review row:

| release | review keys (user, item, rating, time, text) | item file: id, name, categories |
|---|---|---|
| Amazon 2014 / 2018 | reviewerID, asin, overall, unixReviewTime (s), reviewText | meta_*: asin, title, categories (2014: list of paths) / category (2018: a path) |
| Google Local 2018 | gPlusUserId, gPlusPlaceId, rating, unixReviewTime (s), reviewText; categories on the review | places.clean.json: gPlusPlaceId, name |
| Google Local 2021 | user_id, gmap_id, rating, time (ms), text | meta-*: gmap_id, name, category |

Category rule (the 'genre' feature):
- Amazon: an item's category path is `categories[0]` (2014) or `category` (2018);
  the item gets ONE genre, the path element at `amazon_category_level` (default 1:
  the level below the store-wide root such as 'Books', which every item of a
  per-category file shares), or the deepest element when the path is shorter.
- Google Local: an item's genres are its category list as published (tags such
  as ['Mexican restaurant', 'Restaurant']); the first one is the event's feature.
  2018 lists them on each review (the first non-empty list of a place is used).
Items without categories get the genre '(unknown)'. Texts and names are HTML-unescaped
('&amp;' -> '&') with whitespace collapsed; rows without a time are counted, not read.
"""

from __future__ import annotations

import dataclasses
import glob
import html
import os
import re
from typing import Any, Callable

from data_pipelines import _io
from data_pipelines._raw import UNKNOWN_GENRE, EventLog, Item, RawData


@dataclasses.dataclass(frozen=True)
class _Release:
  """The review-file keys of one published release."""

  name: str
  user: str
  item: str
  rating: str
  time: str
  text: str
  categories: str = ''  # Key of a per-review category list (Google Local 2018).


RELEASES = {
    'amazon': (_Release('Amazon 2014/2018', 'reviewerID', 'asin', 'overall',
                        'unixReviewTime', 'reviewText'),),
    'google_local': (
        _Release('Google Local 2021', 'user_id', 'gmap_id', 'rating', 'time', 'text'),
        _Release('Google Local 2018', 'gPlusUserId', 'gPlusPlaceId', 'rating',
                 'unixReviewTime', 'reviewText', categories='categories'),
    ),
}
# File names as published, tried in order; then a folder's only other *.json[.gz].
_REVIEW_GLOBS = {
    'amazon': ('reviews_*_5.json.gz', 'reviews_*_5.json', '*_5.json.gz', '*_5.json'),
    'google_local': ('review-*.json.gz', 'review-*.json', 'reviews.clean.json.gz',
                     'reviews.clean.json'),
}
_META_GLOBS = {
    'amazon': ('meta_*.json.gz', 'meta_*.json'),
    'google_local': ('meta-*.json.gz', 'meta-*.json', 'places.clean.json.gz',
                     'places.clean.json'),
}
_NOT_REVIEWS = ('users.clean.json', 'users.clean.json.gz')  # Google Local 2018 profiles.
_FLAGS = ('data.reviews_file (--config.data.reviews_file=FILE, data_stats --reviews_file)')


def clean_text(value: Any) -> str:
  """HTML entities and tags resolved, whitespace collapsed ('' for None)."""
  if value is None:
    return ''
  text = str(value)
  if '<' in text:
    text = re.sub(r'<[^>]*>', ' ', text)
  return ' '.join(html.unescape(text).split())


def _only_reviews_file(folder: str, name: str) -> str:
  """The folder's single *.json[.gz] that is no item / user file (a renamed release)."""
  found = sorted(set(glob.glob(os.path.join(folder, '*.json')) +
                     glob.glob(os.path.join(folder, '*.json.gz'))))
  skip = {p for g in _META_GLOBS[name] for p in glob.glob(os.path.join(folder, g))}
  found = [p for p in found if p not in skip and os.path.basename(p) not in _NOT_REVIEWS]
  if len(found) == 1:
    return found[0]
  if found:
    raise _io.BadInput(f'Several {name} review files in {folder}: '
                       f'{[os.path.basename(p) for p in found]}; name one with {_FLAGS}.')
  looked = ', '.join(_REVIEW_GLOBS[name] + ('*.json[.gz]',))
  raise _io.MissingInput(f'No {name} review file in {folder} (looked for {looked}); '
                         f'set data.path to the release folder or name the file with {_FLAGS}.')


def find_sources(name: str, path: str, reviews_file: str | None = None,
                 meta_file: str | None = None) -> dict[str, str | None]:
  """The review file and optional item file of an Amazon / Google Local release.

  Args:
    name: 'amazon' or 'google_local'.
    path: folder holding the files (found by their published names, else the
      folder's only *.json[.gz] review file), or the review file itself.
    reviews_file, meta_file: explicit files; they override `path` and the globs.
      Without `meta_file` the item file is looked for next to the review file.
  """
  if reviews_file:
    reviews = _io.check_file(reviews_file, f'{name} reviews (data.reviews_file)')
  elif os.path.isfile(path):
    reviews = path
  elif os.path.isdir(path):
    reviews = (_io.find_file(path, _REVIEW_GLOBS[name], f'{name} review', required=False,
                             flag=_FLAGS) or _only_reviews_file(path, name))
  else:
    raise _io.MissingInput(f'Data path not found: {path}; set data.path (--config.data.path'
                           f' / --data_path) to the {name} folder, or name the review file '
                           f'with {_FLAGS}.')
  if meta_file:
    meta = _io.check_file(meta_file, f'{name} metadata (data.meta_file)')
  else:
    meta = _io.find_file(os.path.dirname(os.path.abspath(reviews)), _META_GLOBS[name],
                         f'{name} metadata', required=False,
                         flag='data.meta_file (--config.data.meta_file, data_stats --meta_file)')
  return {'reviews': reviews, 'meta': meta}


def _release(name: str, row: dict[str, Any], path: str, line_no: int) -> _Release:
  for release in RELEASES[name]:
    if release.user in row or release.item in row:
      return release
  known = '; '.join(f'{r.name}: {r.user}, {r.item}' for r in RELEASES[name])
  raise _io.BadInput(f'{path}:{line_no}: not a {name} review row (keys {sorted(row)[:8]}; '
                     f'expected {known}); check data.name and the file.')


def _read_reviews(name: str, path: str, log: _io.ReadLog,
                  categories: dict[str, tuple[str, ...]]) -> tuple[_Release | None, EventLog]:
  """Streams the review rows into an EventLog; per-review categories go to `categories`."""
  events, release = EventLog(), None
  for line_no, row in _io.iter_records(path, log):
    if release is None:
      release = _release(name, row, path, line_no)
    user, item, time = row.get(release.user), row.get(release.item), row.get(release.time)
    missing = [k for k, v in ((release.user, user), (release.item, item)) if v is None]
    if missing or release.time not in row:
      log.malformed(path, line_no, f'missing key {(missing or [release.time])[0]!r}')
      continue
    if time is None:  # Published rows without a time (Google Local 2018): no place in a timeline.
      log.count('events_without_time', example=f'{path}:{line_no}')
      continue
    rating = row.get(release.rating)
    try:
      seconds = _io.to_seconds(time)
      stars = None if rating is None else float(rating)
    except (TypeError, ValueError):
      log.malformed(path, line_no, f'{release.time}={time!r} / {release.rating}={rating!r} '
                    'not numeric')
      continue
    if stars is not None and not 0 < stars <= 5:
      # Google Local has a few 0-star rows: a missing rating, not an error.
      stars = None
      log.count('ratings_out_of_range', example=f'{path}:{line_no}')
    item = str(item)
    if release.categories and item not in categories:
      cats = _category_list(row.get(release.categories))
      if cats:
        categories[item] = cats
    events.add(str(user), item, seconds, stars, clean_text(row.get(release.text)))
  return release, events


def _category_list(value: Any) -> tuple[str, ...]:
  if not isinstance(value, (list, tuple)):
    return ()
  return tuple(clean_text(c) for c in value if isinstance(c, str) and c.strip())


def _amazon_genre(row: dict[str, Any], level: int) -> tuple[str, ...]:
  paths = row.get('categories')  # 2014: list of category paths.
  path = paths[0] if paths and isinstance(paths[0], list) else row.get('category')
  path = _category_list(path)
  if not path:
    return (UNKNOWN_GENRE,)
  return (path[min(level, len(path) - 1)],)


def _read_items(path: str, log: _io.ReadLog, key: str, name_key: str,
                genres: Callable[[dict[str, Any]], tuple[str, ...]],
                reviews: str) -> dict[str, Item]:
  """Item id -> Item from an item file; the first row of an id wins (2018 repeats rows)."""
  items: dict[str, Item] = {}
  for line_no, row in _io.iter_records(path, log):
    item = row.get(key)
    if item is None:
      if not items:  # The first row already lacks the id: another release's file.
        raise _io.BadInput(
            f'{path}:{line_no}: no {key!r} key, so it is not the item file of the reviews '
            f'in {reviews}; name the matching file with data.meta_file '
            '(--config.data.meta_file, data_stats --meta_file).')
      log.malformed(path, line_no, f'missing key {key!r}')
      continue
    if str(item) not in items:
      items[str(item)] = Item(clean_text(row.get(name_key)) or str(item), genres(row))
  return items


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
  _, events = _read_reviews('amazon', reviews, log, {})
  items = (_read_items(meta, log, 'asin', 'title',
                       lambda row: _amazon_genre(row, category_level), reviews)
           if meta else None)
  return _finish(events, items, [reviews, meta])


def read_google_local(sources: dict[str, str | None], log: _io.ReadLog) -> RawData:
  """Reads Google Local Reviews: 2021 (`review-*` + `meta-*`) or 2018
  (`reviews.clean.json` + `places.clean.json`), plain or gzipped."""
  reviews, meta = sources['reviews'], sources['meta']
  categories: dict[str, tuple[str, ...]] = {}
  release, events = _read_reviews('google_local', reviews, log, categories)
  if release is not None and release.categories:  # 2018: places name, reviews categorise.
    places = (_read_items(meta, log, release.item, 'name', lambda row: (), reviews)
              if meta else {})
    items = {i: Item(places[i].name if i in places else i,
                     categories.get(i, (UNKNOWN_GENRE,))) for i in events.item_ids}
    return RawData(events, items, [f for f in (reviews, meta) if f])
  items = (_read_items(meta, log, 'gmap_id', 'name',
                       lambda row: _category_list(row.get('category')) or (UNKNOWN_GENRE,),
                       reviews) if meta else None)
  return _finish(events, items, [reviews, meta])


def _finish(events: EventLog, items: dict[str, Item] | None,
            sources: list[str | None]) -> RawData:
  """Without an item file every reviewed item is an item named by its id, '(unknown)'."""
  if items is None:
    items = {i: Item(i, (UNKNOWN_GENRE,)) for i in events.item_ids}
  return RawData(events, items, [f for f in sources if f])
