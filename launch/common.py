"""What every entry point sets up the same way."""

import os

import jax


def enable_compilation_cache() -> str:
  """Turns on JAX's persistent compilation cache ($USER_LLM_JAX_CACHE or
  ~/.cache/user_llm/jax): a relaunch (a resumed run, a second `launch.generate`
  question) reuses the compiled programs instead of compiling Gemma again."""
  if jax.config.jax_compilation_cache_dir:  # Set by JAX_COMPILATION_CACHE_DIR: kept.
    return jax.config.jax_compilation_cache_dir
  path = os.environ.get('USER_LLM_JAX_CACHE', os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'user_llm', 'jax'))
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  return path
