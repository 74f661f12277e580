"""The bad-input matrix: each user error ends in one line naming the place and the fix,
and nothing already written is lost. Trainer-side failures: tests/data/test_train_failures.py."""

import errno
import json
import os
import subprocess
import sys

import pytest

import data_pipelines as dp
from data_pipelines import _io
from data_pipelines import _movielens
from data_pipelines import _prepare
from tests.data import review_fixtures as rf
from user_llm import testing

MOVIES = 'movieId,title,genres\n1,A (2000),Drama\n2,B (2001),Comedy\n'
RATINGS = 'userId,movieId,rating,timestamp\n' + ''.join(
    f'7,{1 + i % 2},4.0,{i}\n' for i in range(5))


def _ml(tmp_path, ratings=RATINGS, **kw):
  src = tmp_path / 'ml'
  src.mkdir(exist_ok=True)
  (src / 'movies.csv').write_text(MOVIES)
  (src / 'ratings.csv').write_bytes(ratings.encode() if isinstance(ratings, str) else ratings)
  c = dp.default_data_config('movielens', str(src))
  c.cache_dir = str(tmp_path / 'cache')
  c.history_len = 2
  c.update(kw)
  return c


def _google(tmp_path, text, **kw):
  src = tmp_path / 'g'
  src.mkdir(exist_ok=True)
  (src / 'review-X.json').write_bytes(text if isinstance(text, bytes) else text.encode())
  c = dp.default_data_config('google_local', str(src))
  c.cache_dir = str(tmp_path / 'cache')
  c.update(kw)
  return c


def test_missing_paths_say_what_to_set(tmp_path):
  c = _ml(tmp_path)
  c.path = str(tmp_path / 'nowhere')
  with pytest.raises(dp.MissingInput, match=r'MovieLens folder not found: .*nowhere; set '
                     r'data.path \(--config.data.path / --data_path\)'):
    dp.prepare(c)
  c = dp.default_data_config('amazon', str(tmp_path))
  with pytest.raises(dp.MissingInput, match=r'No amazon review file in .*reviews_\*_5\.json'
                     r'.*name the file with data.reviews_file'):
    dp.prepare(c)
  c.reviews_file = str(tmp_path / 'gone.json.gz')
  with pytest.raises(FileNotFoundError, match=r'reviews \(data.reviews_file\) file not found:'
                     r' .*gone.json.gz; check the path'):
    dp.prepare(c)


def test_empty_review_file(tmp_path):
  with pytest.raises(dp.BadInput, match=r"No user has >= 4 events.*'empty_files': 1.*"
                     'lower data.history_len'):
    dp.prepare(_google(tmp_path, ''))


def test_malformed_lines_stop_or_are_counted_by_flag(tmp_path):
  good = ''.join(json.dumps(dict(user_id='u', gmap_id=f'g{i}', rating=5, time=i)) + '\n'
                 for i in range(5))
  text = good.encode() + b'{"user_id": "u", "gmap_id": "g9", "text": "caf\xe9"}\n{oops\n'
  with pytest.raises(dp.BadInput, match=r'Malformed row in .*review-X\.json:6: not utf-8 '
                     r'text .*set data.strict=False \(--config.data.strict=False, data_stats '
                     r'--nostrict\)'):
    dp.prepare(_google(tmp_path, text))
  prepared = dp.prepare(_google(tmp_path, text, strict=False))
  assert prepared.stats['skipped'] == {'malformed_rows': 2} and prepared.stats['events'] == 5
  # CSV: a line that is not UTF-8, in the middle of a large numeric block.
  c = _ml(tmp_path, RATINGS.encode() + b'7,1,4.0,\xff9\n')
  with pytest.raises(dp.BadInput, match=r'ratings\.csv:7: not utf-8 text'):
    dp.prepare(c)


def test_wrong_dataset_name(tmp_path):
  with pytest.raises(dp.BadInput, match=r"Unknown dataset 'netflix' \(data.name / --name\); "
                     'expected one of movielens, amazon, google_local'):
    dp.default_data_config('netflix')
  c = _ml(tmp_path)
  c.name = 'netflix'
  with pytest.raises(dp.BadInput, match="Unknown dataset 'netflix'"):
    dp.prepare(c)
  w = rf.write_release('amazon_2014', tmp_path / 'a')  # Amazon files read as Google.
  c = dp.default_data_config('google_local', str(w.folder))
  c.reviews_file = str(w.reviews)
  with pytest.raises(dp.BadInput, match=r'_5\.json:1: not a google_local review row .*; '
                     'check data.name and the file'):
    dp.prepare(c)


def test_unreadable_file(tmp_path, monkeypatch):
  c = _ml(tmp_path)

  def denied(path):
    raise PermissionError(errno.EACCES, 'Permission denied', path)

  monkeypatch.setattr(_io, '_open_bytes', denied)
  with pytest.raises(dp.BadInput, match=r'Cannot read .*movies\.csv \(permission denied\); '
                     r'make it readable \(chmod a\+r .*movies\.csv\)'):
    dp.prepare(c)


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads any file')
def test_unreadable_file_for_real(tmp_path):
  c = _ml(tmp_path)
  os.chmod(os.path.join(c.path, 'ratings.csv'), 0)
  with pytest.raises(dp.BadInput, match='permission denied'):
    dp.prepare(c)


