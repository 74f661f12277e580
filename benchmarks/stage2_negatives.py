r"""Next-item ranking with popularity-sampled negatives: what the user adds.

benchmarks/stage2.py ranks the true next item among 19 catalogue items drawn
UNIFORMLY: mostly obscure titles, so an answer prior that knows only popularity
(Gemma's, or one learned from the training answers) already ranks the true item high.
This re-scores trained rows (no retraining) with the 19 negatives drawn in proportion
to their training counts (`config.eval.negatives='popularity'`), next to the same
rows' uniform scores, and scores two non-LLM references on the very same candidates
of each protocol: popularity (training counts; every user alike), genre taste (the
history's genre shares, no popularity) and the stage-1 encoder's own item head.

  python -m benchmarks.stage2_negatives \
      --workdirs workdirs/stage2_bench_s16/xattn_future_L50 \
      --encoders workdirs/stage1/standard/ar_early_future_s0 \
      --pairs stage2_bench_s16/xattn_future_L50:stage2_bench_s16/xattn_future_random_enc_L50

Rows and references accumulate in `--json` (per-example hits, so pairs can be drawn
later); `--workdirs=` with `--references=false` only rewrites `--out` from it.
"""

import json
import os

from absl import app
from absl import flags
import numpy as np

_WORKDIRS = flags.DEFINE_list('workdirs', [], 'Trained stage-2 row workdirs to re-score.')
_ENCODERS = flags.DEFINE_list('encoders', ['workdirs/stage1/standard/ar_early_future_s0'],
                              'Stage-1 workdirs whose item heads to score as references.')
_REFERENCES = flags.DEFINE_bool('references', True, 'Score the non-LLM references.')
_ZEROSHOT = flags.DEFINE_bool('zeroshot', False, 'Score the frozen Gemma reading the text '
                              'history (nothing to train) with popularity-sampled negatives.')
_HISTORY_LEN = flags.DEFINE_integer('history_len', 50, 'History events (references).')
_TEST_EVENTS = flags.DEFINE_integer('test_events', 1, 'Test targets per user (references; '
                                    'the rows\' own come from their configs).')
_DROP_LAST = flags.DEFINE_integer('drop_last', 0, 'Events removed from each timeline first '
                                  '(references; the model-selection split of the *_sel rows).')
_POPULARITY = flags.DEFINE_bool('popularity', True, 'Re-score --workdirs with popularity-sampled '
                                'negatives (~37 min a row at 5 targets per user on one core); '
                                'false: their own uniform scores only.')
_PAIRS = flags.DEFINE_list('pairs', [], 'a:b row keys of --json: paired differences.')
_JSON = flags.DEFINE_string('json', 'benchmarks/stage2_negatives.json', 'Per-example results.')
_OUT = flags.DEFINE_string('out', 'benchmarks/stage2_negatives.md', 'Markdown tables.')

PROTOCOLS = ('uniform', 'popularity')
METRICS = ('recall@1', 'recall@5', 'recall@10')


def _lists(cols: dict) -> dict[str, list]:
  return {k: np.asarray(v).tolist() for k, v in cols.items()}


def score_row(workdir: str, popularity: bool = True) -> dict:
  """A row's next-item hits under both protocols (uniform: its own eval_examples.json;
  popularity-sampled: re-scored, or None when `popularity` is False)."""
  from benchmarks import stage2_lib  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, 'eval_examples.json')) as f:
    uniform = json.load(f)['next_item']
  if not popularity:
    return {'workdir': workdir, 'eval_s': 0, 'uniform': uniform, 'popularity': None}
  popular, seconds = stage2_lib.reevaluate(workdir, tasks=('next_item',),
                                           negatives='popularity')
  return {'workdir': workdir, 'eval_s': round(seconds),
          'uniform': uniform, 'popularity': _lists(popular['next_item'])}


