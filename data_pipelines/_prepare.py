"""`prepare`: read a release once, write ArrayRecords + manifest.json, reuse after.

Cache layout, in `cache_dir/<name>_L<history_len>_S<stride>_<config hash>/`:
- timelines.array_record: one record per kept user (see _records.py);
- windows_<split>.npy: int32[N, 3] rows (user record, target index, has_text);
- vocabs.json, items.json: vocabularies and the item catalogue;
- manifest.json: format version, preprocessing config, SHA-256 of every source
  file, statistics and skip counters. A run whose config and source hashes match
  the manifest reuses the directory; anything else rebuilds it.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Any

from absl import logging
from array_record.python import array_record_module
import grain
import ml_collections
import numpy as np

from data_pipelines import _io, _movielens, _records, _reviews, _timelines
from data_pipelines._config import NAMES, NOUNS, PREP_FIELDS, default_data_config
from data_pipelines._vocab import NUM_RESERVED, Vocab

# 2: users.json (raw user ids); 3: test/valid events, pad_short; 4: file digests,
# duplicate events dropped, review texts HTML-unescaped.
FORMAT_VERSION = 4
SPLITS = _timelines.SPLITS


@dataclasses.dataclass(frozen=True)
class Catalogue:
  """Items indexed by their 'item' vocabulary id (the ids Recall@K ranks).

  Attributes:
    names: str per item id; '<pad>' / '<oov>' at 0 and 1.
    genre_ids: tuple of genre ids per item id (all the item's genres).
    all_names: name per catalogue index (every item of the kept timelines,
      including those the training vocabulary maps to OOV).
    all_genres: genre strings per catalogue index.
  """

  names: list[str]
  genre_ids: list[tuple[int, ...]]
  all_names: list[str]
  all_genres: list[tuple[str, ...]]


def _prep_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  defaults = default_data_config(config.get('name', 'movielens'))
  prep = {k: config.get(k, defaults.get(k)) for k in PREP_FIELDS}
  if prep['min_events'] is None or prep['min_events'] < 0:
    prep['min_events'] = _timelines.default_min_events(
        prep['history_len'], prep['test_events'], prep['valid_events'], prep['pad_short'])
  return prep


def _renamed_seq_len(prep: dict[str, Any]) -> dict[str, Any]:
  """`prep` with an old manifest's `seq_len` under its new name `history_len`."""
  if 'seq_len' not in prep:
    return prep
  prep = dict(prep)
  prep.setdefault('history_len', prep.pop('seq_len'))
  return prep


def find_sources(config: ml_collections.ConfigDict) -> dict[str, str | None]:
  """The source files of `config.data` (raises MissingInput naming the paths)."""
  if config.name == 'movielens':
    return _movielens.find_sources(config.path, config.get('reviews_file') or None,
                                   config.get('meta_file') or None)
  return _reviews.find_sources(config.name, config.path,
                               config.get('reviews_file') or None,
                               config.get('meta_file') or None)


def _read(config, sources, log):
  if config.name == 'movielens':
    return _movielens.read_movielens(sources, log)
  if config.name == 'amazon':
    return _reviews.read_amazon(sources, log, config.amazon_category_level)
  return _reviews.read_google_local(sources, log)


class Prepared:
  """A preprocessed dataset in its cache directory (cheap to construct)."""

  def __init__(self, root: str, config: dict[str, Any] | None = None):
    """Opens the cache directory `root`; `config` = the full `config.data` dict."""
    self.root = root
    with open(os.path.join(root, 'manifest.json')) as f:
      self.manifest = json.load(f)
    # Manifests written before the rename name the history length `seq_len`.
    prep = _renamed_seq_len(self.manifest['config'])
    # Pipeline fields (features, text_prompt, token budgets) for make_dataset.
    self.config: dict[str, Any] = dict(
        default_data_config(prep['name']).to_dict(), **prep)
    self.config.update(config or {})
    with open(os.path.join(root, 'vocabs.json')) as f:
      self.vocabs = {k: Vocab(v) for k, v in json.load(f).items()}
    with open(os.path.join(root, 'items.json')) as f:
      items = json.load(f)
    self.name: str = self.manifest['config']['name']
    self.history_len: int = prep['history_len']  # History events U before a target.
    self.nouns: dict[str, str] = NOUNS[self.name]
    self.catalogue = self._catalogue(items)
    self.stats: dict[str, Any] = self.manifest['stats']

  def _catalogue(self, items) -> Catalogue:
    item_vocab, genre_vocab = self.vocabs['item'], self.vocabs['genre']
    names = ['<pad>', '<oov>'] + [''] * (item_vocab.size - 2)
    genre_ids: list[tuple[int, ...]] = [()] * item_vocab.size
    for raw_id, name, genres in items:
      i = item_vocab.id(raw_id)
      if i > 1:
        names[i], genre_ids[i] = name, tuple(genre_vocab.ids(genres))
    return Catalogue(names, genre_ids, [it[1] for it in items],
                     [tuple(it[2]) for it in items])

  @property
  def genres(self) -> list[str]:
    """Genre (category) names by genre id, '<pad>' and '<oov>' first."""
    return ['<pad>', '<oov>'] + self.vocabs['genre'].values

  @property
  def timelines_path(self) -> str:
    return os.path.join(self.root, 'timelines.array_record')

  def windows_path(self, split: str) -> str:
    if split not in SPLITS:
      raise ValueError(f'Unknown split {split!r}; expected one of {SPLITS}.')
    return os.path.join(self.root, f'windows_{split}.npy')

  def windows(self, split: str) -> np.ndarray:
    """int32[N, 3]: (user record, target event index, target has text)."""
    return np.load(self.windows_path(split))

  def num_records(self, split: str) -> int:
    """Number of windows (examples) in `split`."""
    return int(self.manifest['num_records'][split])

  @functools.cached_property
  def timelines(self) -> grain.sources.ArrayRecordDataSource:
    """Random access to the encoded per-user timelines."""
    return grain.sources.ArrayRecordDataSource([self.timelines_path])

  @functools.cached_property
  def user_ids(self) -> list[str]:
    """Raw user id (as in the source files) of every timeline record."""
    with open(os.path.join(self.root, 'users.json')) as f:
      return json.load(f)

  def user_record(self, raw_user_id: str | int) -> int:
    """The timeline record of a raw user id; a clear error if it is not kept."""
    try:
      return self.user_ids.index(str(raw_user_id))
    except ValueError:
      raise KeyError(
          f'User {raw_user_id!r} is not in {self.root} (unknown id, or fewer than '
          f'{self.manifest["config"]["min_events"]} events; '
          f'{len(self.user_ids)} users kept, e.g. {self.user_ids[:3]})') from None

  def timeline(self, user: int):
    """Decoded timeline of user record `user`: (table, offsets, blob)."""
    return _records.decode(self.timelines[user])

  @functools.cached_property
  def item_counts(self) -> np.ndarray:
    """int64[item vocab size]: occurrences of each item id among the training events.

    A training event precedes every held-out (validation and test) target of its user,
    the part of the timelines the item vocabulary was counted on; ids 0 (pad) and 1
    (OOV) count 0. Popularity-sampled negatives (`evaluators.candidates`) draw by it.
    """
    held_out = np.full(len(self.user_ids), np.iinfo(np.int64).max)
    for split in ('validation', 'test'):
      w = self.windows(split)
      np.minimum.at(held_out, w[:, 0], w[:, 1])
    item = _timelines.COLUMNS.index('item')
    counts = np.zeros(self.vocabs['item'].size, np.int64)
    for user in range(len(self.user_ids)):
      table, _, _ = self.timeline(user)
      np.add.at(counts, table[:held_out[user], item], 1)
    counts[:NUM_RESERVED] = 0
    return counts

  def __repr__(self) -> str:
    return f'Prepared({self.root}, {self.manifest["num_records"]})'


def _write(built: _timelines.Built, root: str) -> None:
  writer = array_record_module.ArrayRecordWriter(
      os.path.join(root, 'timelines.array_record'), 'group_size:1')
  for u in range(len(built.users)):
    t = built.timeline(u)
    writer.write(_records.encode(t.table, t.texts))
  writer.close()
  for split, w in built.windows.items():
    np.save(os.path.join(root, f'windows_{split}.npy'), w)
  with open(os.path.join(root, 'vocabs.json'), 'w') as f:
    json.dump({k: v.values for k, v in built.vocabs.items()}, f)
  with open(os.path.join(root, 'items.json'), 'w') as f:
    json.dump([list(i) for i in built.items], f, ensure_ascii=False)
  with open(os.path.join(root, 'users.json'), 'w') as f:  # Raw user id per record.
    json.dump(built.users, f)


def _file_digests(root: str) -> dict[str, list]:
  """[bytes, sha256] of every cache file but the manifest (checked before reuse)."""
  return {name: [os.path.getsize(os.path.join(root, name)),
                 _io.sha256_file(os.path.join(root, name))]
          for name in sorted(os.listdir(root)) if name != 'manifest.json'}


def _reusable(root: str, prep: dict[str, Any], hashes: dict[str, str]) -> bool:
  """Whether `root` holds a complete cache of `prep` built from sources `hashes`.

  A cache whose files do not match the sizes and SHA-256 its manifest recorded (a
  partial copy, a damaged disk, an edited file) is rebuilt, never trusted.
  """
  path = os.path.join(root, 'manifest.json')
  if not os.path.isfile(path):
    return False
  try:
    with open(path) as f:
      old = json.load(f)
    if not (old.get('version') == FORMAT_VERSION and old.get('config') == prep
            and old.get('source_sha256') == hashes):
      logging.info('data: sources or config changed, rebuilding %s', root)
      return False
    if _file_digests(root) != old['files']:
      logging.warning('data: cache files in %s do not match its manifest, rebuilding', root)
      return False
  except (OSError, ValueError, KeyError, TypeError) as e:
    logging.warning('data: unreadable cache %s (%s), rebuilding', root, e)
    return False
  return True


def _statistics(built: _timelines.Built, log: _io.ReadLog) -> dict[str, Any]:
  return {
      'users': len(built.users),
      'items': len(built.items),
      'events': built.num_events,
      'windows': {s: int(len(w)) for s, w in built.windows.items()},
      'vocab_sizes': {k: v.size for k, v in built.vocabs.items()},
      'skipped': dict(sorted(log.counts.items())),
  }


def _make_cache_dir(cache_dir: str) -> None:
  try:
    os.makedirs(cache_dir, exist_ok=True)
  except FileExistsError:
    raise _io.BadInput(f'data.cache_dir {cache_dir} is a file; set data.cache_dir '
                       '(--config.data.cache_dir) to a folder.') from None
  except PermissionError:
    raise _io.BadInput(f'Cannot create data.cache_dir {cache_dir} (permission denied); '
                       'set data.cache_dir to a writable folder.') from None
  if not os.access(cache_dir, os.W_OK):
    raise _io.BadInput(f'data.cache_dir {cache_dir} is not writable; set data.cache_dir '
                       'to a writable folder.')


def _build(config: ml_collections.ConfigDict, sources: dict[str, str | None],
           prep: dict[str, Any], hashes: dict[str, str], root: str) -> None:
  """Reads the sources and writes the cache into `root`, replacing it atomically."""
  t0 = time.time()
  log = _io.ReadLog(strict=config.strict)
  raw = _read(config, sources, log)
  logging.info('data: read %d events in %.1f s', len(raw.events), time.time() - t0)
  built = _timelines.build(raw, log, config.history_len, config.stride,
                           prep['min_events'], prep['min_count'], prep['test_events'],
                           prep['valid_events'], prep['pad_short'],
                           prep.get('drop_last_events', 0))
  del raw
  log.report()
  # Written next to the target and renamed, so a crash never leaves a half cache.
  prefix = f'.tmp_{os.path.basename(root)}_'
  for stale in glob.glob(os.path.join(config.cache_dir, prefix + '*')):
    shutil.rmtree(stale, ignore_errors=True)  # Left by a killed build (we hold the lock).
  tmp = tempfile.mkdtemp(dir=config.cache_dir, prefix=prefix)
  try:
    _write(built, tmp)
    manifest = {
        'version': FORMAT_VERSION,
        'config': prep,
        'sources': {role: p for role, p in sources.items() if p},
        'source_sha256': hashes,
        'stats': _statistics(built, log),
        'num_records': {s: int(len(w)) for s, w in built.windows.items()},
        'files': _file_digests(tmp),
    }
    with open(os.path.join(tmp, 'manifest.json'), 'w') as f:
      json.dump(manifest, f, indent=1)
  except OSError as e:
    shutil.rmtree(tmp, ignore_errors=True)
    if e.errno == errno.ENOSPC:
      raise _io.BadInput(f'No space left on the device of data.cache_dir {config.cache_dir} '
                         'while writing the data cache (nothing kept); free space or set '
                         'data.cache_dir elsewhere.') from None
    raise
  old = root + '.old'
  if os.path.isdir(root):
    shutil.rmtree(old, ignore_errors=True)
    os.replace(root, old)  # Open readers keep their files until they close them.
  os.replace(tmp, root)
  shutil.rmtree(old, ignore_errors=True)
  logging.info('data: prepared %s in %.1f s: %s', root, time.time() - t0, manifest['stats'])


def cache_root(config: ml_collections.ConfigDict) -> str:
  """The cache folder of `config.data`, keyed by the fields that change the data."""
  prep = _prep_config(config)
  key = hashlib.sha256(json.dumps(prep, sort_keys=True).encode()).hexdigest()[:10]
  return os.path.join(config.cache_dir,
                      f'{config.name}_L{config.history_len}_S{config.stride}_{key}')


def prepare(config: ml_collections.ConfigDict) -> Prepared:
  """Preprocesses `config` (the `config.data` section) once; reuses the cache after.

  Safe when several processes prepare the same cache at once: the first builds it
  under a file lock, the others wait and reuse it.

  Raises:
    InputError (MissingInput / BadInput, also FileNotFoundError / ValueError): a
      missing or unreadable source, a malformed row with strict=True (names file
      and line), an unusable cache_dir, or no user long enough for a window.
  """
  if config.get('name') not in NAMES:
    raise _io.BadInput(f'Unknown dataset {config.get("name")!r} (data.name); expected one '
                       f'of {", ".join(NAMES)}.')
  sources = find_sources(config)
  prep = _prep_config(config)
  root = cache_root(config)
  hashes = {role: _io.sha256_file(p) for role, p in sources.items() if p}
  _make_cache_dir(config.cache_dir)
  with _io.locked(root + '.lock'):
    if _reusable(root, prep, hashes):
      logging.info('data: reusing %s', root)
    else:
      _build(config, sources, prep, hashes, root)
  return Prepared(root, config.to_dict())
