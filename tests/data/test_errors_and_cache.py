"""Bad input is reported, never silently dropped; the cache is reused or rebuilt."""

import json
import os

import pytest

import data_pipelines as dp
from data_pipelines import _movielens

MOVIES = 'movieId,title,genres\n1,A (2000),Drama\n2,B (2001),Comedy\n'
GOOD = ''.join(f'7,{1 + i % 2},4.0,{i}\n' for i in range(5))


def _ml(tmp_path, ratings, movies=MOVIES, **kw):
  src = tmp_path / 'ml'
  src.mkdir(exist_ok=True)
  (src / 'movies.csv').write_text(movies)
  (src / 'ratings.csv').write_text('userId,movieId,rating,timestamp\n' + ratings)
  c = dp.default_data_config('movielens', str(src))
  c.cache_dir = str(tmp_path / 'cache')
  c.history_len = 2
  c.update(kw)
  return c


def test_malformed_row_strict_names_file_and_line(tmp_path):
  c = _ml(tmp_path, GOOD + '7,1,four,9\n')
  with pytest.raises(ValueError, match=r'ratings\.csv:7: .*not numeric'):
    dp.prepare(c)


def test_malformed_row_lenient_is_counted(tmp_path):
  c = _ml(tmp_path, GOOD + '7,1,four,9\n7,1\n', strict=False)
  prepared = dp.prepare(c)
  assert prepared.stats['skipped']['malformed_rows'] == 2
  assert prepared.stats['events'] == 5


def test_malformed_json_line(tmp_path):
  src = tmp_path / 'g'
  src.mkdir()
  (src / 'review-X.json').write_text(
      '{"user_id": "u", "gmap_id": "g", "rating": 5, "time": 1}\n{oops\n')
  c = dp.default_data_config('google_local', str(src))
  c.cache_dir = str(tmp_path / 'cache')
  with pytest.raises(ValueError, match=r'review-X\.json:2: neither JSON'):
    dp.prepare(c)
  (src / 'review-X.json').write_text('{"user_id": "u", "rating": 5, "time": 1}\n')
  with pytest.raises(ValueError, match=r"review-X\.json:1: missing key 'gmap_id'"):
    dp.prepare(c)


def test_missing_files_name_the_path(tmp_path):
  c = _ml(tmp_path, GOOD)
  os.remove(os.path.join(c.path, 'movies.csv'))
  with pytest.raises(FileNotFoundError, match=r'ml/movies\.csv'):
    dp.prepare(c)
  os.remove(os.path.join(c.path, 'ratings.csv'))
  with pytest.raises(FileNotFoundError, match=r'ml/ratings\.csv, .*ml/ratings\.dat'):
    dp.prepare(c)
  c.path = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='nowhere'):
    dp.prepare(c)
  c = dp.default_data_config('amazon', str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r'reviews_\*_5\.json\.gz'):
    dp.prepare(c)


def test_empty_file_and_short_users_are_counted(tmp_path):
  c = _ml(tmp_path, '')
  with pytest.raises(ValueError, match=r"No user has >= 4 events.*'empty_files': 1"):
    dp.prepare(c)
  c = _ml(tmp_path, GOOD + '8,1,3.0,1\n8,3,3.0,2\n')  # Short user 8, unknown movie 3.
  stats = dp.prepare(c).stats
  assert stats['skipped'] == {'users_too_short': 1, 'events_of_short_users': 1,
                              'events_with_unknown_item': 1}


def test_cache_reused_then_rebuilt(tmp_path, monkeypatch):
  c = _ml(tmp_path, GOOD)
  first = dp.prepare(c)
  calls = []
  real = _movielens.read_movielens
  monkeypatch.setattr(_movielens, 'read_movielens',
                      lambda *a: calls.append(1) or real(*a))
  again = dp.prepare(c)
  assert again.root == first.root and not calls  # Reused.
  with open(os.path.join(first.root, 'manifest.json')) as f:
    manifest = json.load(f)
  assert set(manifest['source_sha256']) == {'ratings', 'movies'}
  assert manifest['config']['history_len'] == 2
  # A changed source rebuilds the same directory.
  with open(os.path.join(c.path, 'ratings.csv'), 'a') as f:
    f.write('7,2,1.0,99\n')
  rebuilt = dp.prepare(c)
  assert calls == [1] and rebuilt.root == first.root
  assert rebuilt.stats['events'] == 6
  # A changed preprocessing config gets its own directory; pipeline-only fields
  # (text_prompt) do not.
  c.text_prompt = True
  assert dp.prepare(c).root == first.root and calls == [1]
  c.history_len = 3
  assert dp.prepare(c).root != first.root and calls == [1, 1]


def test_cache_of_an_old_version_still_opens(tmp_path):
  """manifest.json written before the rename calls history_len `seq_len`."""
  root = dp.prepare(_ml(tmp_path, GOOD)).root
  path = os.path.join(root, 'manifest.json')
  with open(path) as f:
    manifest = json.load(f)
  manifest['config']['seq_len'] = manifest['config'].pop('history_len')
  with open(path, 'w') as f:
    json.dump(manifest, f)
  old = dp.Prepared(root)
  assert old.history_len == old.config['history_len'] == 2 and 'seq_len' not in old.config


def test_unknown_dataset_and_task(tmp_path):
  with pytest.raises(ValueError, match='Unknown dataset'):
    dp.default_data_config('netflix')
  prepared = dp.prepare(_ml(tmp_path, GOOD))
  with pytest.raises(ValueError, match='Unknown task'):
    dp.make_dataset(prepared, 'train', 'click', batch_size=1)
  with pytest.raises(ValueError, match='Unknown split'):
    dp.make_dataset(prepared, 'dev', 'next_item', batch_size=1)
