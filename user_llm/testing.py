"""Helpers for tests that launch subprocesses (like `gm.testing`)."""

import os
import pathlib
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def launcher_env(**extra) -> dict[str, str]:
  """Environment of a launcher subprocess: CPU, repo importable, own XLA flags."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu',
             # Identical launches reuse compiled programs (the suite has a CI budget).
             JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), 'user_llm_jax_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  env.pop('XLA_FLAGS', None)
  env.update(extra)
  return env
