"""Persistent per-user state in SQLite: every event, and the cached encoder state.

Durability: WAL journal with synchronous=FULL, so a transaction is on disk when its
COMMIT returns; the server commits before it sends a 2xx reply, hence a `kill -9`
loses nothing acknowledged (tests/serving/test_store.py kills a writer with SIGKILL).
A user's new events and their updated memory are written in one transaction: after a
crash the cached memory always describes exactly the stored events.

Versioning: the cached state carries the digest of the encoder params that computed it
(`incremental.params_digest`). A reader with another digest (a new checkpoint, another
run) must not use it: `memory` returns it with its digest, and the server re-encodes
the same kept events (`window_start` .. `num_events`) and writes the result back.

Tables:
  events(user, seq, item, item_id, genre_id, rating_id, rating, timestamp)
      the user's events in arrival order (seq 0, 1, ...); item as the client gave it,
      the three feature ids the encoder reads (1 = OOV).
  memory(user, digest, window_start, num_events, state)
      `incremental.state_to_bytes` of the encoded events window_start .. num_events - 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import threading

import numpy as np

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  user TEXT NOT NULL, seq INTEGER NOT NULL, item TEXT NOT NULL,
  item_id INTEGER NOT NULL, genre_id INTEGER NOT NULL, rating_id INTEGER NOT NULL,
  rating REAL, timestamp INTEGER NOT NULL,
  PRIMARY KEY (user, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS memory (
  user TEXT PRIMARY KEY, digest TEXT NOT NULL, window_start INTEGER NOT NULL,
  num_events INTEGER NOT NULL, state BLOB NOT NULL);
"""

# Event columns that are the encoder's features, by feature name.
# Encoder input -> events column ('timestamp': seconds, read by time-feature encoders).
FEATURE_COLUMNS = {'item': 'item_id', 'genre': 'genre_id', 'rating': 'rating_id',
                   'timestamp': 'timestamp'}


@dataclasses.dataclass(frozen=True)
class Event:
  """One stored event."""

  item: str  # As the client named it (raw id or title).
  item_id: int  # Feature ids (vocabularies of the served run; 1 = OOV).
  genre_id: int
  rating_id: int
  rating: float | None  # Stars, None if not given.
  timestamp: int  # Seconds.


@dataclasses.dataclass(frozen=True)
class CachedMemory:
  """A user's encoded events window_start .. num_events - 1."""

  digest: str  # `incremental.params_digest` of the encoder params that encoded them.
  window_start: int
  num_events: int
  state: bytes  # `incremental.state_to_bytes`.


class Store:
  """The SQLite file at `path` (created if absent); safe to share between threads."""

  def __init__(self, path: str):
    self.path = path
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    self._lock = threading.Lock()
    # Autocommit mode: every write is an explicit BEGIN IMMEDIATE ... COMMIT.
    self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    mode = self._db.execute('PRAGMA journal_mode=WAL').fetchone()[0]
    if mode.lower() != 'wal':
      raise RuntimeError(f'{path}: SQLite refused WAL mode ({mode}); is it on a network '
                         'file system?')
    self._db.execute('PRAGMA synchronous=FULL')
    with self._write() as db:
      for stmt in filter(str.strip, _SCHEMA.split(';')):
        db.execute(stmt)
      row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
      if row is None:
        db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
      elif int(row[0]) != SCHEMA_VERSION:
        raise RuntimeError(f'{path} has store schema {row[0]}, this code {SCHEMA_VERSION}.')

  @contextlib.contextmanager
  def _write(self):
    """One transaction, committed (durably) on exit, rolled back on an exception."""
    with self._lock:
      self._db.execute('BEGIN IMMEDIATE')
      try:
        yield self._db
      except BaseException:
        self._db.execute('ROLLBACK')
        raise
      self._db.execute('COMMIT')

  def _read(self, sql: str, args=()) -> list[tuple]:
    with self._lock:
      return self._db.execute(sql, args).fetchall()

  def close(self):
    with self._lock:
      self._db.close()

  # ------------------------------------------------------------------ reads
  def num_events(self, user: str) -> int:
    """Events stored for `user` (0 for an unknown user)."""
    return self._read('SELECT COUNT(*) FROM events WHERE user=?', (user,))[0][0]

  def num_users(self) -> int:
    return self._read('SELECT COUNT(DISTINCT user) FROM events')[0][0]

  def events(self, user: str, start: int = 0, end: int | None = None) -> list[Event]:
    """The user's events start .. end - 1 in arrival order."""
    end = 2**62 if end is None else end
    rows = self._read('SELECT item, item_id, genre_id, rating_id, rating, timestamp FROM events '
                      'WHERE user=? AND seq>=? AND seq<? ORDER BY seq', (user, start, end))
    return [Event(*r) for r in rows]

  def features(self, user: str, start: int = 0, end: int | None = None) -> dict[str, np.ndarray]:
    """feature -> int32[n]: the encoder's ids of events start .. end - 1."""
    events = self.events(user, start, end)
    return {f: np.asarray([getattr(e, c) for e in events], np.int32)
            for f, c in FEATURE_COLUMNS.items()}

  def memory(self, user: str) -> CachedMemory | None:
    """The user's cached encoder state (check its digest before use), or None."""
    rows = self._read('SELECT digest, window_start, num_events, state FROM memory WHERE user=?',
                      (user,))
    return CachedMemory(*rows[0]) if rows else None

  # ------------------------------------------------------------------ writes
  def append(self, user: str, events: list[Event], memory: CachedMemory) -> int:
    """Adds `events` after the user's stored ones and replaces the cached memory, in
    one durable transaction. `memory` must describe all events, the new ones included
    (ValueError otherwise, nothing written). Returns the user's event count."""
    with self._write() as db:
      start = db.execute('SELECT COUNT(*) FROM events WHERE user=?', (user,)).fetchone()[0]
      total = start + len(events)
      if memory.num_events != total:
        raise ValueError(f'Memory of user {user!r} covers {memory.num_events} events, the '
                         f'store would hold {total}: it is stale.')
      db.executemany(
          'INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
          [(user, start + i, e.item, e.item_id, e.genre_id, e.rating_id, e.rating, e.timestamp)
           for i, e in enumerate(events)])
      self._put_memory(db, user, memory)
    return total

  def put_memory(self, user: str, memory: CachedMemory) -> None:
    """Replaces the cached memory (after a re-encode); ValueError if it is stale."""
    with self._write() as db:
      total = db.execute('SELECT COUNT(*) FROM events WHERE user=?', (user,)).fetchone()[0]
      if memory.num_events != total:
        raise ValueError(f'Memory of user {user!r} covers {memory.num_events} events, the '
                         f'store holds {total}.')
      self._put_memory(db, user, memory)

  @staticmethod
  def _put_memory(db, user, memory: CachedMemory):
    db.execute('INSERT OR REPLACE INTO memory VALUES (?, ?, ?, ?, ?)',
               (user, memory.digest, memory.window_start, memory.num_events, memory.state))