def score_zeroshot(history_len: int) -> dict:
  """The frozen Gemma reading the text history, popularity-sampled negatives only (its
  uniform scores: the text_prompt_zeroshot row of benchmarks/stage2_results.md)."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import stage2_lib  # pylint: disable=g-import-not-at-top
  from configs import movielens_userllm  # pylint: disable=g-import-not-at-top
  cfg = movielens_userllm.get_config(f'mode=text_prompt,strategy=enc,history_len={history_len}')
  cfg.eval.max_batches = -1
  popular, seconds = stage2_lib.run_evaluators(
      cfg, lambda exp: exp.load_pretrained(exp.init_params(jax.random.PRNGKey(0))),
      tasks=('next_item',), negatives='popularity')
  return {'workdir': '', 'eval_s': round(seconds), 'uniform': None,
          'popularity': _lists(popular['next_item'])}


def score_references(encoders: list[str], history_len: int,
                     test_events: int = 1, drop_last: int = 0) -> dict[str, dict]:
  """Popularity and each stage-1 item head, hits under both protocols."""
  from benchmarks import stage2_lib  # pylint: disable=g-import-not-at-top
  from configs import movielens_userllm  # pylint: disable=g-import-not-at-top
  from user_llm import experiment  # pylint: disable=g-import-not-at-top
  from user_llm import sharding  # pylint: disable=g-import-not-at-top
  # The experiment needs some stage-1 run for its encoder architecture (not its weights).
  cfg = movielens_userllm.get_config(
      f'history_len={history_len},test_events={test_events},drop_last={drop_last},'
      f'encoder={encoders[0]}')
  cfg.eval.max_batches = -1
  exp = experiment.build(cfg, sharding.make_mesh(cfg.mesh))
  scorers = {'popularity (training counts)': stage2_lib.popularity_scores(exp),
             "genre taste (history's genre shares)": stage2_lib.genre_taste_scores(exp)}
  for w in encoders:
    scorers[f"stage-1 item head ({w})"] = stage2_lib.stage1_scores(exp, w)
  out = {}
  for name, fn in scorers.items():
    out[f'reference: {name}'] = {}
    for protocol in PROTOCOLS:
      exp.config.eval.negatives = protocol
      out[f'reference: {name}'][protocol] = _lists(stage2_lib.reference_hits(exp, fn))
  return out


def tables(results: dict, pairs: list[str]) -> list[str]:
  """Markdown: every row and reference under both protocols, then paired differences."""
  from user_llm import stats  # pylint: disable=g-import-not-at-top
  fmt = lambda e: f'{e.mean:.3f} [{e.lo:.3f}, {e.hi:.3f}]'
  est = lambda cols, m: stats.bootstrap(np.asarray(cols[m], np.float64), np.asarray(cols['user']))
  head = ' | '.join(f'{p} R@{m[7:]}' for p in PROTOCOLS for m in METRICS)
  lines = ['| row | ' + head + ' | test targets / users |', '|---|' + '---|' * (2 * len(METRICS) + 1)]
  for row, r in sorted(results.items(), key=lambda kv: not kv[0].startswith('reference')):
    cells = [fmt(est(r[p], m)) if r[p] else 'n/a' for p in PROTOCOLS for m in METRICS]
    users = next(r[p]['user'] for p in PROTOCOLS if r[p])
    lines.append(f"| {row} | {' | '.join(cells)} | {len(users)} / {len(set(users))} |")
  if pairs:
    lines += ['', 'Paired differences (per test user, same candidates; 95% bootstrap CI):', '',
              '| rows | protocol | R@1 | R@5 | R@10 |', '|---|---|---|---|---|']
    for pair in pairs:
      a, b = (results[k] for k in pair.split(':'))
      for p in PROTOCOLS:
        if not a[p] or not b[p]:
          continue
        if a[p]['user'] != b[p]['user']:
          raise ValueError(f'{pair}: the rows scored other users under {p}.')
        d = {m: np.asarray(a[p][m], np.float64) - np.asarray(b[p][m]) for m in METRICS}
        users = np.asarray(a[p]['user'])
        lines.append(f"| {pair.replace(':', ' - ')} | {p} | "
                     + ' | '.join(fmt(stats.bootstrap(d[m], users)) for m in METRICS) + ' |')
  return lines


def main(argv):
  del argv
  from benchmarks import stage2_lib  # pylint: disable=g-import-not-at-top
  results = stage2_lib.load_results(_JSON.value)
  if _REFERENCES.value:
    results.update(score_references(_ENCODERS.value, _HISTORY_LEN.value, _TEST_EVENTS.value,
                                    _DROP_LAST.value))
  if _ZEROSHOT.value:
    # Keys name rows in --pairs (a comma-separated list): no commas.
    results[f'zeroshot/text_prompt_L{_HISTORY_LEN.value} (frozen Gemma)'] = (
        score_zeroshot(_HISTORY_LEN.value))
    with open(_JSON.value, 'w') as f:
      json.dump(results, f)
  for wd in _WORKDIRS.value:
    results[stage2_lib.row_key(wd)] = score_row(wd, _POPULARITY.value)
    with open(_JSON.value, 'w') as f:  # After each row: a killed run keeps the finished ones.
      json.dump(results, f)
  with open(_JSON.value, 'w') as f:
    json.dump(results, f)
  lines = ['# Stage 2: next item with uniform vs popularity-sampled negatives', '',
           'Command: `python -m benchmarks.stage2_negatives` (flags: module docstring). Each',
           'test target (one per user, 373 users at 50 events, unless the table says more) ranks',
           'its true next item among 19 negatives drawn',
           'uniformly from the catalogue (the protocol of benchmarks/stage2.py) or in',
           'proportion to their training counts (`config.eval.negatives=popularity`); rows are',
           'the trained stage-2 workdirs, re-scored without retraining; references score the',
           'same candidates. [lo, hi]: 95% bootstrap CI over users. Chance: R@1 0.05, R@5',
           '0.25, R@10 0.50.', '', *tables(results, _PAIRS.value)]
  with open(_OUT.value, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
