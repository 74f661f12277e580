"""MovieLens readers: CSV releases (ml-latest-small, ml-20m, ml-25m) and the
'::'-separated .dat releases (ml-1m, ml-10m).

Features: item = movieId, genre = the movie's genres (the first listed one is the
event's categorical feature), rating = stars, text = the user's tags on that movie
(tags.csv / tags.dat, joined with ', ' in time order), since MovieLens has no reviews.
"""

from __future__ import annotations

import collections
import csv
import os
from typing import Iterator

from data_pipelines import _io
from data_pipelines._raw import Item, RawData, RawEvent


def _csv_rows(path: str, expected: tuple[str, ...],
              log: _io.ReadLog) -> Iterator[tuple[int, list[str]]]:
  """Yields (line number, fields) of a MovieLens CSV file after checking its header."""
  with _io.open_text(path) as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
      log.count('empty_files', example=path)
      return
    if tuple(h.strip() for h in header[:len(expected)]) != expected:
      raise ValueError(f'{path}:1: expected header {",".join(expected)}, got '
                       f'{",".join(header)}')
    n = 0
    for fields in reader:
      if not fields or fields == ['']:
        continue
      n += 1
      if len(fields) != len(expected):
        log.malformed(path, reader.line_num,
                      f'expected {len(expected)} fields, got {len(fields)}')
        continue
      yield reader.line_num, fields
    if n == 0:  # A header and no rows is an empty file too.
      log.count('empty_files', example=path)


def _dat_rows(path: str, n_fields: int,
              log: _io.ReadLog) -> Iterator[tuple[int, list[str]]]:
  """Yields (line number, fields) of a '::'-separated latin-1 .dat file."""
  n = 0
  with _io.open_text(path, encoding='latin-1') as f:
    for line_no, line in enumerate(f, start=1):
      line = line.rstrip('\r\n')
      if not line:
        continue
      n += 1
      fields = line.split('::')
      if len(fields) != n_fields:
        log.malformed(path, line_no,
                      f'expected {n_fields} "::"-separated fields, got {len(fields)}')
        continue
      yield line_no, fields
  if n == 0:
    log.count('empty_files', example=path)


def _genres(field: str) -> tuple[str, ...]:
  genres = tuple(g.strip() for g in field.split('|') if g.strip())
  return genres or ('(no genres listed)',)


def find_sources(path: str) -> dict[str, str | None]:
  """The files of a MovieLens release folder: ratings, movies and optional tags."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f'MovieLens folder not found: {path}')
  ratings = _io.find_file(path, ('ratings.csv', 'ratings.dat'), 'MovieLens ratings')
  ext = os.path.splitext(ratings)[1]
  movies = _io.find_file(path, ('movies' + ext,), 'MovieLens movies')
  tags = _io.find_file(path, ('tags' + ext,), 'MovieLens tags', required=False)
  return {'ratings': ratings, 'movies': movies, 'tags': tags}


def read_movielens(sources: dict[str, str | None], log: _io.ReadLog) -> RawData:
  """Reads a MovieLens release.

  Args:
    sources: `find_sources(folder)`: ratings.csv + movies.csv (+ tags.csv), or
      ratings.dat + movies.dat (+ tags.dat).
    log: counters for malformed rows and empty files.

  Returns:
    RawData with one event per rating, in file order.
  """
  ratings, movies, tags = sources['ratings'], sources['movies'], sources['tags']
  dat = ratings.endswith('.dat')

  def rows(file: str, header: tuple[str, ...]):
    return _dat_rows(file, len(header), log) if dat else _csv_rows(file, header, log)

  items: dict[str, Item] = {}
  for line_no, (movie, title, genres) in rows(movies, ('movieId', 'title', 'genres')):
    movie = movie.strip()
    if movie in items:
      log.malformed(movies, line_no, f'duplicate movieId {movie}')
      continue
    items[movie] = Item(title.strip(), _genres(genres))

  # Tags become the event's text: all tags a user put on a movie, in time order.
  user_tags: dict[tuple[str, str], list[tuple[int, str]]] = collections.defaultdict(list)
  if tags:
    for line_no, (user, movie, tag, ts) in rows(tags, ('userId', 'movieId', 'tag',
                                                      'timestamp')):
      try:
        user_tags[user.strip(), movie.strip()].append((int(ts), tag.strip()))
      except ValueError:
        log.malformed(tags, line_no, f'timestamp {ts!r} is not an integer')

  events = []
  for line_no, (user, movie, rating, ts) in rows(
      ratings, ('userId', 'movieId', 'rating', 'timestamp')):
    try:
      stars, seconds = float(rating), int(ts)
    except ValueError:
      log.malformed(ratings, line_no, f'rating {rating!r} / timestamp {ts!r} '
                    'not numeric')
      continue
    if not 0 < stars <= 5:
      log.malformed(ratings, line_no, f'rating {stars} outside (0, 5]')
      continue
    key = (user.strip(), movie.strip())
    text = ', '.join(t for _, t in sorted(user_tags.pop(key, [])))
    events.append(RawEvent(key[0], key[1], seconds, stars, text))
  if user_tags:
    log.count('tags_without_rating', sum(map(len, user_tags.values())))
  return RawData(events, items, [f for f in (ratings, movies, tags) if f])
