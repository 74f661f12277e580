"""MovieLens readers: CSV releases (ml-latest-small, ml-20m, ml-25m) and the
'::'-separated .dat releases (ml-1m, ml-10m).

Features: item = movieId, genre = the movie's genres (the first listed one is the
event's categorical feature), rating = stars, text = the user's tags on that movie
(tags.csv / tags.dat, joined with ', ' in time order), since MovieLens has no reviews.
The ratings file is streamed (ml-20m: 20M rows) into a columnar `EventLog`.
"""

from __future__ import annotations

import collections
import csv
import os
from typing import Iterator

import numpy as np

from data_pipelines import _io
from data_pipelines._raw import EventLog, Item, RawData


def _csv_rows(path: str, expected: tuple[str, ...],
              log: _io.ReadLog) -> Iterator[tuple[int, list[str]]]:
  """Yields (line number, fields) of a MovieLens CSV file after checking its header."""
  numbered = _io.lines(path, log)
  line_no = 0

  def text():  # csv.reader consumes lines; remember the number of the current one.
    nonlocal line_no
    for line_no, line in numbered:
      yield line

  reader = csv.reader(text())
  header = next(reader, None)
  if header is None:
    log.count('empty_files', example=path)
    return
  if tuple(h.strip().lstrip('\ufeff') for h in header[:len(expected)]) != expected:
    raise _io.BadInput(f'{path}:1: expected the header {",".join(expected)}, got '
                       f'{",".join(header)}; is this the MovieLens file it is named after?')
  n = 0
  for fields in reader:
    if not fields or fields == ['']:
      continue
    n += 1
    if len(fields) != len(expected):
      log.malformed(path, line_no, f'expected {len(expected)} fields, got {len(fields)}')
      continue
    yield line_no, fields
  if n == 0:  # A header and no rows is an empty file too.
    log.count('empty_files', example=path)


def _dat_rows(path: str, n_fields: int,
              log: _io.ReadLog) -> Iterator[tuple[int, list[str]]]:
  """Yields (line number, fields) of a '::'-separated latin-1 .dat file."""
  n = 0
  for line_no, line in _io.lines(path, log, encoding='latin-1'):
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


def find_sources(path: str, ratings_file: str | None = None,
                 movies_file: str | None = None) -> dict[str, str | None]:
  """The files of a MovieLens release: ratings, movies and optional tags.

  Args:
    path: the release folder.
    ratings_file, movies_file: explicit files (data.reviews_file / data.meta_file);
      they override the folder, and the other files are looked for next to them.
  """
  how = 'data.path = the release folder (ratings.csv + movies.csv)'
  if ratings_file:
    ratings = _io.check_file(ratings_file, 'MovieLens ratings (data.reviews_file)')
    path = os.path.dirname(os.path.abspath(ratings))
  else:
    if not os.path.exists(path):
      raise _io.MissingInput(f'MovieLens folder not found: {path}; set data.path '
                             '(--config.data.path / --data_path) to the release folder.')
    if not os.path.isdir(path):
      raise _io.BadInput(f'MovieLens data.path {path} is a file; give the release folder '
                         '(ratings.csv + movies.csv) instead.')
    ratings = _io.find_file(path, ('ratings.csv', 'ratings.dat'), 'MovieLens ratings',
                            flag=how)
  ext = os.path.splitext(ratings)[1]
  movies = (_io.check_file(movies_file, 'MovieLens movies (data.meta_file)') if movies_file
            else _io.find_file(path, ('movies' + ext,), 'MovieLens movies', flag=how))
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

  events = EventLog()
  _read_ratings(ratings, dat, log, events)
  texts = {pair: ', '.join(t for _, t in sorted(tagged)) for pair, tagged in user_tags.items()}
  unmatched = events.attach_texts(texts)
  if unmatched:
    log.count('tags_without_rating', sum(len(user_tags[pair]) for pair in unmatched))
  return RawData(events, items, [f for f in (ratings, movies, tags) if f])


RATINGS_HEADER = ('userId', 'movieId', 'rating', 'timestamp')


def _numeric_block(block: list[bytes], sep: bytes):
  """(users, movies, timestamps, stars) of a block of plain ratings rows, or None.

  The fast path for ml-20m size files: one split and two numpy conversions per
  block instead of a Python loop per row. Any block it cannot take as it is (a
  quote, a space, a wrong field count, a non-number, a rating outside (0, 5], a
  non-ASCII byte) returns None and goes through `_rating_rows`, which names the
  bad line.
  """
  rows = [line.rstrip(b'\r\n') for line in block]
  if not all(rows):
    rows = [r for r in rows if r]
  joined = sep.join(rows)
  if b'"' in joined or b' ' in joined or not joined.isascii():
    return None
  fields = np.array(joined.split(sep))
  if len(fields) != 4 * len(rows):
    return None
  fields = fields.reshape(-1, 4)
  try:
    stars = fields[:, 2].astype(np.float64)
    seconds = fields[:, 3].astype(np.int64)
  except ValueError:
    return None
  if not ((stars > 0) & (stars <= 5)).all():
    return None
  return fields[:, 0], fields[:, 1], seconds, stars


def _rating_rows(path: str, first: int, block: list[bytes], dat: bool,
                 log: _io.ReadLog) -> Iterator[tuple[int, list[str]]]:
  """(line number, fields) of a block, row by row, reporting malformed rows."""
  for line_no, data in enumerate(block, start=first):
    try:
      line = data.decode('latin-1' if dat else 'utf-8').rstrip('\r\n')
    except UnicodeDecodeError as e:
      log.malformed(path, line_no, f'not utf-8 text ({e.reason} at byte {e.start})')
      continue
    if not line:
      continue
    fields = line.split('::') if dat else next(csv.reader([line]))
    if len(fields) != 4:
      log.malformed(path, line_no, f'expected 4 fields, got {len(fields)}')
      continue
    yield line_no, fields


def _read_ratings(path: str, dat: bool, log: _io.ReadLog, events: EventLog) -> None:
  """Streams the ratings file into `events`, a block of lines at a time."""
  n = 0
  for first, block in _io.line_blocks(path):
    if first == 1 and not dat:  # The csv header.
      header = next(csv.reader([block[0].decode('utf-8', 'replace')]), [])
      if tuple(h.strip().lstrip('\ufeff') for h in header) != RATINGS_HEADER:
        raise _io.BadInput(f'{path}:1: expected the header {",".join(RATINGS_HEADER)}, got '
                           f'{",".join(header)}; is this a MovieLens ratings file?')
      first, block = 2, block[1:]
    parsed = _numeric_block(block, b'::' if dat else b',')
    if parsed is not None:
      events.add_block(*parsed)
      n += len(parsed[0])
      continue
    for line_no, (user, movie, rating, ts) in _rating_rows(path, first, block, dat, log):
      n += 1
      try:
        stars, seconds = float(rating), int(ts)
      except ValueError:
        log.malformed(path, line_no, f'rating {rating!r} / timestamp {ts!r} not numeric')
        continue
      if not 0 < stars <= 5:
        log.malformed(path, line_no, f'rating {stars} outside (0, 5]')
        continue
      events.add(user.strip(), movie.strip(), seconds, stars)
  if n == 0:
    log.count('empty_files', example=path)
