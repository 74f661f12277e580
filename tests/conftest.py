"""Shared fixtures: one converted Gemma 3 270M, a tiny MovieLens written by the tests and
a stage-1 run trained on it, each once for the whole test session."""

import os
import pathlib

import pytest

from configs import movielens_pretrain
from user_llm import train
from user_llm.testing import write_movielens


@pytest.fixture(scope='session')
def gemma_cache_dir(tmp_path_factory) -> pathlib.Path:
  """USER_LLM_GEMMA_CACHE if set (CI converts into it once), else a fresh tmp dir."""
  path = os.environ.get('USER_LLM_GEMMA_CACHE')
  return pathlib.Path(path) if path else tmp_path_factory.mktemp('gemma')


@pytest.fixture(scope='session')
def tiny_movielens(tmp_path_factory) -> pathlib.Path:
  return write_movielens(tmp_path_factory.mktemp('ml'))


@pytest.fixture(scope='session')
def stage1_workdir(tiny_movielens, tmp_path_factory) -> pathlib.Path:
  """A runlocal stage-1 AR run (a few steps) on `tiny_movielens`."""
  cfg = movielens_pretrain.get_config('runlocal')
  cfg.data.path = str(tiny_movielens)
  cfg.data.cache_dir = str(tmp_path_factory.mktemp('cache1'))
  cfg.train.async_checkpoint = False
  workdir = tmp_path_factory.mktemp('stage1')
  train.train_and_evaluate(cfg, str(workdir))
  return workdir
