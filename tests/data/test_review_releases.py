"""Amazon 2014 / 2018 and Google Local 2018 / 2021 fixtures (tests/data/review_fixtures.py)
read end to end: counts, text clean-up, ties, short histories, renamed and explicit files."""

import os
import subprocess
import sys

import numpy as np
import pytest

import data_pipelines as dp
from data_pipelines import _prepare
from tests.data import review_fixtures as rf
from user_llm import testing

DATASET = {'amazon_2014': 'amazon', 'amazon_2018': 'amazon', 'google_2018': 'google_local',
           'google_2021': 'google_local'}


@pytest.mark.parametrize('gz', [False, True])
@pytest.mark.parametrize('release', rf.RELEASES)
def test_release_read_end_to_end(tmp_path, release, gz):
  w = rf.write_release(release, tmp_path / release, gz=gz)
  prepared = dp.prepare(rf.data_config(DATASET[release], w.folder, tmp_path, 10))
  stats = prepared.stats
  # Every user kept (left-padded), every distinct timed review read once.
  assert stats['users'] == w.users == prepared.num_records('test')
  assert stats['events'] == w.reviews_written - w.duplicates - w.without_time
  assert stats['skipped'] == dict(duplicate_events=w.duplicates,
                                  **({'events_without_time': 3} if w.without_time else {}))
  names = prepared.catalogue.all_names
  assert 'Fender Strings & Picks (10 pack) #0' in names  # '&amp;' unescaped.
  assert 'Capo – Nickel 🎸 #4' in names and '東京ラーメン Amp #2' in names
  if release.startswith('amazon'):  # No title: named by the asin.
    assert 'B0000005X' in names  # Level 1 of the category path, else the deepest.
    assert sorted(prepared.genres[2:]) == [
        'Amplifiers & Effects', 'Guitars', 'Microphones', 'Musical Instruments']
  else:  # Categories as published (2018: on the reviews), none -> '(unknown)'.
    assert ('Mexican restaurant', 'Restaurant') in prepared.catalogue.all_genres
    assert ('(unknown)',) in prepared.catalogue.all_genres
  # Texts: entities and tags resolved, whitespace collapsed, unicode kept.
  texts = set()
  for u in range(stats['users']):
    _, offsets, blob = prepared.timeline(u)
    texts.update(blob[a:b].decode() for a, b in zip(offsets[:-1], offsets[1:]))
  assert {'Works great & sounds "warm".', "Très bien, j'adore!", 'Good value. Would buy again.',
          'lots of spaces', '最高です', ''} <= texts
  assert not any('&amp;' in t or '<br' in t for t in texts)
  # Two reviews at the same time keep their file order.
  table, _, _ = prepared.timeline(prepared.user_record(w.tie_user))
  assert table[0, 4] == table[1, 4]
  assert [prepared.catalogue.all_names[i] for i in table[:2, 0]] == [
      names[table[0, 0]], names[table[1, 0]]]
  raw_ids = [prepared.vocabs['item'].value(i) if i > 1 else None for i in table[:2, 1]]
  assert [r for r in raw_ids if r] == [r for r in w.tie_items if r in raw_ids]
  # A user's first windows have short, left-padded histories.
  ex = dp.Example(prepared, 'next_item', ('item', 'genre', 'rating'), dp.ByteTokenizer(),
                  False, 64, 32)
  first = prepared.windows('train')
  first = first[first[:, 1] == 1][0]
  out = ex(first)
  assert out['mask'].tolist() == [False] * 9 + [True]


def test_review_windows_need_text(tmp_path):
  w = rf.write_release('amazon_2018', tmp_path / 'a')  # Every 7th review lacks reviewText.
  prepared = dp.prepare(rf.data_config('amazon', w.folder, tmp_path, 10))
  windows = prepared.windows('train')
  assert 0 < windows[:, 2].mean() < 1
  ds = dp.make_dataset(prepared, 'train', 'review', batch_size=16, seed=0,
                       max_answer_tokens=48, max_prompt_tokens=96)
  batch = next(iter(ds))
  assert batch['loss_mask'].sum(1).min() > 1  # Answer + EOS: never an empty review.


