"""Each published format, written by hand (plain and gzipped), read end to end."""

import gzip
import json
import os

import numpy as np
import pytest

import data_pipelines as dp
from tests.data import review_fixtures as rf


def _write(path, text, gz=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if gz:
    with gzip.open(path, 'wt', encoding='utf-8') as f:
      f.write(text)
  else:
    with open(path, 'w', encoding='latin-1' if path.endswith('.dat') else 'utf-8') as f:
      f.write(text)


def _example(prepared, split, task, k=0, **kw):
  """Example k of `split` for `task` with the byte tokenizer, decoded to text."""
  cfg = dict(text_prompt=False, max_prompt_tokens=400, max_answer_tokens=60)
  cfg.update(kw)
  ex = dp.Example(prepared, task, ('item', 'genre', 'rating'), dp.ByteTokenizer(),
                  cfg['text_prompt'], cfg['max_prompt_tokens'],
                  cfg['max_answer_tokens'])
  windows = prepared.windows(split)
  if task == 'review':
    windows = windows[windows[:, 2] == 1]
  out = ex(windows[k])
  if 'tokens' in out:
    tok = dp.ByteTokenizer()
    out['prompt'] = tok.decode(out['tokens'][1:out['prompt_len']])
    out['answer'] = tok.decode(out['tokens'][out['loss_mask']])
  return out


MOVIES_CSV = '''movieId,title,genres
10,"Heat, The (1995)",Action|Crime
20,Toy Story (1995),Animation|Comedy
30,Up (2009),Animation
40,Alien (1979),Horror|Sci-Fi
'''
# User 1 has 5 ratings (one tie in time), user 2 has 3 (too short for history_len 2),
# and one rating is of movie 99 which movies.csv lacks.
RATINGS_CSV = '''userId,movieId,rating,timestamp
1,40,5.0,500
1,10,4.5,100
1,20,3.0,200
1,30,0.5,200
1,99,4.0,250
1,20,2.0,300
2,10,4.0,100
2,20,4.0,110
2,30,4.0,120
'''
TAGS_CSV = '''userId,movieId,tag,timestamp
1,40,scary,501
1,40,classic,499
2,10,tense,101
'''


def _check_movielens(prepared):
  assert prepared.stats['skipped'] == {
      'events_with_unknown_item': 1, 'users_too_short': 1,
      'events_of_short_users': 3}
  assert prepared.stats['users'] == 1 and prepared.stats['events'] == 5
  # Timeline of user 1 sorted by time; 20 and 30 tie at t=200: file order kept.
  table, offsets, blob = prepared.timeline(0)
  assert table[:, 4].tolist() == [100, 200, 200, 300, 500]
  items = [prepared.catalogue.all_names[i] for i in table[:, 0]]
  assert items == ['Heat, The (1995)', 'Toy Story (1995)', 'Up (2009)',
                   'Toy Story (1995)', 'Alien (1979)']
  # Only training parts count: user 1's events 0..2 and user 2's first event (the
  # user is too short to keep, but its training part still counts).
  assert prepared.vocabs['item'].values == ['10', '20', '30']
  assert prepared.vocabs['genre'].values == ['Action', 'Animation', 'Crime',
                                             'Comedy']
  assert prepared.genres[:3] == ['<pad>', '<oov>', 'Action']
  assert table[:, 1].tolist() == [2, 3, 4, 3, 1]  # Alien is OOV.
  assert table[:, 2].tolist() == [2, 3, 3, 3, 1]  # First genre; Horror is OOV.
  assert [prepared.vocabs['rating'].value(r) for r in table[:, 3]] == [
      '4.5', '3.0', '0.5', '2.0', '5.0']
  assert prepared.catalogue.names[2:] == ['Heat, The (1995)', 'Toy Story (1995)',
                                          'Up (2009)']
  assert prepared.catalogue.genre_ids[3] == (3, 5)  # Toy Story: Animation|Comedy
  for split, target in [('train', 2), ('validation', 3), ('test', 4)]:
    assert prepared.windows(split)[:, :2].tolist() == [[0, target]]
  return table


def test_movielens_csv(tmp_path):
  src = tmp_path / 'ml'
  _write(str(src / 'movies.csv'), MOVIES_CSV)
  _write(str(src / 'ratings.csv'), RATINGS_CSV)
  _write(str(src / 'tags.csv'), TAGS_CSV)
  prepared = dp.prepare(rf.data_config('movielens', src, tmp_path, 2))
  _check_movielens(prepared)
  table, offsets, blob = prepared.timeline(0)
  assert blob.decode() == 'classic, scary'  # Tags by time, on the Alien event.
  assert prepared.windows('test')[:, 2].tolist() == [1]  # Target has text.

  stage1 = _example(prepared, 'test', 'next_event')
  np.testing.assert_array_equal(stage1['item'], [4, 3, 1])  # Up, Toy Story, Alien.
  np.testing.assert_array_equal(stage1['timestamp'], [200, 300, 500])
  assert stage1['mask'].all() and stage1['example_mask']

  nxt = _example(prepared, 'test', 'next_item', text_prompt=True)
  np.testing.assert_array_equal(nxt['item'], [4, 3])
  assert nxt['target'] == 1  # Alien never appeared in training: OOV.
  assert nxt['prompt'] == ('History, oldest first (movie; genres; rating):\n'
                           'Up (2009); Animation; 0.5\n'
                           'Toy Story (1995); Animation|Comedy; 2.0\n'
                           'Which movie will this user watch next?\n')
  assert nxt['answer'] == 'Alien (1979)'
  # Animation 2x (Up, Toy Story) beats Comedy 1x.
  fav = _example(prepared, 'test', 'fav_genre')
  assert fav['prompt'] == "What is this user's favourite genre?\n"
  assert (fav['answer'], fav['target']) == ('Animation', 3)
  review = _example(prepared, 'test', 'review')
  assert review['prompt'] == "Write this user's next review of Alien (1979).\n"
  assert review['answer'] == 'classic, scary'


def test_movielens_dat_latin1(tmp_path):
  src = tmp_path / 'ml-1m'
  movies = ('10::Heat, The (1995)::Action|Crime\n20::Toy Story (1995)::Animation|Comedy\n'
            '30::Up (2009)::Animation\n40::Alien (1979)::Horror|Sci-Fi\n')
  ratings = ''.join(f'{l.replace(",", "::")}\n'
                    for l in RATINGS_CSV.splitlines()[1:])
  _write(str(src / 'movies.dat'), movies)
  _write(str(src / 'ratings.dat'), ratings)
  _check_movielens(dp.prepare(rf.data_config('movielens', src, tmp_path, 2)))
  # ml-1m is latin-1 encoded.
  _write(str(src / 'movies.dat'), movies.replace('Up (2009)', 'Amélie (2001)'))
  prepared = dp.prepare(rf.data_config('movielens', src, tmp_path, 2))
  assert prepared.catalogue.names[4] == 'Amélie (2001)'


AMAZON_2014_REVIEWS = [
    dict(reviewerID='A', asin='p1', overall=5.0, unixReviewTime=10,
         reviewText='Great  book.', summary='s'),
    dict(reviewerID='A', asin='p2', overall=4.0, unixReviewTime=20, reviewText=''),
    dict(reviewerID='A', asin='p3', overall=3.0, unixReviewTime=30,
         reviewText='Fine.'),
    dict(reviewerID='A', asin='p1', overall=1.0, unixReviewTime=40,
         reviewText='Worse on re-read.'),
]
AMAZON_2014_META = [  # Python literals, as published in 2014.
    "{'asin': 'p1', 'title': 'Dune', 'categories': [['Books', 'Sci-Fi', 'Space']]}",
    "{'asin': 'p2', 'title': \"Ender's Game\", 'categories': [['Books', 'Sci-Fi']]}",
    "{'asin': 'p3', 'categories': [['Books', 'Poetry']], 'salesRank': {'Books': 1}}",
]


@pytest.mark.parametrize('gz', [False, True])
def test_amazon_2014(tmp_path, gz):
  src = tmp_path / 'amazon'
  ext = '.json.gz' if gz else '.json'
  _write(str(src / f'reviews_Books_5{ext}'),
         ''.join(json.dumps(r) + '\n' for r in AMAZON_2014_REVIEWS), gz)
  _write(str(src / f'meta_Books{ext}'), '\n'.join(AMAZON_2014_META) + '\n', gz)
  prepared = dp.prepare(rf.data_config('amazon', src, tmp_path, 1))
  assert prepared.stats['skipped'] == {}
  # history_len 1: targets 3 (test), 2 (validation), 1 (train): train events 0..1.
  assert prepared.vocabs['item'].values == ['p1', 'p2']
  assert prepared.vocabs['genre'].values == ['Sci-Fi']  # Level 1 of the path.
  assert prepared.catalogue.all_names == ['Dune', "Ender's Game", 'p3']
  table, _, _ = prepared.timeline(0)
  assert table[:, 1].tolist() == [2, 3, 1, 2]
  assert table[:, 2].tolist() == [2, 2, 1, 2]
  assert prepared.windows('train').tolist() == [[0, 1, 0]]
  review = _example(prepared, 'test', 'review')
  assert review['prompt'] == "Write this user's next review of Dune.\n"
  assert review['answer'] == 'Worse on re-read.'
  nxt = _example(prepared, 'validation', 'next_item', text_prompt=True)
  assert nxt['prompt'] == ('History, oldest first (product; categorys; rating):\n'
                           "Ender's Game; Sci-Fi; 4.0\n"
                           'Which product will this user review next?\n')
  assert (nxt['answer'], nxt['target']) == ('p3', 1)
  table, offsets, blob = prepared.timeline(0)
  assert blob.decode() == 'Great book.Fine.Worse on re-read.'  # Spaces normalised.


def test_amazon_2018_plain(tmp_path):
  src = tmp_path / 'amazon18'
  reviews = [dict(r, verified=True, style={'Format:': 'Kindle'})
             for r in AMAZON_2014_REVIEWS]
  _write(str(src / 'Books_5.json'), ''.join(json.dumps(r) + '\n' for r in reviews))
  meta = [dict(asin='p1', title='Dune', category=['Books', 'Sci-Fi']),
          dict(asin='p1', title='Dune (duplicate row)', category=['Books']),
          dict(asin='p2', title="Ender's Game", category=['Books', 'Sci-Fi']),
          dict(asin='p3', title='Odes', category=[])]
  _write(str(src / 'meta_Books.json'), ''.join(json.dumps(m) + '\n' for m in meta))
  prepared = dp.prepare(rf.data_config('amazon', src, tmp_path, 1))
  assert prepared.catalogue.all_names == ['Dune', "Ender's Game", 'Odes']
  assert prepared.catalogue.all_genres == [('Sci-Fi',), ('Sci-Fi',), ('(unknown)',)]
  fav = _example(prepared, 'test', 'fav_genre')
  assert fav['prompt'] == "What is this user's favourite category?\n"
  assert fav['answer'] == '(unknown)' and fav['target'] == 1


GOOGLE_REVIEWS = [
    dict(user_id='u1', name='Ann', time=1_600_000_000_000, rating=5, text='Tacos!',
         pics=None, resp=None, gmap_id='g1'),
    dict(user_id='u1', name='Ann', time=1_600_000_100_000, rating=4, text=None,
         pics=None, resp=None, gmap_id='g2'),
    dict(user_id='u1', name='Ann', time=1_600_000_200_000, rating=3,
         text='Ok coffee', pics=None, resp=None, gmap_id='g3'),
    dict(user_id='u1', name='Ann', time=1_600_000_300_000, rating=5,
         text='Best tacos', pics=None, resp=None, gmap_id='g1'),
]
GOOGLE_META = [
    dict(name='Taco Shop', gmap_id='g1', category=['Mexican restaurant', 'Restaurant']),
    dict(name='Burger Bar', gmap_id='g2', category=['Restaurant']),
    dict(name='Cafe', gmap_id='g3', category=None),
]


@pytest.mark.parametrize('gz', [False, True])
def test_google_local(tmp_path, gz):
  src = tmp_path / 'google'
  ext = '.json.gz' if gz else '.json'
  _write(str(src / f'review-Vermont{ext}'),
         ''.join(json.dumps(r) + '\n' for r in GOOGLE_REVIEWS), gz)
  _write(str(src / f'meta-Vermont{ext}'),
         ''.join(json.dumps(m) + '\n' for m in GOOGLE_META), gz)
  prepared = dp.prepare(rf.data_config('google_local', src, tmp_path, 1))
  table, offsets, blob = prepared.timeline(0)
  assert table[:, 4].tolist() == [1_600_000_000 + 100 * i for i in range(4)]
  assert prepared.vocabs['item'].values == ['g1', 'g2']
  # Restaurant counted twice (g1, g2), Mexican restaurant once.
  assert prepared.vocabs['genre'].values == ['Restaurant', 'Mexican restaurant']
  assert prepared.catalogue.all_genres[2] == ('(unknown)',)
  fav = _example(prepared, 'test', 'fav_genre')  # History: Cafe only.
  assert (fav['answer'], fav['target']) == ('(unknown)', 1)
  fav = _example(prepared, 'train', 'fav_genre')  # History: Taco Shop.
  # Tie (1 each) within one event: the first listed wins.
  assert (fav['answer'], fav['target']) == ('Mexican restaurant', 3)
  review = _example(prepared, 'test', 'review')
  assert review['answer'] == 'Best tacos'
  assert review['prompt'] == "Write this user's next review of Taco Shop.\n"
  # The g2 review has no text: its window (train) is not a review example.
  assert prepared.windows('train')[:, 2].tolist() == [0]
  nxt = _example(prepared, 'test', 'next_item')
  assert nxt['prompt'] == 'Which place will this user visit next?\n'
  assert (nxt['answer'], nxt['target']) == ('Taco Shop', 2)
