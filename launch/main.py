r"""Entry point: `python -m launch.main --config configs/X.py[:args] --workdir DIR`.

Overrides: `--config.train.num_steps=100` (a misspelt key fails, the config is locked).
Multi-host: the same command on every host. `jax.distributed` starts from the flags
below, from the environment (`JAX_COORDINATOR_ADDRESS`, `USER_LLM_MULTIHOST=1`) or on
a TPU VM by itself (user_llm/multihost.py); e.g. two CPU processes on one machine:
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m launch.main ... \
      --coordinator_address=localhost:1234 --num_processes=2 --process_id=0   # and =1
`launch/tpu_vm.py` runs it on every worker of a TPU VM.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from launch import common
from user_llm import multihost
from user_llm import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with an arg string (file.py:arg).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, TensorBoard).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, "Multi-process: 'host:port' of process 0 (see docstring).")
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Multi-process: number of processes (1 = force one process).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-process: this process.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  logging.info('Config:\n%s', _CONFIG.value)
  logging.info('JAX compilation cache: %s', common.enable_compilation_cache())
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  jax.config.config_with_absl()
  app.run(common.exit_on_user_error(main), flags_parser=common.parse_flags)
