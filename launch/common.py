"""What every entry point sets up the same way."""

from collections.abc import Callable
import functools
import os
import sys
from typing import Any

from absl import flags
from absl import logging
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


# Errors a user can fix from the message alone: bad data input (data_pipelines.InputError),
# an unusable checkpoint or workdir (checkpointing.CheckpointError), a diverged run.
def _user_errors() -> tuple[type[BaseException], ...]:
  import data_pipelines  # pylint: disable=g-import-not-at-top
  from user_llm import checkpointing  # pylint: disable=g-import-not-at-top
  return data_pipelines.InputError, checkpointing.CheckpointError, FloatingPointError


def exit_on_user_error(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
  """`main` for `app.run`, ending with the one-line message of an error the user can fix
  (the message names the file:line / key / path and the fix) instead of a traceback."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      if not isinstance(e, _user_errors()):
        raise
      logging.debug('Error details', exc_info=True)
      sys.exit(f'Error: {e}')

  return wrapped


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing (`app.run(..., flags_parser=parse_flags)`) whose errors (a bad
  --config file or arg string, a misspelt --config.x key) end with one line naming the
  flag and the fix instead of a traceback."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:  # config_flags puts the config file's traceback in it.
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    where = lines[0].split(': Error whilst')[0]
    sys.exit(f'Error: {where}: {lines[-1]}; fix the flag (--helpfull lists the flags).')
  except (AttributeError, KeyError) as e:  # config_flags: a --config.<key> that is not there.
    key = str(e).strip('"\'').split('\\')[0].strip('"\'')
    hint = str(e).split('\\n')[-1].rstrip('"\'') if 'Did you mean' in str(e) else ''
    named = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.') and key in a]
    sys.exit(f'Error: unknown config key {named[0] if named else key!r}'
             f'{" (" + hint + ")" if hint else ""}; fix the key (the config file lists '
             'every field).')
  config = flags.FLAGS['config'].value if 'config' in flags.FLAGS else None
  if type(config).__name__ == '_ErrorConfig':  # A config file that does not load.
    lines = [l.strip() for l in str(object.__getattribute__(config, '_error')).splitlines()]
    sys.exit(f'Error: --config: {lines[0]} ({lines[-1]}); give an existing configs/*.py.')
  return rest
