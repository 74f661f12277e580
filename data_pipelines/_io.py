"""File helpers shared by the readers: open plain or gzipped text, hash, count.

Every reader reports problems through `ReadLog`, so that malformed rows, empty files
and dropped events are counted and logged instead of silently disappearing.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import glob
import gzip
import hashlib
import io
import json
import os
from typing import Any, Iterator

from absl import logging


@dataclasses.dataclass
class ReadLog:
  """Counters of everything a reader skipped or dropped, and why.

  Attributes:
    strict: if True a malformed row raises ValueError; if False it is skipped and
      counted under 'malformed_rows'.
    counts: reason -> count (e.g. 'malformed_rows', 'empty_files',
      'events_with_unknown_item', 'users_too_short').
    examples: reason -> first few 'file:line: message' strings, for the log.
  """

  strict: bool = True
  counts: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)
  examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def count(self, reason: str, n: int = 1, example: str | None = None) -> None:
    """Adds `n` to counter `reason`, keeping up to 5 examples for the log."""
    self.counts[reason] += n
    if example is not None:
      kept = self.examples.setdefault(reason, [])
      if len(kept) < 5:
        kept.append(example)

  def malformed(self, path: str, line_no: int, message: str) -> None:
    """Raises (strict) or counts (lenient) a malformed row at path:line_no."""
    where = f'{path}:{line_no}: {message}'
    if self.strict:
      raise ValueError(f'Malformed row in {where} (set strict=False to skip and '
                       'count such rows).')
    self.count('malformed_rows', example=where)

  def report(self) -> None:
    """Logs every non-zero counter with its first examples."""
    for reason, n in sorted(self.counts.items()):
      logging.warning('data: %s = %d %s', reason, n,
                      self.examples.get(reason, ''))


def open_text(path: str, encoding: str = 'utf-8') -> io.TextIOBase:
  """Opens `path` as text, transparently gunzipping files ending in '.gz'.

  Raises:
    FileNotFoundError: naming `path` when it does not exist.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Data file not found: {path}')
  if path.endswith('.gz'):
    return io.TextIOWrapper(gzip.open(path, 'rb'), encoding=encoding,
                            newline='')
  return open(path, 'r', encoding=encoding, newline='')


def find_file(folder: str, patterns: tuple[str, ...], what: str,
              required: bool = True) -> str | None:
  """Returns the single file in `folder` matching the first pattern that matches.

  Args:
    folder: directory to search.
    patterns: glob patterns tried in order, e.g. ('ratings.csv', 'ratings.dat').
    what: human name of the file for the error message.
    required: raise if nothing matches (else return None).

  Raises:
    FileNotFoundError: naming every path looked for.
    ValueError: if one pattern matches several files (ambiguous input).
  """
  for pattern in patterns:
    matches = sorted(glob.glob(os.path.join(folder, pattern)))
    if len(matches) > 1:
      raise ValueError(f'Several {what} files match {pattern!r} in {folder}: '
                       f'{matches}; pass the file explicitly in the config.')
    if matches:
      return matches[0]
  if required:
    looked = ', '.join(os.path.join(folder, p) for p in patterns)
    raise FileNotFoundError(f'No {what} file found; looked for: {looked}')
  return None


def iter_records(path: str, log: ReadLog) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields (line number, dict) for each non-blank JSON-lines row of `path`.

  Rows that are not strict JSON are tried as Python literals, because the Amazon
  2014 metadata files (and the Google Local 2018 files) are written with Python's
  repr (single quotes), not JSON. Empty files are counted under 'empty_files'.
  """
  n = 0
  with open_text(path) as f:
    for line_no, line in enumerate(f, start=1):
      line = line.strip()
      if not line:
        continue
      n += 1
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        try:
          row = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
          log.malformed(path, line_no, f'neither JSON nor a Python literal ({e})')
          continue
      if not isinstance(row, dict):
        log.malformed(path, line_no, 'row is not an object')
        continue
      yield line_no, row
  if n == 0:
    log.count('empty_files', example=path)


def sha256_file(path: str | os.PathLike) -> str:
  """Hex SHA-256 of a file's bytes (data cache and GGUF conversion manifests)."""
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def to_seconds(t: Any) -> int:
  """Converts a Unix time in seconds or milliseconds to int seconds.

  Google Local Reviews store `time` in milliseconds; anything above 1e11 (year
  5138 in seconds) is taken as milliseconds.
  """
  t = int(float(t))
  return t // 1000 if t > 100_000_000_000 else t
