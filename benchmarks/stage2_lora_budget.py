r"""How many text-prompt + LoRA training examples a FLOPs budget buys (compile only).

Compiles the stage-2 training step of `configs/movielens_userllm.py:mode=text_prompt,
strategy=lora` on real (trimmed) training batches and reads XLA's cost analysis; no
step runs, so this takes minutes where training the row would take an hour.

  python -m benchmarks.stage2_lora_budget --budget_gflop 89905.5 --batches 6
"""

from absl import app
from absl import flags
import jax
import numpy as np

_BUDGET = flags.DEFINE_float('budget_gflop', 89905.5, 'Training GFLOP of the row to match '
                             '(the cross-attention row of benchmarks/stage2_results.md).')
_BATCHES = flags.DEFINE_integer('batches', 6, 'Training batches to compile and count.')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Global train batch.')


def main(argv):
  del argv
  from configs import movielens_userllm  # pylint: disable=g-import-not-at-top
  from user_llm import experiment  # pylint: disable=g-import-not-at-top
  from user_llm import sharding  # pylint: disable=g-import-not-at-top
  from user_llm import train  # pylint: disable=g-import-not-at-top

  cfg = movielens_userllm.get_config('mode=text_prompt,strategy=lora')
  cfg.train.batch_size = _BATCH.value
  mesh = sharding.make_mesh(cfg.mesh)
  exp = experiment.build(cfg, mesh)
  init_rng, rng = jax.random.split(jax.random.key(0))
  setup = train.create_train_state(cfg, mesh, exp, init_rng)
  batches = exp.train_dataset(cfg.train.seed)
  step_fn, flops = None, []
  for i in range(_BATCHES.value):
    batch = sharding.shard_batch(next(batches), mesh)
    if step_fn is None:
      step_fn = train.make_train_step(exp, setup.tx, setup.state_shardings,
                                      {k: v.sharding for k, v in batch.items()}, mesh)
    flops.append(train.step_flops(step_fn.lower(setup.abstract_state, batch, rng).compile()))
    tokens = int((np.asarray(batch['tokens']) != 0).sum())
    print(f'batch {i}: {tokens} tokens, shape {batch["tokens"].shape}, '
          f'{flops[-1] / 1e9:.1f} GFLOP', flush=True)
  per_example = float(np.mean(flops)) / _BATCH.value
  print(f'{per_example / 1e9:.1f} GFLOP per training example; a budget of '
        f'{_BUDGET.value:.1f} GFLOP buys {_BUDGET.value * 1e9 / per_example:.0f} examples')


if __name__ == '__main__':
  app.run(main)
