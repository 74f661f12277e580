"""Grain pipeline: shapes, determinism, checkpointable state, process slicing."""

import os

import numpy as np
import pytest

import data_pipelines as dp
from data_pipelines import _tasks

HISTORY_LEN = 3


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """6 users x 12 events over 8 movies: 9 windows each (1 test, 1 val, 7 train)."""
  tmp = tmp_path_factory.mktemp('pipe')
  src = tmp / 'ml'
  src.mkdir()
  genres = ['Drama', 'Comedy|Drama', 'Action', 'Horror|Comedy']
  (src / 'movies.csv').write_text('movieId,title,genres\n' + ''.join(
      f'{m},Movie {m} (19{m}0),{genres[m % 4]}\n' for m in range(8)))
  rng = np.random.default_rng(0)
  (src / 'ratings.csv').write_text('userId,movieId,rating,timestamp\n' + ''.join(
      f'{u},{rng.integers(8)},{rng.integers(1, 11) / 2},{1000 * u + t}\n'
      for u in range(6) for t in range(12)))
  c = dp.default_data_config('movielens', str(src))
  c.cache_dir = str(tmp / 'cache')
  c.history_len = HISTORY_LEN
  c.max_prompt_tokens = 160
  c.max_answer_tokens = 24
  return dp.prepare(c)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_counts(prepared):
  assert [prepared.num_records(s) for s in dp.SPLITS] == [42, 6, 6]


@pytest.mark.parametrize('task', ['next_event', 'next_item', 'fav_genre', 'review'])
@pytest.mark.parametrize('text_prompt', [False, True])
def test_shapes(prepared, task, text_prompt):
  if task == 'review':  # No tags file: no review windows.
    with pytest.raises(ValueError, match='No train windows'):
      dp.make_dataset(prepared, 'train', task, batch_size=4)
    return
  b = next(iter(dp.make_dataset(prepared, 'train', task, batch_size=4,
                                text_prompt=text_prompt, trim_multiple=0)))
  u = HISTORY_LEN + 1 if task == 'next_event' else HISTORY_LEN
  for f in ('item', 'genre', 'rating', 'timestamp'):
    assert b[f].shape == (4, u) and b[f].dtype == np.int32
  assert b['mask'].shape == (4, u) and b['mask'].dtype == bool
  assert b['user'].shape == (4,) and b['example_mask'].all()
  if task != 'next_event':
    assert b['tokens'].shape == (4, 184) and b['tokens'].dtype == np.int32
    assert b['loss_mask'].shape == (4, 184)
    assert (b['tokens'][:, 0] == 2).all()
    for row, plen, lm in zip(b['tokens'], b['prompt_len'], b['loss_mask']):
      answer = np.flatnonzero(lm)
      assert answer[0] == plen and row[answer[-1]] == 1  # ... answer EOS.
      assert (row[answer[-1] + 1:] == 0).all()
    assert b['target'].shape == (4,)
    has_history = (b['prompt_len'] > 60).all()
    assert has_history == text_prompt


def test_same_seed_same_batches(prepared):
  a = _take(iter(dp.make_dataset(prepared, 'train', 'next_item', batch_size=4,
                                 seed=3)), 15)
  b = _take(iter(dp.make_dataset(prepared, 'train', 'next_item', batch_size=4,
                                 seed=3)), 15)
  c = next(iter(dp.make_dataset(prepared, 'train', 'next_item', batch_size=4,
                                seed=4)))
  for x, y in zip(a, b):
    _equal(x, y)
  assert not np.array_equal(a[0]['user'] * 100 + a[0]['target'],
                            c['user'] * 100 + c['target'])
  # Each epoch is a new permutation of all 42 windows (ids: target timestamps).
  e1, e2 = _take(iter(dp.make_dataset(prepared, 'train', 'next_event',
                                      batch_size=42, seed=3)), 2)
  ids1, ids2 = e1['timestamp'][:, -1], e2['timestamp'][:, -1]
  assert len(set(ids1)) == 42 and sorted(ids1) == sorted(ids2)
  assert not np.array_equal(ids1, ids2)


