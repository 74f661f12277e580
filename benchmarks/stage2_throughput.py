r"""Stage-2 training throughput on this machine: examples/s, XLA FLOPs, % of matmul peak.

Trains the default stage-2 config (cross-attention, Enc, real Gemma 3 270M frozen in
bfloat16) for a few steps at each batch size and reports, in one process:
  * the matmul peak of this machine: a jitted 2048x2048 `jnp.dot` in float32 and
    bfloat16 (the frozen Gemma computes in bfloat16, the trained blocks in float32);
  * per batch size: seconds per step and examples/s over `--steps` timed steps (every
    batch shape compiled beforehand), GFLOP per step from XLA's cost analysis of the
    compiled step, achieved GFLOP/s and its share of both peaks;
  * the same at `--baseline_batch` with `config.data.trim_multiple=0` (fixed 32 + 24
    token budgets, answers at [B, 24]): the step before batch trimming, same process.

  python -m benchmarks.stage2_throughput --out benchmarks/stage2_throughput.md
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

_BATCHES = flags.DEFINE_list('batch_sizes', ['1', '2', '4', '8', '16', '32'], 'Batch sizes.')
_STEPS = flags.DEFINE_integer('steps', 12, 'Timed steps per batch size.')
_BASELINE = flags.DEFINE_integer('baseline_batch', 8, 'Batch of the untrimmed row (0 = none).')
_ARG = flags.DEFINE_string('config_arg', '', 'configs/movielens_userllm.py arg string.')
_OUT = flags.DEFINE_string('out', 'benchmarks/stage2_throughput.md', 'Markdown table.')


def matmul_peak(dtype, n: int = 2048, reps: int = 20) -> float:
  """GFLOP/s of a jitted n x n x n `jnp.dot` in `dtype` (best of 3 rounds)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(jnp.dot)
  jax.block_until_ready(f(a, a))
  best = float('inf')
  for _ in range(3):
    t = time.perf_counter()
    for _ in range(reps):
      out = f(a, a)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - t) / reps)
  return 2 * n**3 / best / 1e9


def measure(exp, setup, state, batch_size: int, steps: int, trim: int, rng):
  """(state, s/step, GFLOP/step, distinct shapes) of `steps` timed train steps."""
  from user_llm import sharding  # pylint: disable=g-import-not-at-top
  from user_llm import experiment  # pylint: disable=g-import-not-at-top
  from user_llm import train  # pylint: disable=g-import-not-at-top
  cfg = exp.config
  cfg.train.batch_size, cfg.data.trim_multiple = batch_size, trim
  it = exp.train_dataset(cfg.train.seed)
  batches = [sharding.shard_batch(next(it), exp.mesh) for _ in range(steps)]
  step_fn = train.make_train_step(exp, setup.tx, setup.state_shardings,
                                  {k: v.sharding for k, v in batches[0].items()}, exp.mesh)
  exes = {}
  for b in batches:  # Compile (and run once) every shape before timing.
    key = tuple((k, v.shape) for k, v in sorted(b.items()))
    if key not in exes:
      exe = step_fn.lower(state, b, rng).compile()
      exes[key] = (exe, train.step_flops(exe))
      state, m = exe(state, b, rng)
      jax.block_until_ready(m)
  flops = 0.0
  t = time.perf_counter()
  for b in batches:
    exe, f = exes[tuple((k, v.shape) for k, v in sorted(b.items()))]
    state, m = exe(state, b, rng)
    flops += f
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t) / steps
  return state, dt, flops / steps / 1e9, len(exes)


def main(argv):
  del argv
  from configs import movielens_userllm  # pylint: disable=g-import-not-at-top
  from user_llm import sharding  # pylint: disable=g-import-not-at-top
  from user_llm import experiment  # pylint: disable=g-import-not-at-top
  from user_llm import train  # pylint: disable=g-import-not-at-top

  peak = {'float32': matmul_peak(jnp.float32), 'bfloat16': matmul_peak(jnp.bfloat16)}
  cfg = movielens_userllm.get_config(_ARG.value)
  mesh = sharding.make_mesh(cfg.mesh)
  exp = experiment.build(cfg, mesh)
  init_rng, rng = jax.random.split(jax.random.key(0))
  setup = train.create_train_state(cfg, mesh, exp, init_rng)
  state = setup.from_scratch()
  runs = [(int(b), cfg.data.trim_multiple) for b in _BATCHES.value]
  if _BASELINE.value:
    runs.insert(0, (_BASELINE.value, 0))
  rows = []
  for b, trim in runs:
    state, dt, gflop, shapes = measure(exp, setup, state, b, _STEPS.value, trim, rng)
    rows.append((b, trim, dt, gflop, shapes))
    print(f'batch {b} trim {trim}: {dt:.3f} s/step {b / dt:.2f} ex/s {gflop:.1f} GFLOP/step '
          f'{gflop / dt:.1f} GFLOP/s', flush=True)
  lines = [
      '# Stage-2 training throughput (CPU)\n',
      f'Command: `python -m benchmarks.stage2_throughput` ({jax.devices()[0].device_kind}, '
      f'{jax.device_count()} device(s), {_STEPS.value} timed steps per row, every batch '
      'shape compiled before timing). Config: configs/movielens_userllm.py '
      f'`{_ARG.value or "(default)"}`: cross-attention, Enc, Gemma 3 270M frozen in '
      f'{cfg.llm.param_dtype}, tasks next_item + fav_genre mixed.\n',
      f'Matmul peak measured in the same process (jitted 2048x2048 `jnp.dot`): '
      f'float32 {peak["float32"]:.0f} GFLOP/s, bfloat16 {peak["bfloat16"]:.0f} GFLOP/s.\n',
      '| batch | batches | s / step | examples / s | GFLOP / step (XLA) | GFLOP/s | '
      '% bf16 peak | % f32 peak | compiled shapes |',
      '|---|---|---|---|---|---|---|---|---|',
  ]
  for b, trim, dt, gflop, shapes in rows:
    kind = f'trimmed (multiple {trim})' if trim else 'fixed 56 tokens, 24 answers'
    lines.append(f'| {b} | {kind} | {dt:.3f} | {b / dt:.2f} | {gflop:.1f} | {gflop / dt:.1f} | '
                 f'{100 * gflop / dt / peak["bfloat16"]:.0f}% | '
                 f'{100 * gflop / dt / peak["float32"]:.0f}% | {shapes} |')
  with open(_OUT.value, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
