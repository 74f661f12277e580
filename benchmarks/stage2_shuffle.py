r"""Does the trained User-LLM read the user? Its scores with another user's history.

For each trained stage-2 row (a workdir of benchmarks/stage2.py), every test user is
scored again with the encoder reading ANOTHER test user's history (the next real row
of the same evaluation batch, `config.eval.shuffle_users=1`), while the prompt, the
candidates and the true answer stay the user's own. The difference from the row's own
scores (its eval_examples.json: same users, same candidates, same order) is what the
user side contributes; 95% bootstrap CIs over users, paired.

  python -m benchmarks.stage2_shuffle --workdirs workdirs/stage2_bench/xattn_L200 \
      --out benchmarks/stage2_shuffle.md

A row whose scores do not move when the history is swapped answers from the prompt
and the answer prior alone. Rows accumulate in `--json`; `--workdirs=` (empty) only
rewrites `--out` from it.
"""

import json
import os

from absl import app
from absl import flags
import numpy as np

_WORKDIRS = flags.DEFINE_list('workdirs', [],
                              'Trained stage-2 row workdirs.')
_SHIFT = flags.DEFINE_integer('shift', 1, 'Each user reads the history of the user this '
                              'many real rows later in its batch.')
_OUT = flags.DEFINE_string('out', 'benchmarks/stage2_shuffle.md', 'Markdown table.')
_JSON = flags.DEFINE_string('json', 'benchmarks/stage2_shuffle.json', 'Per-row results.')
_PAIRS = flags.DEFINE_list('pairs', [], 'a:b row keys of --json (e.g. stage2_bench_s16/'
                           'xattn_future_L50:stage2_bench_s16/xattn_future_random_enc_L50): '
                           'per user, how much more the history moves a than b.')


def compare(own: dict, shuffled: dict) -> dict[str, dict[str, list[float]]]:
  """task/metric -> {'own', 'shuffled', 'own - shuffled'}: [mean, lo, hi] each."""
  from user_llm import stats  # pylint: disable=g-import-not-at-top
  rows = {}
  for task, cols in shuffled.items():
    mine = {k: np.asarray(v) for k, v in own[task].items()}
    if not np.array_equal(mine['user'], cols['user']):
      raise ValueError(f'{task}: the shuffled pass scored other users than the row did.')
    for metric in sorted(k for k in cols if k != 'user'):
      users = cols['user']
      est = {'own': stats.bootstrap(mine[metric], users),
             'shuffled': stats.bootstrap(cols[metric], users),
             'own - shuffled': stats.bootstrap(mine[metric] - cols[metric], users)}
      rows[f'{task}/{metric}'] = {k: [e.mean, e.lo, e.hi] for k, e in est.items()}
  return rows


def effect_pairs(results: dict, pairs: list[str], fmt) -> list[str]:
  """Markdown rows: per user, (own - another) of row a minus that of row b."""
  from user_llm import stats  # pylint: disable=g-import-not-at-top
  if not pairs:
    return []
  lines = ['', 'Difference of the user effects (per user: [own - another] of the first row',
           'minus that of the second; 95% bootstrap CI over users):', '',
           '| rows | metric | difference |', '|---|---|---|']
  for pair in pairs:
    a, b = pair.split(':')
    effect = {}
    for row in (a, b):
      with open(os.path.join(results[row]['workdir'], 'eval_examples.json')) as f:
        own = json.load(f)
      effect[row] = {(t, m): (np.asarray(own[t][m]) - np.asarray(cols[m]), np.asarray(cols['user']))
                     for t, cols in results[row]['shuffled_examples'].items()
                     for m in cols if m != 'user'}
    for key, (ea, users) in effect[a].items():
      eb, users_b = effect[b][key]
      if not np.array_equal(users, users_b):
        raise ValueError(f'{pair}: the rows scored other users on {key[0]}.')
      est = stats.bootstrap(ea - eb, users)
      lines.append(f'| {a} - {b} | {key[0]}/{key[1]} | {fmt([est.mean, est.lo, est.hi])} |')
  return lines


def main(argv):
  del argv
  from benchmarks import stage2_lib  # pylint: disable=g-import-not-at-top
  results = stage2_lib.load_results(_JSON.value)
  for wd in _WORKDIRS.value:
    with open(os.path.join(wd, 'eval_examples.json')) as f:
      own = json.load(f)
    shuffled, seconds = stage2_lib.reevaluate(wd, shuffle_users=_SHIFT.value)
    results[stage2_lib.row_key(wd)] = {
        'workdir': wd, 'shift': _SHIFT.value, 'eval_s': round(seconds),
        'metrics': compare(own, shuffled),
        'shuffled_examples': {t: {k: v.tolist() for k, v in c.items()} for t, c in shuffled.items()}}
    with open(_JSON.value, 'w') as f:
      json.dump(results, f, indent=1)
  lines = ['# Stage 2: scores with another user\'s history (counterfactual)', '',
           'Command: `python -m benchmarks.stage2_shuffle --workdirs ROW_WORKDIR` (rows accumulate',
           'in benchmarks/stage2_shuffle.json). Each test user reads the history of the next',
           'real user of its evaluation batch of 4 (the last batch of an odd count may hold one',
           'user, who then reads their own history); prompt, candidates and answer stay the',
           "user's own. [lo, hi]: 95% bootstrap CI over users; the difference is paired per",
           'user. eval s: the shuffled pass, both tasks, one core beside other work.', '',
           '| row | metric | own history | another user\'s history | own - another | eval s |',
           '|---|---|---|---|---|---|']
  fmt = lambda t: f'{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]'
  for row, r in results.items():
    for metric, m in r['metrics'].items():
      lines.append(f'| {row} | {metric} | {fmt(m["own"])} | {fmt(m["shuffled"])} | '
                   f'{fmt(m["own - shuffled"])} | {r["eval_s"]} |')
  lines += effect_pairs(results, _PAIRS.value, fmt)
  with open(_OUT.value, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
