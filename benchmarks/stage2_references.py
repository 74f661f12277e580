r"""Non-LLM references and paired differences for the stage-2 benchmark.

On the same test windows and the same next-item candidates as benchmarks/stage2.py:
  * the stage-1 encoder's own next-item scores (its item head after the last event,
    read at the 20 candidate ids that `evaluators.candidates.sample_negatives` draws
    for the LLM rows, same rng and order), Recall@1/5/10 with the same tie rule;
  * favourite genre by the majority class of the training examples the rows saw;
  * paired differences between benchmark rows (per test user, 95% bootstrap CI),
    read from each row's eval_examples.json.

  python -m benchmarks.stage2_references --out benchmarks/stage2_references.md
  python -m benchmarks.stage2_references --workroot workdirs/stage2_bench_8k --examples 8000 \
      --pairs xattn_seen:xattn_random_enc,xattn_future:xattn_random_enc,xattn_future:xattn_seen \
      --encoders workdirs/stage1/standard/ar_early_seen_s0,workdirs/stage1/standard/ar_early_future_s0 \
      --out benchmarks/stage2_references_8k.md
  python -m benchmarks.stage2_references --workroot workdirs/stage2_bench_s18 \
      --pairs xattn_future_align:xattn_future_random_enc_align \
      --encoders workdirs/stage1/standard/ar_early_future_s0 \
      --coverage_rows xattn_future_align,xattn_future_random_enc_align,workdirs/stage2_bench_s16/xattn_future_L50,workdirs/stage2_bench_s16/xattn_future_random_enc_L50 \
      --out benchmarks/stage2_references_s18.md
"""

import itertools
import json
import os

from absl import app
from absl import flags
import numpy as np

_WORKROOT = flags.DEFINE_string('workroot', 'workdirs/stage2_bench', 'Row workdirs.')
_PAIRS = flags.DEFINE_list('pairs', ['xattn:xattn_random_enc', 'xattn:text_prompt_zeroshot',
                                     'xattn:soft', 'xattn:text_prompt_lora',
                                     'xattn_proj:xattn_proj_random_enc', 'xattn:xattn_perceiver',
                                     'xattn_seen:xattn_random_enc', 'xattn_seen:xattn',
                                     'xattn_seen:text_prompt_lora'],
                           'a:b row pairs whose paired differences to report.')
_ENCODERS = flags.DEFINE_list(
    'encoders', [], 'Stage-1 workdirs whose item heads to score; default: the one the '
    'config loads and the seen-item-bias encoder of the xattn_seen row (at 50 events).')
_HISTORY_LEN = flags.DEFINE_integer('history_len', 50, 'History events before a target.')
_EXAMPLES = flags.DEFINE_integer('examples', 4000, 'Training examples of the rows.')
_OUT = flags.DEFINE_string('out', 'benchmarks/stage2_references.md', 'Markdown.')
# Rows of benchmarks/stage2.py (its flags clash with these, so not imported).
_COVERAGE_ROWS = flags.DEFINE_list(
    'coverage_rows', ['xattn', 'xattn_seen', 'xattn_future', 'xattn_random_enc',
                      'xattn_future_random_enc', 'xattn_proj', 'xattn_proj_random_enc',
                      'xattn_perceiver', 'soft', 'text_prompt_zeroshot', 'text_prompt_lora'],
    'Rows split by whether the test item was a training answer: names under --workroot, '
    'or row workdirs.')


def _fmt(est) -> str:
  return f'{est.mean:.3f} [{est.lo:.3f}, {est.hi:.3f}]'


def majority_reference(exp) -> tuple[str, dict[str, np.ndarray]]:
  """Majority favourite genre of the rows' training examples, hits on the test users."""
  cfg = exp.config
  n = _EXAMPLES.value // 2 // cfg.train.batch_size  # fav_genre half of the mixed batches.
  seen = [b['target'] for b in itertools.islice(
      exp.dataset('train', 'fav_genre', cfg.train.batch_size, cfg.train.seed + 1), n)]
  majority = np.bincount(np.concatenate(seen)).argmax()
  users, hits = [], []
  for b in exp.dataset(cfg.eval.split, 'fav_genre', 16, 0, shuffle=False, num_epochs=1):
    keep = b['example_mask']
    users.append(b['user'][keep])
    hits.append((b['target'][keep] == majority).astype(np.float32))
  name = exp.prepared.genres[majority]
  return name, {'user': np.concatenate(users), 'recall@1': np.concatenate(hits)}


def answer_coverage(exp) -> tuple[np.ndarray, np.ndarray, int]:
  """(test users, bool per test example: its next item was an answer of a training
  example the rows saw, number of distinct training answers)."""
  cfg = exp.config
  n = _EXAMPLES.value // 2 // cfg.train.batch_size  # next_item half (seed + 0) of the mix.
  answers = set(np.concatenate([b['target'][b['example_mask']] for b in itertools.islice(
      exp.dataset('train', 'next_item', cfg.train.batch_size, cfg.train.seed), n)]).tolist())
  users, seen = [], []
  for b in exp.dataset(cfg.eval.split, 'next_item', cfg.eval.batch_size, 0, shuffle=False,
                       num_epochs=1):
    keep = b['example_mask']
    users.append(b['user'][keep])
    seen.append(np.isin(b['target'][keep], list(answers)))
  return np.concatenate(users), np.concatenate(seen), len(answers)


