"""Run by test_two_processes.py for its one-process references: N stage-1 steps, then
N stage-2 steps (tiny Gemma) on the stage-1 encoder just trained, through the same
`multihost.initialize` and `train.train_and_evaluate` that launch.main calls.

Usage: python train_worker.py OUT_DIR OVERRIDES_JSON [COORDINATOR NUM_PROCESSES PROCESS_ID]
OVERRIDES_JSON: {"stage1": {dotted key: value}, "stage2": {...}}.
"""

import json
import sys

from user_llm import multihost


def _tuples(x):
  return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def main(out: str, overrides: str, *process):
  coordinator, num_processes, process_id = (process[0], int(process[1]), int(process[2])) \
      if process else (None, None, None)
  multihost.initialize(coordinator, num_processes, process_id)
  import jax  # pylint: disable=g-import-not-at-top
  from configs import movielens_pretrain, testing  # pylint: disable=g-import-not-at-top
  from user_llm import train  # pylint: disable=g-import-not-at-top
  overrides = json.loads(overrides)
  # Each process prepares its own data cache, as each TPU VM worker does on its disk.
  cache = f'{out}/cache_p{jax.process_index()}'
  c1 = movielens_pretrain.get_config('runlocal')
  c1.update_from_flattened_dict({k: _tuples(v) for k, v in overrides['stage1'].items()})
  c1.data.cache_dir = cache
  train.train_and_evaluate(c1, f'{out}/stage1')
  c2 = testing.tiny_userllm_config('strategy=full')  # Every param trains (and is sharded).
  c2.update_from_flattened_dict({k: _tuples(v) for k, v in overrides['stage2'].items()})
  c2.data.cache_dir = cache
  c2.userllm.encoder_workdir = f'{out}/stage1'
  train.train_and_evaluate(c2, f'{out}/stage2')
  print('OK', jax.process_index(), flush=True)


if __name__ == '__main__':
  main(*sys.argv[1:])
