r"""Stage-1 benchmark on MovieLens ml-latest-small: every row x seed x protocol.

  python -m benchmarks.stage1_benchmark                      # everything, 3 seeds
  python -m benchmarks.stage1_benchmark --rows ar_early --seeds 0 --protocols standard
  python -m benchmarks.stage1_benchmark --report_only        # rewrite the markdown
  python -m benchmarks.stage1_benchmark --rows A,B --split validation   # model selection

Each run is one launcher call (`python -m launch.main --config
configs/movielens_pretrain.py:<row args>,protocol=<p> --config.train.seed=<s>`) in
`workdirs/stage1/<protocol>/<row>_s<seed>`; a finished workdir (results.json) is
reused. Its log streams here (steps/s, ETA). `--split validation` scores each
finished run's final checkpoint on the validation target instead (each user's event
before the test one; the trained model is the same) in
`workdirs/stage1/<protocol>/validation/<row>_s<seed>` and tabulates that split: defaults
are chosen on these tables only, never on the test ones. Per run, results.json is copied to
benchmarks/stage1_runs/<protocol>_<row>_s<seed>.json (validation:
<protocol>_validation_<row>_s<seed>.json); eval_examples.json (one value
per test target) stays in the workdir and feeds the tables:
- every figure is the mean over seeds of the per-target value, with a 95%
  bootstrap CI over users (user_llm/stats.py);
- protocol (c), 'full_window', is the subset of protocol (a)'s test targets whose
  user has >= history_len + 2 events (the 373 users of stage 2; same model, same
  target, same history), so it needs no runs of its own;
- paired differences (the default AR row minus another row, same targets) say whether
  two rows can be told apart.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

from user_llm import stats

ROWS = {  # row -> (label, config arg)
    # The default since session 10: seen-item bias + the items 1..5 events ahead as targets.
    'ar_early_future': ('AR encoder, early fusion + seen-item bias + 5-event target horizon '
                        '(User-LLM, default config)',
                        'model=ar,fusion=early,seen_bias=True,item_dropout=0.0,future=5'),
    # The default + event-time features (log2 gap to the previous event, calendar year).
    'ar_early_time': ('AR encoder, early fusion + seen-item bias + 5-event target horizon '
                      '+ time features (gap, year)',
                      'model=ar,fusion=early,seen_bias=True,item_dropout=0.0,future=5,'
                      'time=gap+year'),
    # The default + item content (all genres, release year) in the tied item head.
    'ar_early_side': ('AR encoder, early fusion + seen-item bias + 5-event target horizon '
                      '+ item content in the head (genres, year)',
                      'model=ar,fusion=early,seen_bias=True,item_dropout=0.0,future=5,'
                      'side=genres+year'),
    'ar_early_seen': ('AR encoder, early fusion + seen-item bias (next event only)',
                      'model=ar,fusion=early,seen_bias=True,item_dropout=0.0,future=1'),
    'ar_early_drop': ('AR encoder, early fusion + seen-item bias + item dropout 0.2',
                      'model=ar,fusion=early,seen_bias=True,item_dropout=0.2,future=1'),
    'ar_late_seen': ('AR encoder, late fusion + seen-item bias',
                     'model=ar,fusion=late,seen_bias=True,item_dropout=0.0,future=1'),
    # Without the head's seen-item bias (the default before 2026-12-01); stage 2's
    # benchmark rows read ar_early's seed-0 encoder.
    'ar_early': ('AR encoder, early fusion, no seen-item bias',
                 'model=ar,fusion=early,seen_bias=False,item_dropout=0.0,future=1'),
    'ar_late': ('AR encoder, late fusion, no seen-item bias',
                'model=ar,fusion=late,seen_bias=False,item_dropout=0.0,future=1'),
    'dual': ('Dual Encoder', 'model=dual'),
    'bert4rec': ('Bert4Rec', 'model=bert4rec,seen_bias=False'),
    # The same bias on Bert4Rec's head (the items it reads unmasked): the fair comparison.
    'bert4rec_seen': ('Bert4Rec + seen-item bias', 'model=bert4rec,seen_bias=True'),
    'popularity': ('Popularity', 'model=popularity'),
}
PROTOCOLS = ('standard', 'multi_target')  # + 'selection', 'selection_multi' (on request)
# Paired differences: against the first of these rows present.
BASE_ROWS = ('ar_early_future', 'ar_early_seen', 'ar_early')
HISTORY_LEN = 50  # config.data.history_len of the runs (events before a target).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS_DIR = os.path.join(ROOT, 'benchmarks', 'stage1_runs')
_PROGRESS = re.compile(r'(step \d+/\d+ .*|eval step \d+)')


def workdir(protocol: str, row: str, seed: int, split: str = 'test') -> str:
  sub = () if split == 'test' else (split,)
  return os.path.join(ROOT, 'workdirs', 'stage1', protocol, *sub, f'{row}_s{seed}')


def command(protocol: str, row: str, seed: int, extra: list[str]) -> list[str]:
  return [sys.executable, '-m', 'launch.main',
          f'--config=configs/movielens_pretrain.py:{ROWS[row][1]},protocol={protocol}',
          f'--config.train.seed={seed}', f'--workdir={workdir(protocol, row, seed)}', *extra]


def validate(protocol: str, row: str, seed: int, extra: list[str]) -> None:
  """Scores a finished run's final checkpoint on the validation split (a copy of the
  run's workdir: the launcher resumes the finished run and only evaluates)."""
  src, wd = workdir(protocol, row, seed), workdir(protocol, row, seed, 'validation')
  if os.path.exists(os.path.join(wd, 'results.json')):
    return
  if not os.path.exists(os.path.join(src, 'results.json')):
    raise FileNotFoundError(f'{src}/results.json: train {row} seed {seed} first (without '
                            '--split validation).')
  shutil.rmtree(wd, ignore_errors=True)
  shutil.copytree(src, wd, ignore=shutil.ignore_patterns('results.json', 'eval_examples.json',
                                                         'tb', 'launch.log'))
  cmd = [c if not c.startswith('--workdir=') else f'--workdir={wd}'
         for c in command(protocol, row, seed, extra)] + ['--config.eval.split=validation']
  with open(os.path.join(wd, 'launch.log'), 'w') as log:
    if subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode:
      raise RuntimeError(f'validation of {row} seed {seed} failed; see {wd}/launch.log')
  # The training wall time is the training run's, not this evaluation's.
  with open(os.path.join(src, 'results.json')) as f:
    trained = json.load(f)
  with open(os.path.join(wd, 'results.json')) as f:
    scored = json.load(f)
  scored['train_wall_s'] = trained['train_wall_s']
  with open(os.path.join(wd, 'results.json'), 'w') as f:
    json.dump(scored, f, indent=1)
  os.makedirs(RUNS_DIR, exist_ok=True)
  shutil.copy(os.path.join(wd, 'results.json'),
              os.path.join(RUNS_DIR, f'{protocol}_validation_{row}_s{seed}.json'))