def test_restore_state_gives_next_batch(prepared):
  ds = dp.make_dataset(prepared, 'train', 'fav_genre', batch_size=5, seed=1,
                       text_prompt=True)
  it = iter(ds)
  _take(it, 7)
  state = it.get_state()
  expected = _take(it, 6)  # Crosses the epoch boundary (42 / 5).
  fresh = iter(dp.make_dataset(prepared, 'train', 'fav_genre', batch_size=5,
                               seed=1, text_prompt=True))
  fresh.set_state(state)
  for want, got in zip(expected, _take(fresh, 6)):
    _equal(want, got)


def test_orbax_checkpoint_of_iterator(prepared, tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  import grain  # pylint: disable=g-import-not-at-top
  it = iter(dp.make_dataset(prepared, 'train', 'next_event', batch_size=4, seed=0))
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path / 'ckpt', item_names=('data_iter',)) as mngr:
    mngr.save(3, args=ocp.args.Composite(
        data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  expected = next(it)
  fresh = iter(dp.make_dataset(prepared, 'train', 'next_event', batch_size=4,
                               seed=0))
  with ocp.CheckpointManager(tmp_path / 'ckpt', item_names=('data_iter',)) as mngr:
    mngr.restore(3, args=ocp.args.Composite(
        data_iter=grain.checkpoint.CheckpointRestore(fresh)))
  _equal(expected, next(fresh))


def test_process_slices_partition_the_global_batch(prepared):
  kw = dict(batch_size=6, seed=2, num_epochs=1)
  whole = list(dp.make_dataset(prepared, 'train', 'next_event', **kw))
  parts = [list(dp.make_dataset(prepared, 'train', 'next_event', process_index=p,
                                process_count=3, **kw)) for p in range(3)]
  assert len(whole) == 7 and all(len(p) == 7 for p in parts)
  for i, batch in enumerate(whole):
    assert all(parts[p][i]['item'].shape == (2, HISTORY_LEN + 1) for p in range(3))
    for p in range(3):
      np.testing.assert_array_equal(parts[p][i]['item'], batch['item'][2 * p:2 * p + 2])


def test_eval_pads_final_batch(prepared):
  batches = list(dp.make_dataset(prepared, 'test', 'next_item', batch_size=4,
                                 shuffle=False, num_epochs=1))
  assert len(batches) == 2
  assert batches[1]['example_mask'].tolist() == [True, True, False, False]
  assert not batches[1]['mask'][2:].any() and not batches[1]['loss_mask'][2:].any()
  assert batches[1]['tokens'].shape == batches[0]['tokens'].shape
  users = np.concatenate([b['user'][b['example_mask']] for b in batches])
  assert sorted(users.tolist()) == list(range(6))


def test_favourite_genre_ties():
  assert dp.favourite_genre([('A',), ('B',), ('A',), ('B',)]) == 'B'  # Recent.
  assert dp.favourite_genre([('A',), ('B',), ('B', 'A')]) == 'B'  # Listed first.
  assert dp.favourite_genre([('A', 'B')]) == 'A'  # Same event: listed first.
  assert dp.favourite_genre([('A',), ('B',), ('B',), ('A',), ('C',)]) == 'A'
  assert dp.favourite_genre([('C', 'A'), ('A',), ('B',)]) == 'A'  # Count first.


def test_fit_prompt_drops_oldest_lines_and_pack():
  assert _tasks.fit_prompt([9], [[1, 1], [2, 2], [3, 3]], [7], 6) == [9, 2, 2, 3, 3, 7]
  assert _tasks.fit_prompt([9], [[1, 1, 1, 1, 1]], [7, 7], 4) == [7, 7]
  out = _tasks.pack([5, 6, 7], [8, 9, 10], bos=2, eos=1, pad=0, max_prompt=3,
                    max_answer=3)
  assert out['tokens'].tolist() == [2, 6, 7, 8, 9, 1]
  assert out['loss_mask'].tolist() == [False, False, False, True, True, True]
  assert out['prompt_len'] == 3
  assert out['answer_pos'].tolist() == [3, 4, 5] and out['answer_mask'].all()


def test_byte_tokenizer_round_trip():
  tok = dp.ByteTokenizer()
  assert isinstance(tok, dp.Tokenizer)
  ids = tok.encode('Amélie; 4.0')
  assert min(ids) >= 3 and tok.decode([tok.bos_id] + ids + [tok.eos_id]) == (
      'Amélie; 4.0')


@pytest.mark.parametrize('history_len', [200, 500])
def test_long_histories(tmp_path, history_len):
  src = tmp_path / 'ml'
  src.mkdir()
  (src / 'movies.csv').write_text('movieId,title,genres\n' + ''.join(
      f'{m},M{m},Drama|Comedy\n' for m in range(50)))
  (src / 'ratings.csv').write_text('userId,movieId,rating,timestamp\n' + ''.join(
      f'1,{t % 50},3.5,{t}\n' for t in range(history_len + 3)))
  c = dp.default_data_config('movielens', str(src))
  c.cache_dir = str(tmp_path / 'cache')
  c.history_len = history_len
  prepared = dp.prepare(c)
  assert [prepared.num_records(s) for s in dp.SPLITS] == [1, 1, 1]
  b = next(iter(dp.make_dataset(prepared, 'test', 'fav_genre', batch_size=2,
                                text_prompt=True, max_prompt_tokens=8192)))
  assert b['item'].shape == (2, history_len)
  assert b['example_mask'].tolist() == [True, False]
  # Drama and Comedy tie on every event: Drama is listed first.
  assert prepared.genres[b['target'][0]] == 'Drama'
  assert b['prompt_len'][0] > history_len * 10  # The whole history is in the prompt.


def test_default_config(monkeypatch):
  monkeypatch.setenv('USER_LLM_DATA', '/data/ml-25m')
  c = dp.default_data_config('amazon')
  assert c.path == '/data/ml-25m' and c.history_len == 50 and c.stride == 1
  assert c.features == ('item', 'genre', 'rating') and c.strict


@pytest.mark.skipif(not os.environ.get('USER_LLM_TOKENIZER'),
                    reason='set USER_LLM_TOKENIZER=path/to/tokenizer.model')
def test_gemma_tokenizer():
  tok = dp.GemmaTokenizer(os.environ['USER_LLM_TOKENIZER'])
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (2, 1, 0, 262144)
  assert tok.decode(tok.encode('Up (2009); Animation; 4.0\n')) == (
      'Up (2009); Animation; 4.0\n')


@pytest.mark.parametrize('task', ['next_item', 'fav_genre'])
def test_trimmed_batches_keep_every_token_and_answer(prepared, task):
  kw = dict(batch_size=4, seed=1, text_prompt=True)
  full = _take(iter(dp.make_dataset(prepared, 'train', task, trim_multiple=0, **kw)), 3)
  cut = _take(iter(dp.make_dataset(prepared, 'train', task, trim_multiple=8, **kw)), 3)
  for a, b in zip(full, cut):
    length, answers = b['tokens'].shape[1], b['answer_pos'].shape[1]
    assert length % 8 == 0 and length < a['tokens'].shape[1] and answers % 4 == 0
    np.testing.assert_array_equal(a['tokens'][:, :length], b['tokens'])
    assert not a['tokens'][:, length:].any()  # Only padding was cut.
    # The packed (row, position) answer pairs are exactly the fixed-shape ones.
    want = sorted(zip(*np.nonzero(a['answer_mask'])))
    want = [(r, a['answer_pos'][r, c]) for r, c in want]
    got = list(zip(b['answer_row'][b['answer_mask']], b['answer_pos'][b['answer_mask']]))
    assert got == want
    assert (b['answer_pos'] < length).all() and (b['answer_pos'] >= 1).all()
    assert a['loss_mask'][b['answer_row'][b['answer_mask']], b['answer_pos'][b['answer_mask']]].all()