def coverage_table(exp, refs, rows: list[str]) -> list[str]:
  """Next-item R@5 split by whether the test item was a training answer."""
  from user_llm import stats  # pylint: disable=g-import-not-at-top
  users, seen, num_answers = answer_coverage(exp)
  cols = [(f"stage-1 item head ({os.path.basename(w)})", s1) for w, s1 in refs]
  for row in rows:
    workdir = row if os.path.isdir(row) else os.path.join(
        _WORKROOT.value, f'{row}_L{_HISTORY_LEN.value}')
    path = os.path.join(workdir, 'eval_examples.json')
    if os.path.exists(path):
      with open(path) as f:
        cols.append((row, json.load(f)['next_item']))
  lines = ['', '## Next-item R@5 by whether the test item was a training answer\n',
           f'The rows\' {_EXAMPLES.value // 2} next-item training examples have '
           f'{num_answers} distinct answers; {int(seen.sum())} of the {len(seen)} test '
           'items are among them.\n',
           '| row | R@5, item was a training answer | R@5, item never an answer |',
           '|---|---|---|']
  for name, ex in cols:
    if list(ex['user']) != users.tolist():
      continue
    r5 = np.asarray(ex['recall@5'])
    cells = [_fmt(stats.bootstrap(r5[m], users[m])) for m in (seen, ~seen)]
    lines.append(f'| {name} | {cells[0]} | {cells[1]} |')
  return lines


def paired(a: str, b: str) -> list[str]:
  from user_llm import stats  # pylint: disable=g-import-not-at-top
  out = []
  ex = []
  for row in (a, b):
    path = os.path.join(_WORKROOT.value, f'{row}_L{_HISTORY_LEN.value}', 'eval_examples.json')
    if not os.path.exists(path):
      return []
    with open(path) as f:
      ex.append(json.load(f))
  for task, metric in (('fav_genre', 'recall@1'), ('next_item', 'recall@1'),
                       ('next_item', 'recall@5'), ('next_item', 'recall@10')):
    ea, eb = ex[0].get(task), ex[1].get(task)
    if not ea or not eb or ea['user'] != eb['user']:
      continue
    d = np.asarray(ea[metric]) - np.asarray(eb[metric])
    out.append(f'| {a} - {b} | {task} {metric} | {_fmt(stats.bootstrap(d, np.asarray(ea["user"])))} |')
  return out


def main(argv):
  del argv
  from configs import movielens_userllm  # pylint: disable=g-import-not-at-top
  from user_llm import sharding  # pylint: disable=g-import-not-at-top
  from user_llm import stats  # pylint: disable=g-import-not-at-top
  from user_llm import experiment  # pylint: disable=g-import-not-at-top

  # The experiment needs some stage-1 run for its encoder architecture (not its weights).
  arg = f'history_len={_HISTORY_LEN.value}'
  cfg = movielens_userllm.get_config(arg + (f',encoder={_ENCODERS.value[0]}' if _ENCODERS.value else ''))
  cfg.eval.max_batches = -1
  exp = experiment.build(cfg, sharding.make_mesh(cfg.mesh))
  encoders = _ENCODERS.value or [cfg.userllm.encoder_workdir] + (
      ['workdirs/stage1/standard/ar_early_seen_s0'] if _HISTORY_LEN.value == 50 else [])
  from benchmarks import stage2_lib  # pylint: disable=g-import-not-at-top
  refs = [(w, stage2_lib.reference_hits(exp, stage2_lib.stage1_scores(exp, w)))
          for w in encoders if os.path.isdir(w)]
  genre, maj = majority_reference(exp)
  lines = [f'## Non-LLM references and paired differences, rows of {_EXAMPLES.value:,} examples '
           f'({_WORKROOT.value})\n',
           'Command: `python -m benchmarks.stage2_references` (flags: module docstring)\n',
           '| reference | fav-genre R@1 | next-item R@1 | next-item R@5 | next-item R@10 | test users |',
           '|---|---|---|---|---|---|',
           *(f"| stage-1 encoder's item head ({w}) | n/a | "
             + ' | '.join(_fmt(stats.bootstrap(s1[f'recall@{k}'], s1['user'])) for k in (1, 5, 10))
             + f" | {len(s1['user'])} |" for w, s1 in refs),
           f"| majority genre of the training examples ({genre}) | "
           f"{_fmt(stats.bootstrap(maj['recall@1'], maj['user']))} | n/a | n/a | n/a | "
           f"{len(maj['user'])} |",
           '', '## Paired differences (per test user, 95% bootstrap CI)\n',
           '| rows | metric | difference |', '|---|---|---|']
  for pair in _PAIRS.value:
    a, b = pair.split(':')
    lines += paired(a, b)
  lines += coverage_table(exp, refs, _COVERAGE_ROWS.value)
  with open(_OUT.value, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
