"""File helpers shared by the readers: errors, streamed lines, file lookup, hashes.

Every reader reports problems through `ReadLog`, so that malformed rows, empty files
and dropped events are counted and logged instead of silently disappearing. Errors a
user can fix (a missing or unreadable file, a malformed row, an ambiguous folder)
are `InputError`s whose one-line message names the place and the fix; launchers
print that line instead of a traceback.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import dataclasses
import fcntl
import glob
import gzip
import hashlib
import json
import os
import sys
import zlib
from typing import Any, BinaryIO, Iterator

from absl import logging
import tqdm

# Files at least this big get a progress bar while they are read.
PROGRESS_BYTES = 64 << 20


class InputError(Exception):
  """Bad input a user can fix; the message names the file:line / key / path and the fix."""


class MissingInput(InputError, FileNotFoundError):
  """A file or folder named by the config does not exist."""


class BadInput(InputError, ValueError):
  """A file, row or config value that cannot be used as it is."""


@dataclasses.dataclass
class ReadLog:
  """Counters of everything a reader skipped or dropped, and why.

  Attributes:
    strict: if True a malformed row raises BadInput; if False it is skipped and
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
      raise BadInput(f'Malformed row in {where}; fix the row, or set data.strict=False '
                     '(--config.data.strict=False, data_stats --nostrict) to skip and '
                     'count such rows.')
    self.count('malformed_rows', example=where)

  def report(self) -> None:
    """Logs every non-zero counter with its first examples."""
    for reason, n in sorted(self.counts.items()):
      logging.warning('data: %s = %d %s', reason, n,
                      self.examples.get(reason, ''))


def _open_bytes(path: str) -> BinaryIO:
  """open(path, 'rb') (a seam for tests that simulate an unreadable file)."""
  return open(path, 'rb')


def check_file(path: str, what: str = 'Data') -> str:
  """`path` if it is a readable file; else a one-line InputError saying what to do."""
  if not os.path.exists(path):
    raise MissingInput(f'{what} file not found: {path}; check the path (or the '
                       'folder in data.path).')
  if os.path.isdir(path):
    raise BadInput(f'{what} file {path} is a folder; name the file inside it.')
  return path


def line_blocks(path: str, block_lines: int = 1 << 16) -> Iterator[tuple[int, list[bytes]]]:
  """Streams `path` (gunzipping '*.gz') as (number of the first line, raw lines) blocks.

  Only one block is in memory. Files of PROGRESS_BYTES or more show a progress bar
  (bytes read; compressed bytes for .gz) on stderr.
  """
  check_file(path)
  try:
    raw = _open_bytes(path)
  except PermissionError:
    raise BadInput(f'Cannot read {path} (permission denied); make it readable '
                   f'(chmod a+r {path}) or copy it somewhere readable.') from None
  size = os.path.getsize(path)
  with raw, tqdm.tqdm(total=size, unit='B', unit_scale=True, file=sys.stderr,
                      desc=os.path.basename(path), disable=size < PROGRESS_BYTES,
                      mininterval=2.0) as bar:
    stream = gzip.GzipFile(fileobj=raw) if path.endswith('.gz') else raw
    first = 1
    while True:
      try:
        block = stream.readlines(block_lines * 64)  # ~block_lines lines of ~64 bytes.
      except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise BadInput(f'{path}:{first}: unreadable ({e}); the file is damaged or '
                       'truncated: download it again.') from None
      if not block:
        break
      yield first, block
      first += len(block)
      bar.update(raw.tell() - bar.n)


def lines(path: str, log: ReadLog, encoding: str = 'utf-8') -> Iterator[tuple[int, str]]:
  """Streams (line number, text) of `path` (see `line_blocks`).

  A line that is not `encoding` text is a malformed row (named by file:line).
  """
  for first, block in line_blocks(path):
    for line_no, data in enumerate(block, start=first):
      try:
        yield line_no, data.decode(encoding)
      except UnicodeDecodeError as e:
        log.malformed(path, line_no, f'not {encoding} text ({e.reason} at byte {e.start})')


def find_file(folder: str, patterns: tuple[str, ...], what: str,
              required: bool = True, flag: str = 'the file explicitly') -> str | None:
  """Returns the single file in `folder` matching the first pattern that matches.

  Args:
    folder: directory to search.
    patterns: glob patterns tried in order, e.g. ('ratings.csv', 'ratings.dat').
    what: human name of the file for the error message.
    required: raise if nothing matches (else return None).
    flag: how the user names the file instead (for the error message).

  Raises:
    MissingInput: naming every path looked for.
    BadInput: if one pattern matches several files (ambiguous input).
  """
  for pattern in patterns:
    matches = sorted(glob.glob(os.path.join(folder, pattern)))
    if len(matches) > 1:
      raise BadInput(f'Several {what} files match {pattern!r} in {folder}: '
                     f'{[os.path.basename(m) for m in matches]}; pass {flag}.')
    if matches:
      return matches[0]
  if required:
    looked = ', '.join(os.path.join(folder, p) for p in patterns)
    raise MissingInput(f'No {what} file found; looked for: {looked}; pass {flag}.')
  return None


def iter_records(path: str, log: ReadLog) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields (line number, dict) for each non-blank JSON-lines row of `path`.

  Rows that are not strict JSON are tried as Python literals, because the Amazon
  2014 metadata files and the Google Local 2018 files are written with Python's
  repr (single quotes), not JSON. Empty files are counted under 'empty_files'.
  """
  n = 0
  for line_no, line in lines(path, log):
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

  Google Local Reviews (2021) store `time` in milliseconds; anything above 1e11
  (year 5138 in seconds) is taken as milliseconds.
  """
  t = int(float(t))
  return t // 1000 if t > 100_000_000_000 else t


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
  """An exclusive lock on `path` (created): one process builds a cache, others wait."""
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
