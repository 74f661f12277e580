r"""Serves a trained stage-2 (User-LLM) run over HTTP: users' events in, answers out.

  python -m launch.serve --workdir workdirs/stage2_bench/xattn_L50 --port 8000

API and errors: user_llm/serving/server.py; README "Serve users" has a curl session.
The store (--store, default WORKDIR/serving/users.sqlite) keeps every user's events
and cached encoder state across restarts.
"""

import os

from absl import app
from absl import flags
from absl import logging

from launch import common

_WORKDIR = flags.DEFINE_string('workdir', None, 'A stage-2 (userllm) launch.main workdir.')
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Interface to listen on.')
_PORT = flags.DEFINE_integer('port', 8000, 'Port to listen on.')
_STORE = flags.DEFINE_string('store', None, 'SQLite file of the users (default '
                             'WORKDIR/serving/users.sqlite).')
_KEEP = flags.DEFINE_integer('keep', 0, 'Events kept when a history outgrows the encoder '
                             'positions (0 = max_len // 2); see serving/incremental.py.')
_MAX_BATCH = flags.DEFINE_integer('max_batch', 32, 'Asks answered by one generate call.')
_WAIT = flags.DEFINE_float('batch_wait_ms', 5.0, 'How long an ask waits for others.')
_MAX_PROMPT = flags.DEFINE_integer('max_prompt_tokens', 256, 'Longer prompts get 413.')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 128, 'Largest max_new_tokens of an ask.')
_CACHED = flags.DEFINE_integer('memory_cache_users', 64, 'Users whose LLM-side memory '
                               'is kept in RAM (the rest is recomputed from the store).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  common.enable_compilation_cache()
  import uvicorn  # pylint: disable=g-import-not-at-top
  from user_llm import generation  # pylint: disable=g-import-not-at-top
  from user_llm.serving import engine as engine_lib  # pylint: disable=g-import-not-at-top
  from user_llm.serving import server  # pylint: disable=g-import-not-at-top
  from user_llm.serving import store as store_lib  # pylint: disable=g-import-not-at-top

  exp, params = generation.load_run(_WORKDIR.value)
  path = _STORE.value or os.path.join(_WORKDIR.value, 'serving', 'users.sqlite')
  engine = engine_lib.Engine(
      exp, params, store_lib.Store(path), keep=_KEEP.value or None, max_batch=_MAX_BATCH.value,
      max_prompt_tokens=_MAX_PROMPT.value, max_new_tokens=_MAX_NEW.value,
      memory_cache_users=_CACHED.value)
  print(f'Serving {_WORKDIR.value} ({exp.mode}, encoder {engine.digest}) on '
        f'http://{_HOST.value}:{_PORT.value}, store {path}', flush=True)
  uvicorn.run(server.make_app(engine, _WAIT.value), host=_HOST.value, port=_PORT.value,
              log_level='warning')


if __name__ == '__main__':
  app.run(main)
