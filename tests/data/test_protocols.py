"""Split protocols: multi-target test, left-padded short histories, whole-past `seen`."""

import numpy as np
import pytest

import data_pipelines as dp
from data_pipelines import _timelines


def test_split_targets_classic_layout_is_unchanged():
  # history_len 2, 6 events, stride 1: test 5, validation 4, train 3 and 2.
  assert _timelines.split_targets(6, 2, 1) == {'train': [3, 2], 'validation': [4], 'test': [5]}


def test_split_targets_multi_target_padded_and_strided():
  t = _timelines.split_targets(12, 4, 3, test_events=3, valid_events=1, pad_short=True)
  assert t == {'test': [11, 10, 9], 'validation': [8], 'train': [7, 4, 1]}
  # A model scoring the last `stride` positions of each train window sees events
  # 1..7 (every event with a history) exactly once.
  covered = sorted(e for tgt in t['train'] for e in range(tgt - 2, tgt + 1) if e >= 1)
  assert covered == list(range(1, 8))
  # Without padding, targets need a full history of 4 events.
  assert _timelines.split_targets(12, 4, 3, 3, 1)['train'] == [7, 4]
  assert _timelines.default_min_events(4, 3, 1, pad_short=True) == 6
  assert _timelines.default_min_events(4, 3, 1) == 8


RATINGS = 'userId,movieId,rating,timestamp\n' + ''.join(
    f'1,{m},4.0,{t}\n' for t, m in enumerate([10, 20, 30, 10, 40, 20, 30])) + ''.join(
        f'2,{m},3.0,{t}\n' for t, m in enumerate([40, 30, 20, 10, 20]))
MOVIES = ('movieId,title,genres\n10,A (1),Action\n20,B (2),Comedy\n'
          '30,C (3),Drama\n40,D (4),Horror\n')


@pytest.fixture
def source(tmp_path):
  src = tmp_path / 'ml'
  src.mkdir()
  (src / 'movies.csv').write_text(MOVIES)
  (src / 'ratings.csv').write_text(RATINGS)
  return src


def _prepare(source, tmp_path, **kw):
  c = dp.default_data_config('movielens', str(source))
  c.cache_dir = str(tmp_path / 'cache')
  c.history_len = 4
  c.update(kw)
  return dp.prepare(c)


def test_padded_multi_target_windows_and_seen(source, tmp_path):
  p = _prepare(source, tmp_path, pad_short=True, test_events=2, valid_events=1)
  assert p.stats['users'] == 2  # User 2 (5 events) is kept: padding allows it.
  assert p.windows('test')[:, :2].tolist() == [[0, 6], [0, 5], [1, 4], [1, 3]]
  assert p.windows('validation')[:, :2].tolist() == [[0, 4], [1, 2]]
  assert p.windows('train')[:, :2].tolist() == [[0, 3], [0, 2], [0, 1], [1, 1]]
  ex = dp.Example(p, 'next_event', ('item', 'genre', 'rating'), dp.ByteTokenizer(), False,
                  8, 8, seen_items=True)
  out = ex(np.asarray([1, 1, 0]))  # User 2, target index 1: one history event.
  item = p.vocabs['item']
  np.testing.assert_array_equal(out['mask'], [False, False, False, True, True])
  np.testing.assert_array_equal(out['item'], [0, 0, 0, item.id('40'), item.id('30')])
  assert out['target_index'] == 1 and out['num_events'] == 5
  assert np.flatnonzero(out['seen']).tolist() == [item.id('40')]
  # User 1, target index 5 (movie 20): `seen` is the whole past, window or not.
  out = ex(np.asarray([0, 5, 0]))
  assert out['mask'].all() and out['item'][-1] == item.id('20')
  assert sorted(np.flatnonzero(out['seen'])) == sorted(item.ids(['10', '20', '30', '40']))


def test_selection_drops_each_users_last_event(source, tmp_path):
  """Protocol 'selection': the standard split of timelines without their last event,
  so its test target is the standard validation event and the real test target is
  never read (not even as history)."""
  std = _prepare(source, tmp_path, pad_short=True)
  sel = _prepare(source, tmp_path, pad_short=True, drop_last_events=1)
  assert sel.root != std.root  # A prep field: its own cache.
  assert std.windows('validation')[:, :2].tolist() == [[0, 5], [1, 3]]
  assert sel.windows('test')[:, :2].tolist() == [[0, 5], [1, 3]]
  assert sel.windows('validation')[:, :2].tolist() == [[0, 4], [1, 2]]
  assert sel.stats['events'] == std.stats['events'] - 2
  ex = dp.Example(sel, 'next_event', ('item',), dp.ByteTokenizer(), False, 8, 8)
  out = ex(np.asarray([0, 5, 0]))  # User 1's selection target: movie 20 at t = 5.
  assert out['item'][-1] == sel.vocabs['item'].id('20') and out['num_events'] == 6


def test_dropped_events_are_never_read_by_a_multi_target_split(source, tmp_path):
  """'selection_multi' in small: drop each user's last 2 events, then 2 targets per user:
  the dropped events appear in no window, as input or target."""
  sel = _prepare(source, tmp_path, pad_short=True, drop_last_events=2, test_events=2,
                 valid_events=1)
  assert sel.windows('test')[:, :2].tolist() == [[0, 4], [0, 3]]  # User 2: 3 events left.
  assert sel.windows('validation')[:, :2].tolist() == [[0, 2]]
  ex = dp.Example(sel, 'next_event', ('item',), dp.ByteTokenizer(), False, 8, 8)
  for split in ('train', 'validation', 'test'):
    for w in sel.windows(split):
      out = ex(np.asarray(w))
      assert out['num_events'] <= 5  # Events 5 and 6 (movies 20, 30 at t = 5, 6) are gone.


def test_protocols_share_the_vocabulary(source, tmp_path):
  full = _prepare(source, tmp_path)  # User 2 is too short for a full window.
  padded = _prepare(source, tmp_path, pad_short=True)
  assert full.stats['users'] == 1 and padded.stats['users'] == 2
  assert full.vocabs['item'].values == padded.vocabs['item'].values
  assert full.vocabs['genre'].values == padded.vocabs['genre'].values


def test_min_events_below_the_protocol_minimum_is_an_error(source, tmp_path):
  with pytest.raises(ValueError, match='min_events=3 < 6'):
    _prepare(source, tmp_path, min_events=3)


@pytest.mark.parametrize('history_len,stride,k,v,pad', [
    (2, 1, 1, 1, False), (4, 3, 3, 1, True), (5, 2, 1, 0, False), (50, 10, 1, 1, True),
    (3, 1, 5, 1, True)])
def test_split_windows_is_split_targets_of_every_user(history_len, stride, k, v, pad):
  """The vectorised split (ml-20m: 138k users at once) lists the same targets in the
  same order (user-major, latest first) as `split_targets` per user."""
  lengths = np.random.default_rng(0).integers(0, 80, 40)
  got = _timelines.split_windows(lengths, history_len, stride, k, v, pad)
  for split, rows in got.items():
    want = [(u, t) for u, n in enumerate(lengths)
            for t in _timelines.split_targets(int(n), history_len, stride, k, v, pad)[split]]
    assert rows[:, :2].tolist() == [list(w) for w in want], split