def test_short_histories_are_padded_not_dropped(tmp_path):
  """The issue's 5-core numbers: at history_len 10 full windows keep few users."""
  w = rf.write_release('amazon_2014', tmp_path / 'a')
  padded = dp.prepare(rf.data_config('amazon', w.folder, tmp_path, 10))
  full = dp.prepare(rf.data_config('amazon', w.folder, tmp_path, 10, pad_short=False))
  assert padded.stats['users'] == 300
  assert full.stats['users'] < 100 and full.stats['skipped']['users_too_short'] > 200
  # Same vocabularies: an encoder trained on one serves the other.
  assert padded.vocabs['item'] == full.vocabs['item']


def _run(*args):
  return subprocess.run([sys.executable, '-m', *args], cwd=testing.ROOT,
                        env=testing.launcher_env(), capture_output=True, text=True,
                        timeout=300)


def test_renamed_and_explicit_files_through_data_stats(tmp_path):
  w = rf.write_release('amazon_2014', tmp_path / 'host', gz=True)
  renamed = w.folder / 'Musical_Instruments.json.gz'
  os.rename(w.reviews, renamed)  # A host's renamed 2014 5-core file.
  cache = f'--cache_dir={tmp_path / "cache"}'
  proc = _run('launch.data_stats', '--name=amazon', f'--data_path={w.folder}',
              '--history_lens=10,20', cache)
  assert proc.returncode == 0, proc.stderr
  assert 'Musical_Instruments.json.gz' in proc.stdout and '| 10 | 300 |' in proc.stdout
  assert '| 20 | 300 |' in proc.stdout and 'duplicate_events' in proc.stdout
  # Explicit files, from anywhere (data_path not needed).
  other = tmp_path / 'elsewhere'
  other.mkdir()
  os.rename(renamed, other / 'mine.json.gz')
  proc = _run('launch.data_stats', '--name=amazon', f'--reviews_file={other / "mine.json.gz"}',
              f'--meta_file={w.meta}', '--history_lens=10', cache)
  assert proc.returncode == 0 and '| 10 | 300 |' in proc.stdout, proc.stderr
  # A published name wins; two renamed review files in one folder: name one.
  rf.write_release('amazon_2018', tmp_path / 'y')
  os.rename(tmp_path / 'y' / 'Musical_Instruments_5.json', other / 'theirs.json')
  proc = _run('launch.data_stats', '--name=amazon', f'--data_path={other}', cache)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      f"Error: Several amazon review files in {other}: ['mine.json.gz', 'theirs.json']; "
      'name one with data.reviews_file (--config.data.reviews_file=FILE, data_stats '
      '--reviews_file).')


def test_explicit_files_in_configs(tmp_path):
  from configs import amazon_pretrain, google_local_userllm  # pylint: disable=g-import-not-at-top
  w = rf.write_release('google_2018', tmp_path / 'g')
  c = google_local_userllm.get_config(f'runlocal,reviews_file={w.reviews},meta_file={w.meta}')
  c.data.cache_dir = str(tmp_path / 'cache')
  assert _prepare.find_sources(c.data) == {'reviews': str(w.reviews), 'meta': str(w.meta)}
  assert c.data.pad_short and c.tasks == ('next_item', 'fav_genre', 'review')
  assert amazon_pretrain.get_config(f'path={w.folder}').data.path == str(w.folder)
  np.testing.assert_equal(dp.prepare(c.data).stats['users'], 300)


def test_long_reads_show_a_progress_bar(tmp_path, monkeypatch, capsys):
  from data_pipelines import _io  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(_io, 'PROGRESS_BYTES', 1000)  # Real releases: 64 MiB.
  w = rf.write_release('google_2021', tmp_path / 'g', gz=True)
  dp.prepare(rf.data_config('google_local', w.folder, tmp_path, 10))
  err = capsys.readouterr().err
  assert 'review-Vermont.json.gz: 100%' in err and 'meta-Vermont.json.gz: 100%' in err


def test_prompt_budgets_per_dataset():
  """MovieLens keeps the budgets its stage-2 benchmark rows ran with (32; 1,264 with the
  text history at 50 events); the review datasets get room for product / place names."""
  from configs import movielens_userllm  # pylint: disable=g-import-not-at-top
  budgets = {ds: (movielens_userllm.get_config('', dataset=ds).data.max_prompt_tokens,
                  movielens_userllm.get_config('mode=text_prompt', dataset=ds).data.max_prompt_tokens)
             for ds in ('movielens', 'amazon', 'google_local')}
  assert budgets == {'movielens': (32, 1264), 'amazon': (64, 1664), 'google_local': (48, 1264)}