@pytest.mark.parametrize('damage', ['truncate', 'flip_byte', 'delete', 'manifest'])
def test_corrupt_or_partial_cache_is_rebuilt(tmp_path, monkeypatch, damage):
  c = _ml(tmp_path)
  root = dp.prepare(c).root
  before = {f: open(os.path.join(root, f), 'rb').read() for f in os.listdir(root)}
  target = os.path.join(root, {'truncate': 'timelines.array_record', 'flip_byte':
                               'windows_train.npy', 'delete': 'vocabs.json',
                               'manifest': 'manifest.json'}[damage])
  data = before[os.path.basename(target)]
  if damage == 'truncate':  # A partial copy.
    open(target, 'wb').write(data[:len(data) // 2])
  elif damage == 'flip_byte':  # Same size, one bad byte.
    open(target, 'wb').write(data[:-1] + bytes([data[-1] ^ 1]))
  elif damage == 'delete':
    os.remove(target)
  else:
    open(target, 'w').write('{"version": ')
  calls = []
  real = _movielens.read_movielens
  monkeypatch.setattr(_movielens, 'read_movielens', lambda *a: calls.append(1) or real(*a))
  again = dp.prepare(c)
  assert calls == [1] and again.root == root  # Rebuilt, not trusted...
  after = {f: open(os.path.join(root, f), 'rb').read() for f in os.listdir(root)}
  assert {f: v for f, v in after.items() if f != 'manifest.json'} == {
      f: v for f, v in before.items() if f != 'manifest.json'}  # ...to the same bytes.
  dp.prepare(c)
  assert calls == [1]  # And trusted again.


def test_killed_build_leftovers_and_full_disk(tmp_path, monkeypatch):
  c = _ml(tmp_path)
  root = _prepare.cache_root(c)
  os.makedirs(c.cache_dir)
  stale = os.path.join(c.cache_dir, f'.tmp_{os.path.basename(root)}_killed')
  os.makedirs(stale)  # What a build killed half-way leaves.
  dp.prepare(c)
  assert not os.path.exists(stale)

  def full(built, path):
    open(os.path.join(path, 'timelines.array_record'), 'wb').write(b'partial')
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(_prepare, '_write', full)
  c.history_len = 3  # Another cache; the first one must survive.
  with pytest.raises(dp.BadInput, match=r'No space left on the device of data.cache_dir .* '
                     r'\(nothing kept\); free space or set data.cache_dir elsewhere'):
    dp.prepare(c)
  assert sorted(os.listdir(c.cache_dir)) == sorted(
      [os.path.basename(root), os.path.basename(root) + '.lock',
       os.path.basename(_prepare.cache_root(c)) + '.lock'])
  c.history_len = 2
  assert dp.prepare(c).root == root


def test_cache_dir_that_is_a_file(tmp_path):
  c = _ml(tmp_path)
  open(c.cache_dir, 'w').close()
  with pytest.raises(dp.BadInput, match=r'data.cache_dir .*cache is a file; set '
                     r'data.cache_dir \(--config.data.cache_dir\) to a folder'):
    dp.prepare(c)


def _last_line(*args):
  """(exit code, last stderr line) of `python -m ARGS`; no traceback allowed."""
  proc = subprocess.run([sys.executable, '-m', *args], cwd=testing.ROOT,
                        env=testing.launcher_env(), capture_output=True, text=True,
                        timeout=300)
  assert 'Traceback' not in proc.stderr, proc.stderr
  return proc.returncode, proc.stderr.strip().splitlines()[-1]


def test_launchers_end_with_one_line(tmp_path):
  rc, line = _last_line('launch.data_stats', f'--data_path={tmp_path / "nowhere"}')
  assert rc == 1 and line == (f'Error: MovieLens folder not found: {tmp_path / "nowhere"}; '
                              'set data.path (--config.data.path / --data_path) to the '
                              'release folder.')
  rc, line = _last_line('launch.data_stats', '--name=netflix')
  assert rc == 1 and line.startswith("Error: Unknown dataset 'netflix'")
  workdir = tmp_path / 'run'
  workdir.write_text('not a folder')
  config = '--config=configs/movielens_pretrain.py:runlocal,synthetic'
  rc, line = _last_line('launch.main', config, f'--workdir={workdir}')
  assert rc == 1 and line == (f'Error: --workdir {workdir} is a file; give a folder (a new '
                              'one, or an earlier run to resume).')
  rc, line = _last_line('launch.main', config, '--config.data.nme=x', f'--workdir={tmp_path}')
  assert rc == 1 and line == ("Error: unknown config key '--config.data.nme' (Did you mean "
                              '"name" instead of "nme"?); fix the key (the config file lists '
                              'every field).')
  rc, line = _last_line('launch.main', config + ',modle=ar', f'--workdir={tmp_path}')
  assert rc == 1 and "Unknown config arg 'modle'" in line and line.startswith(
      'Error: flag --config=configs/movielens_pretrain.py:runlocal,synthetic,modle=ar: ')
  assert workdir.read_text() == 'not a folder'
