"""Shared fixtures: one converted Gemma 3 270M for the whole test session."""

import os
import pathlib

import pytest


@pytest.fixture(scope='session')
def gemma_cache_dir(tmp_path_factory) -> pathlib.Path:
  """USER_LLM_GEMMA_CACHE if set (CI converts into it once), else a fresh tmp dir."""
  path = os.environ.get('USER_LLM_GEMMA_CACHE')
  return pathlib.Path(path) if path else tmp_path_factory.mktemp('gemma')
