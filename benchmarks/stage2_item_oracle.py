r"""What item alignment taught: next item named from the answer's own embedding.

Rows trained with item read-out + alignment (`benchmarks/stage2.py --rows
xattn_future_align,...`, config arg align=) are re-scored on the same test users and
candidates with the memory replaced by the TRUE next item's own item embedding
(`config.eval.target_item_memory`, `UserLLM.item_memory`): what Gemma can name when
the read-out points exactly at the answer. Far above the history's score, it says the
alignment was learnt and what is lost is between stage 1's next-item vector and an
item's embedding; near it, that the lookup itself was not learnt.

  python -m benchmarks.stage2_item_oracle \
      --workdirs workdirs/stage2_bench_s18/xattn_future_align_L50,workdirs/stage2_bench_s18/xattn_future_random_enc_align_L50
"""

import itertools
import os

from absl import app
from absl import flags
import numpy as np

_WORKDIRS = flags.DEFINE_list('workdirs', [], 'Trained item read-out rows to re-score.')
_NEGATIVES = flags.DEFINE_list('negatives', ['uniform', 'popularity'], 'Protocols.')
_MEMORIES = flags.DEFINE_list('memories', ['true_item'], "'true_item' and/or 'history' "
                               '(the control: the same split of the row\'s own scores).')
_OUT = flags.DEFINE_string('out', 'benchmarks/stage2_item_oracle.md', 'Markdown table.')


def main(argv):
  del argv
  from benchmarks import stage2_lib  # pylint: disable=g-import-not-at-top
  from user_llm import stats  # pylint: disable=g-import-not-at-top
  lines = ['# Stage 2: next item named from the true answer\'s item embedding\n',
           'Command: `python -m benchmarks.stage2_item_oracle` (module docstring). Each row '
           'scored on all test users and the same 20 candidates as its own scores from the '
           'history (`benchmarks/stage2_negatives.md`, both protocols), with the memory the '
           'true next item\'s embedding alone. Chance R@5 0.25.\n',
           '| row | negatives | memory | R@1 | R@5 | R@10 | eval s |', '|---|---|---|---|---|---|---|']
  fmt = lambda e: f'{e.mean:.3f} [{e.lo:.3f}, {e.hi:.3f}]'
  split = ['', '## R@5 with the true item\'s embedding, by how often alignment drew the '
           'item in training\n',
           '| row | power | negatives | memory | never drawn | drawn 1-2 times | 3-9 | 10 or more |',
           '|---|---|---|---|---|---|---|---|']
  for workdir in _WORKDIRS.value:
    draws, targets, power = alignment_draws_of_targets(workdir)
    for negatives, memory in itertools.product(_NEGATIVES.value, _MEMORIES.value):
      cols, seconds = stage2_lib.reevaluate(workdir, tasks=('next_item',), negatives=negatives,
                                            target_item_memory=memory == 'true_item')
      ex = cols['next_item']
      cells = ' | '.join(fmt(stats.bootstrap(np.asarray(ex[f'recall@{k}']), ex['user']))
                         for k in (1, 5, 10))
      lines.append(f'| {os.path.basename(workdir)} | {negatives} | {memory} | {cells} | '
                   f'{seconds:.0f} |')
      print(lines[-1], flush=True)
      n = draws[targets]
      r5 = np.asarray(ex['recall@5'])
      bins = [n == 0, (n >= 1) & (n <= 2), (n >= 3) & (n <= 9), n >= 10]
      split.append(f'| {os.path.basename(workdir)} | {power} | {negatives} | {memory} | ' + ' | '.join(
          f'{r5[m].mean():.3f} ({int(m.sum())} users)' if m.any() else 'n/a' for m in bins)
          + ' |')
      print(split[-1], flush=True)
  with open(_OUT.value, 'w') as f:
    f.write('\n'.join(lines + split) + '\n')


def alignment_draws_of_targets(workdir: str):
  """(draws per item id over the run's steps, test target per evaluated example in the
  evaluators' order, the run's item_alignment_power)."""
  from user_llm import experiment  # pylint: disable=g-import-not-at-top
  from user_llm import sharding  # pylint: disable=g-import-not-at-top
  from user_llm.evaluators import common  # pylint: disable=g-import-not-at-top
  config = experiment.read_config(os.path.join(workdir, 'config.json'))
  exp = experiment.build(config, sharding.make_mesh(config.mesh))
  draws = exp.alignment_draws(config.train.num_steps)
  targets = np.concatenate([b['target'][b['example_mask']]
                            for b in common.eval_batches(exp, 'next_item')])
  return draws, targets, config.train.item_alignment_power


if __name__ == '__main__':
  app.run(main)
