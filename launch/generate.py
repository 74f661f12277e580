r"""Answers a prompt contextualised by one user's timeline, from a stage-2 workdir.

  python -m launch.generate --workdir workdirs/userllm_xattn --user_id 414 \
      --prompt "Which movie will this user watch next?"
"""

from absl import app
from absl import flags
from absl import logging

from launch import common
from user_llm import generation

_WORKDIR = flags.DEFINE_string('workdir', None, 'A stage-2 (userllm) launch.main workdir.')
_USER = flags.DEFINE_string('user_id', None, 'Raw user id as in the data files.')
_PROMPT = flags.DEFINE_multi_string('prompt', None, 'Question(s) about the user.')
_MAX = flags.DEFINE_integer('max_new_tokens', 32, 'Tokens to generate at most.')
_TEMP = flags.DEFINE_float('temperature', 0.0, '0 = greedy.')
_TOPK = flags.DEFINE_integer('top_k', 0, 'Top-k sampling (with temperature > 0).')
flags.mark_flags_as_required(['workdir', 'user_id', 'prompt'])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  common.enable_compilation_cache()
  exp, params = generation.load_run(_WORKDIR.value)
  answers = generation.answer(exp, params, _USER.value, _PROMPT.value, _MAX.value,
                              _TEMP.value, _TOPK.value)
  for p, a in zip(_PROMPT.value, answers):
    print(f'user {_USER.value} | {p}\n-> {a}')


if __name__ == '__main__':
  app.run(main)
