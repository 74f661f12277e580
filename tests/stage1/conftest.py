"""Stage-1 test helpers: the repo root and a tiny synthetic config."""

import os
import pathlib
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `configs` is a top-level folder of the repo.
  sys.path.insert(0, str(ROOT))


@pytest.fixture
def tiny_config():
  """`configs/movielens_pretrain.py:runlocal,synthetic`, unlocked for edits."""
  from configs import movielens_pretrain  # pylint: disable=g-import-not-at-top
  return movielens_pretrain.get_config('runlocal,synthetic')



def pytest_configure(config):
  del config
  import jax  # pylint: disable=g-import-not-at-top
  # Repeated identical jits (several runs in one test) reuse compiled programs.
  jax.config.update('jax_compilation_cache_dir',
                    os.path.join(tempfile.gettempdir(), 'user_llm_jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
