r"""Entry point: `python -m launch.main --config configs/X.py[:args] --workdir DIR`.

Overrides: `--config.train.num_steps=100` (a misspelt key fails, the config is locked).
"""

import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from launch import common
from user_llm import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with an arg string (file.py:arg).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, TensorBoard).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Multi-host (e.g. a TPU pod slice or a SLURM job): the coordinator comes from env.
  if os.environ.get('JAX_COORDINATOR_ADDRESS') or os.environ.get('USER_LLM_MULTIHOST'):
    jax.distributed.initialize()
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  logging.info('Config:\n%s', _CONFIG.value)
  logging.info('JAX compilation cache: %s', common.enable_compilation_cache())
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  jax.config.config_with_absl()
  app.run(common.exit_on_user_error(main), flags_parser=common.parse_flags)