def run(protocol: str, row: str, seed: int, extra: list[str]) -> dict:
  """Trains one run unless its results exist; streams its progress lines."""
  wd = workdir(protocol, row, seed)
  results = os.path.join(wd, 'results.json')
  if not os.path.exists(results):
    os.makedirs(wd, exist_ok=True)
    t = time.time()
    with open(os.path.join(wd, 'launch.log'), 'w') as log:
      proc = subprocess.Popen(command(protocol, row, seed, extra), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for line in proc.stdout:
        log.write(line)
        m = _PROGRESS.search(line)
        if m:
          print(f'  [{protocol} {row} s{seed}] {m.group(1)[:100]}', flush=True)
      if proc.wait():
        raise RuntimeError(f'{row} seed {seed} ({protocol}) failed; see {wd}/launch.log')
    print(f'{protocol} {row} s{seed}: {time.time() - t:.0f} s', flush=True)
  os.makedirs(RUNS_DIR, exist_ok=True)
  shutil.copy(results, os.path.join(RUNS_DIR, f'{protocol}_{row}_s{seed}.json'))
  with open(results) as f:
    return json.load(f)


def load_examples(protocol: str, row: str, seeds: list[int],
                  split: str = 'test') -> dict[str, np.ndarray] | None:
  """Per-target values averaged over the seeds that finished (same targets in each)."""
  runs = []
  for s in seeds:
    path = os.path.join(workdir(protocol, row, s, split), 'eval_examples.json')
    if os.path.exists(path):
      with open(path) as f:
        runs.append({k: np.asarray(v) for k, v in json.load(f).items()})
  if not runs:
    return None
  out = dict(runs[0])
  for k in runs[0]:
    if k not in ('user', 'target_index', 'num_events'):
      out[k] = np.mean([r[k] for r in runs], axis=0)
  out['num_seeds'] = len(runs)
  out['runs_recall@10'] = np.stack([r['recall@10'] for r in runs])  # [S, N]: per seed.
  return out


def subset(ex: dict, keep: np.ndarray) -> dict:
  """The targets where `keep` [N] is True (per-seed [S, N] arrays too)."""
  return {k: (v[..., keep] if isinstance(v, np.ndarray) else v) for k, v in ex.items()}


METRICS = (('recall@1', 'R@1'), ('recall@5', 'R@5'), ('recall@10', 'R@10'),
           ('ndcg@10', 'NDCG@10'), ('unseen/recall@10', 'R@10 unseen'))


def table(protocol: str, examples: dict, results: dict, title: str) -> list[str]:
  lines = [f'### {title}', '',
           '| model | ' + ' | '.join(n for _, n in METRICS)
           + ' | R@10 per seed | train wall (mean) | steps x batch | targets / users |',
           '|---|' + '---|' * (len(METRICS) + 4)]
  for row, ex in examples.items():
    if ex is None:
      continue
    cells = [stats.bootstrap(ex[k], ex['user']).fmt() for k, _ in METRICS]
    runs = results[row]
    per_seed = ', '.join(f"{r['recall@10']:.4f}" for r in runs) if protocol != 'full_window' else '(subset)'
    wall = np.mean([r['train_wall_s'] for r in runs]) / 60
    cfg = runs[0].get('config', {})
    lines.append(f"| {ROWS[row][0]} | {' | '.join(cells)} | {per_seed} | {wall:.1f} min "
                 f"| {cfg.get('num_steps')} x {cfg.get('batch_size')} "
                 f"| {len(ex['user'])} / {len(np.unique(ex['user']))} |")
  lines.append('')
  base_row = next((r for r in BASE_ROWS if examples.get(r) is not None), None)
  if base_row is not None:
    base = examples[base_row]
    lines += [f'Paired difference in R@10, {ROWS[base_row][0]} minus the row (same targets, '
              '95% bootstrap CI over users: an interval without 0 separates these trained '
              'models; then, with 2+ seeds per row, the interval that also resamples each '
              'row\'s seeds (`stats.bootstrap_runs`): one without 0 separates the '
              'configurations):', '']
    for row, ex in examples.items():
      if row != base_row and ex is not None:
        d = stats.bootstrap(base['recall@10'] - ex['recall@10'], ex['user'])
        line = f'- vs {ROWS[row][0]}: {d.fmt()}'
        if min(base['num_seeds'], ex['num_seeds']) > 1:
          both = stats.bootstrap_runs(base['runs_recall@10'], ex['runs_recall@10'], ex['user'])
          line += f'; seeds and users [{both.lo:.4f}, {both.hi:.4f}]'
        lines.append(line)
    lines.append('')
  return lines


def probe_table(path: str) -> list[str]:
  """The linear-probe table from benchmarks/stage1_probe.py's JSON."""
  with open(path) as f:
    r = json.load(f)
  lines = [f"### Linear probes on frozen encoder outputs ({r['test_users']} test users, "
           f"{r['train_windows']:,} training windows, {r['folds']}-fold cross-fitting over users)",
           '', '| features | favourite genre acc | next-event genre acc |', '|---|---|---|']
  for name, v in r['rows'].items():
    cells = [f'{m:.3f} [{lo:.3f}, {hi:.3f}]' for m, lo, hi in (v['fav_genre'], v['next_genre'])]
    lines.append(f'| {name} | {cells[0]} | {cells[1]} |')
  return lines + ['']


def report(rows: list[str], seeds: list[int], protocols: list[str], split: str = 'test') -> str:
  out = []
  for protocol in protocols:
    examples = {r: load_examples(protocol, r, seeds, split) for r in rows}
    results = {}
    for r in rows:
      paths = [os.path.join(workdir(protocol, r, s, split), 'results.json') for s in seeds]
      results[r] = [json.load(open(p)) for p in paths if os.path.exists(p)]
    name = {'standard': '(a) standard leave-one-out, all users',
            'multi_target': '(b) multi-target: last 5 events of every user',
            'selection': ('(s) selection: (a) without each user\'s last event, scored on '
                          'the event before it (model selection)'),
            'selection_multi': ('(s5) selection, 5 targets per user: timelines without '
                                'their last 5 events, scored on the 5 before them '
                                '(model selection)')}[protocol]
    if split != 'test':
      name += f', {split.upper()} target (model selection)'
    out += table(protocol, examples, results, f'Protocol {name}')
    if protocol == 'standard' and split == 'test':
      full = {r: (subset(ex, ex['num_events'] >= HISTORY_LEN + 2) if ex is not None else None)
              for r, ex in examples.items()}
      out += table('full_window', full, results,
                    '(c) full 50-event windows (users with >= 52 events; subset of (a))')
  probe_json = os.path.join(ROOT, 'benchmarks', 'stage1_probe.json')
  if os.path.exists(probe_json):
    out += probe_table(probe_json)
  return '\n'.join(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rows', default=','.join(ROWS))
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--protocols', default=','.join(PROTOCOLS))
  parser.add_argument('--report_only', action='store_true', help='Only rewrite the tables.')
  parser.add_argument('--split', default='test', choices=('test', 'validation'),
                      help='validation: score the finished runs on the validation target.')
  parser.add_argument('--out', default=os.path.join(ROOT, 'workdirs', 'stage1', 'tables.md'),
                      help='Generated tables (benchmarks/stage1_results.md quotes them).')
  parser.add_argument('extra', nargs='*', help='Extra launcher flags for every run.')
  args = parser.parse_args()
  rows, protocols = args.rows.split(','), args.protocols.split(',')
  seeds = [int(s) for s in args.seeds.split(',')]
  todo = [(p, r, s) for p in protocols for r in rows for s in seeds]
  t0 = time.time()
  for i, (p, r, s) in enumerate(todo):
    if not args.report_only:
      run(p, r, s, args.extra)
      if args.split == 'validation':
        validate(p, r, s, args.extra)
      done = time.time() - t0
      print(f'run {i + 1}/{len(todo)} done, {done / 60:.1f} min elapsed', flush=True)
  text = report(rows, seeds, protocols, args.split)
  with open(args.out, 'w') as f:
    f.write(text + '\n')
  print(text)


if __name__ == '__main__':
  main()
