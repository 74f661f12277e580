"""A tiny MovieLens written by the tests, and a stage-1 run trained on it."""

import pytest

from configs import movielens_pretrain
from user_llm import train
from user_llm.testing import write_movielens


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
