"""A tiny trained stage-2 run to serve (tiny Gemma, byte tokenizer, 8-event encoder)."""

import pytest

from configs import testing
from user_llm import generation
from user_llm import train


@pytest.fixture(scope='session')
def served_workdir(tiny_movielens, stage1_workdir, tmp_path_factory):
  """A cross-attention run trained one step on the shared stage-1 encoder (tests/conftest.py)."""
  cfg = testing.tiny_userllm_config()
  cfg.data.path = str(tiny_movielens)
  cfg.data.cache_dir = str(tmp_path_factory.mktemp('cache2'))
  cfg.userllm.encoder_workdir = str(stage1_workdir)
  cfg.train.async_checkpoint = False
  cfg.train.num_steps = 1
  workdir = tmp_path_factory.mktemp('stage2')
  train.train_and_evaluate(cfg, str(workdir))
  return workdir


@pytest.fixture(scope='session')
def served_run(served_workdir):
  """(experiment, params) of `served_workdir`, loaded as launch.serve loads it."""
  return generation.load_run(str(served_workdir))
