"""A tiny MovieLens written by the tests, and a stage-1 run trained on it."""

import pathlib

import pytest

from configs import movielens_pretrain
from user_llm import train

GENRES = ['Action', 'Comedy', 'Drama', 'Horror', 'Romance']


def write_movielens(root: pathlib.Path, users: int = 6, events: int = 16, movies: int = 30):
  root.mkdir(parents=True, exist_ok=True)
  lines = ['movieId,title,genres']
  for m in range(1, movies + 1):
    g = '|'.join(GENRES[(m + k) % len(GENRES)] for k in range(1 + m % 2))
    lines.append(f'{m},Movie {m} ({1990 + m}),{g}')
  (root / 'movies.csv').write_text('\n'.join(lines) + '\n')
  rows, tags = ['userId,movieId,rating,timestamp'], ['userId,movieId,tag,timestamp']
  for u in range(1, users + 1):
    for t in range(events):
      m = (u * 7 + t * (1 + u % 3)) % movies + 1
      rows.append(f'{u},{m},{1 + (u + t) % 5}.0,{1_000_000 + 100 * t}')
      if t % 2:  # Tags are MovieLens' review text.
        tags.append(f'{u},{m},{GENRES[t % 5].lower()} fun,{1_000_000 + 100 * t}')
  (root / 'ratings.csv').write_text('\n'.join(rows) + '\n')
  (root / 'tags.csv').write_text('\n'.join(tags) + '\n')
  return root


@pytest.fixture(scope='session')
def tiny_movielens(tmp_path_factory):
  return write_movielens(tmp_path_factory.mktemp('ml'))


@pytest.fixture(scope='session')
def stage1_workdir(tiny_movielens, tmp_path_factory):
  cfg = movielens_pretrain.get_config('runlocal')
  cfg.data.path = str(tiny_movielens)
  cfg.data.cache_dir = str(tmp_path_factory.mktemp('cache1'))
  cfg.train.async_checkpoint = False
  workdir = tmp_path_factory.mktemp('stage1')
  train.train_and_evaluate(cfg, str(workdir))
  return workdir
