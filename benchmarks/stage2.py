r"""Stage-2 benchmark: User-LLM variants against the text-prompt baseline on MovieLens.

Every row trains `configs/movielens_userllm.py` with the real Gemma 3 270M on the
same examples (`--examples`, tasks next_item + fav_genre mixed, same seed and order),
then is scored on ALL test users (one window each), every metric with a 95%
bootstrap CI over users. Each row runs in a fresh process so its peak RSS is its own.
Text prompt + LoRA trains at the FLOPs the cross-attention row spent (XLA cost
analysis, `config.train.flop_budget`): the examples that budget buys are reported.

  python -m benchmarks.stage2 --examples 4000 --out benchmarks/stage2_results.md
  python -m benchmarks.stage2 --rows xattn,xattn_random_enc ...   # a subset, in order

Results are appended to `--jsonl` as each row finishes and the markdown table is
rewritten from it, so an interrupted run keeps its finished rows.
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging

# name -> (config arg, description). Strategy 'enc' unless the name says otherwise.
ROWS = {
    'xattn': ('mode=cross_attention', 'cross-attention, Enc'),
    # The stage-1 default since 2026-12-01 (seen-item bias in its head); same architecture,
    # so xattn_random_enc is its random counterpart too.
    'xattn_seen': ('mode=cross_attention,encoder=workdirs/stage1/standard/ar_early_seen_s0',
                   'cross-attention, Enc, stage-1 encoder with seen-item bias'),
    # The stage-1 default since session 10 (seen-item bias + a 5-event target horizon).
    'xattn_future': ('mode=cross_attention,encoder=workdirs/stage1/standard/ar_early_future_s0',
                     'cross-attention, Enc, stage-1 encoder with seen-item bias + 5-event horizon'),
    'xattn_random_enc': ('mode=cross_attention,random_encoder', 'cross-attention, random encoder, Enc'),
    # The same, its architecture read from the session-10 default's run (the encoder
    # architecture is that of ar_early_s0; what differs is stage 1's head and loss).
    'xattn_future_random_enc': (
        'mode=cross_attention,random_encoder,encoder=workdirs/stage1/standard/ar_early_future_s0',
        'cross-attention, random encoder, Enc'),
    # + the user-contrastive loss term (config.train.user_contrast, weight 1.0 chosen a
    # priori, session 17): each answer likelier with its own user's history than another's.
    'xattn_future_contrast': (
        'mode=cross_attention,contrast=1.0,encoder=workdirs/stage1/standard/ar_early_future_s0',
        'cross-attention, Enc, stage-1 encoder (seen-item bias + 5-event horizon), + user-contrastive loss'),
    'xattn_future_random_enc_contrast': (
        'mode=cross_attention,random_encoder,contrast=1.0,'
        'encoder=workdirs/stage1/standard/ar_early_future_s0',
        'cross-attention, random encoder, Enc, + user-contrastive loss'),
    # Proj (encoder frozen) with the session-10 default encoder and its random twin.
    'xattn_future_proj': (
        'mode=cross_attention,strategy=proj,encoder=workdirs/stage1/standard/ar_early_future_s0',
        'cross-attention, Proj (encoder frozen), stage-1 encoder (seen-item bias + 5-event horizon)'),
    'xattn_future_proj_random_enc': (
        'mode=cross_attention,strategy=proj,random_encoder,'
        'encoder=workdirs/stage1/standard/ar_early_future_s0',
        'cross-attention, Proj, random frozen encoder'),
    # + item alignment with stage 1's item read-out in the memory (config arg align=,
    # weight 1.0 and its settings chosen a priori, session 18): Gemma is taught to name
    # any catalogue item from its embedding, so the tied head's next-item vector can be
    # read as titles that no next-item example taught.
    'xattn_future_align': (
        'mode=cross_attention,align=1.0,encoder=workdirs/stage1/standard/ar_early_future_s0',
        'cross-attention, Enc, stage-1 encoder (seen-item bias + 5-event horizon), + item read-out and alignment'),
    'xattn_future_random_enc_align': (
        'mode=cross_attention,random_encoder,align=1.0,'
        'encoder=workdirs/stage1/standard/ar_early_future_s0',
        'cross-attention, random encoder, Enc, + item read-out and alignment'),
    # Five test targets per user (each user's last 5 events, each with the 50 before it;
    # ~5x the targets of the rows above, so narrower intervals over the same users), with
    # the stage-1 default trained on the split that held those events out (protocol
    # multi_target), and its random twin (session 19).
    'xattn_future_mt': (
        'mode=cross_attention,test_events=5,encoder=workdirs/stage1/multi_target/ar_early_future_s0',
        'cross-attention, Enc, stage-1 encoder (protocol multi_target), 5 test targets per user'),
    'xattn_future_mt_random_enc': (
        'mode=cross_attention,random_encoder,test_events=5,'
        'encoder=workdirs/stage1/multi_target/ar_early_future_s0',
        'cross-attention, random encoder, Enc, 5 test targets per user'),
    # The encoder fine-tuned at 0.1x the lr of the new parts (config arg enc_lr, factor
    # chosen a priori, session 20), first on a model-selection split that never reads a
    # test target (*_sel: each user's last 5 events dropped, the 5 before them the
    # targets, stage-1 protocol selection_multi), then on the *_mt test targets.
    'xattn_sel_enclr': (
        'mode=cross_attention,enc_lr=0.1,drop_last=5,test_events=5,'
        'encoder=workdirs/stage1/selection_multi/ar_early_future_s0',
        'cross-attention, Enc, encoder lr 0.1x, stage-1 encoder (protocol selection_multi), '
        'SELECTION targets (last 5 events dropped, the 5 before them)'),
    'xattn_sel_enclr_random_enc': (
        'mode=cross_attention,random_encoder,enc_lr=0.1,drop_last=5,test_events=5,'
        'encoder=workdirs/stage1/selection_multi/ar_early_future_s0',
        'cross-attention, random encoder, Enc, encoder lr 0.1x, SELECTION targets'),
    'xattn_future_mt_enclr': (
        'mode=cross_attention,enc_lr=0.1,test_events=5,'
        'encoder=workdirs/stage1/multi_target/ar_early_future_s0',
        'cross-attention, Enc, encoder lr 0.1x, stage-1 encoder (protocol multi_target), '
        '5 test targets per user'),
    'xattn_future_mt_enclr_random_enc': (
        'mode=cross_attention,random_encoder,enc_lr=0.1,test_events=5,'
        'encoder=workdirs/stage1/multi_target/ar_early_future_s0',
        'cross-attention, random encoder, Enc, encoder lr 0.1x, 5 test targets per user'),
    'text_prompt_zeroshot': ('mode=text_prompt,strategy=enc', 'text prompt, frozen Gemma (nothing to train)'),
    'soft': ('mode=soft_prompt', 'soft prompt, Enc'),
    'text_prompt_lora': ('mode=text_prompt,strategy=lora', 'text prompt, LoRA, FLOPs of cross-attention'),
    'xattn_perceiver': ('mode=cross_attention,latents=16', 'cross-attention + Perceiver, Enc'),
    'soft_perceiver': ('mode=soft_prompt,latents=16', 'soft prompt + Perceiver, Enc'),
    'xattn_lora': ('mode=cross_attention,strategy=lora', 'cross-attention, LoRA'),
    'xattn_full': ('mode=cross_attention,strategy=full', 'cross-attention, Full'),
    'xattn_proj': ('mode=cross_attention,strategy=proj', 'cross-attention, Proj (encoder frozen)'),
    'xattn_proj_random_enc': ('mode=cross_attention,strategy=proj,random_encoder',
                              'cross-attention, Proj, random frozen encoder'),
}
DEFAULT_ROWS = ['xattn', 'xattn_random_enc', 'text_prompt_zeroshot', 'soft', 'text_prompt_lora',
                'xattn_perceiver']

_ROWS = flags.DEFINE_list('rows', DEFAULT_ROWS, 'Rows to run, in order.')
_EXAMPLES = flags.DEFINE_integer('examples', 4000, 'Training examples per row.')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Global train batch.')
_EVAL_BATCHES = flags.DEFINE_integer('eval_batches', -1, 'Test batches of 4 users per task; -1 = all.')
_BUDGET_ROW = flags.DEFINE_string('budget_row', 'xattn', 'Row whose training FLOPs the LoRA row gets.')
_CANDIDATES = flags.DEFINE_integer('num_candidates', 20, 'Next-item candidates.')
_HISTORY_LEN = flags.DEFINE_integer('history_len', 50, 'History events before a target.')
_EVAL_TASKS = flags.DEFINE_list('eval_tasks', [], 'Tasks to score; empty = every trained task.')
_LORA_STEPS = flags.DEFINE_integer(
    'lora_steps', 0, 'Schedule length of the equal-compute text + LoRA row (its budget ends '
    'it); 0 = estimated from the prompt length.')
_WORKROOT = flags.DEFINE_string('workroot', 'workdirs/stage2_bench', 'Per-row workdirs.')
_JSONL = flags.DEFINE_string('jsonl', 'benchmarks/stage2_results.jsonl', 'Row results.')
_OUT = flags.DEFINE_string('out', 'benchmarks/stage2_results.md', 'Markdown table.')
_ONE = flags.DEFINE_string('one_row', '', 'Internal: run this row in this process.')


def run_row(name: str) -> dict:
  """Trains and evaluates one row in this process; returns its measurements."""
  from configs import movielens_userllm  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from user_llm import experiment  # pylint: disable=g-import-not-at-top
  from user_llm import train  # pylint: disable=g-import-not-at-top

  arg = f'{ROWS[name][0]},history_len={_HISTORY_LEN.value}'
  cfg = movielens_userllm.get_config(arg)
  steps = _EXAMPLES.value // _BATCH.value
  if name.endswith('_lora') and cfg.userllm.mode == 'text_prompt':
    budget = _budget_gflop()
    cfg.train.flop_budget = budget * 1e9
    # Estimated steps for the schedule (~1.2x the text prompt's tokens per example
    # relative to the user-embedding rows); the budget ends the run. --lora_steps sets
    # it instead (budget / a measured step's GFLOP): at 200 events a batch-2 step costs
    # 16,726 GFLOP with remat, so the cross-attention row's budget buys 7 steps, not 19.
    steps = _LORA_STEPS.value or max(10, int(steps * 32 / (24 * _HISTORY_LEN.value + 64) * 1.5))
  cfg.train.num_steps = steps if 'zeroshot' not in name else 0
  cfg.train.batch_size = _BATCH.value
  cfg.train.warmup = max(1, steps // 10)
  cfg.train.ckpt_every = max(steps, 1)
  cfg.eval.max_batches = _EVAL_BATCHES.value
  cfg.eval.num_candidates = _CANDIDATES.value
  if _EVAL_TASKS.value:
    cfg.eval.tasks = tuple(_EVAL_TASKS.value)
  workdir = os.path.join(_WORKROOT.value, f'{name}_L{_HISTORY_LEN.value}')
  # The code this process imports now: a commit made while the row runs is not it.
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                          text=True, check=False).stdout.strip()
  t0 = time.time()
  metrics = train.train_and_evaluate(cfg, workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    res = json.load(f)
  # LLM tokens per example: prompt + answer tokens (+ soft-prompt positions).
  exp = experiment.build(cfg, None)
  ds = exp.dataset('test', 'next_item', 16, 0, shuffle=False, num_epochs=1)
  lens = []
  for i, batch in enumerate(ds):
    keep = batch['example_mask']
    lens.extend(((batch['tokens'] != 0).sum(1))[keep].tolist())
    if i >= 3:
      break
  extra = 0
  if cfg.userllm.mode == 'soft_prompt':
    extra = cfg.userllm.num_latents or cfg.data.history_len
  gates = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for rec in map(json.loads, f):
      if rec.get('split') == 'train':
        gates = {k: v for k, v in rec.items() if k.startswith('gate/')}
  return {
      'row': name, 'desc': ROWS[name][1], 'commit': commit,
      'history_len': cfg.data.history_len,
      'steps': res['step'], 'batch': cfg.train.batch_size,
      'examples': res['step'] * cfg.train.batch_size, 'train_gflop': res.get('train_gflop', 0.0),
      'train_wall_s': res['train_wall_s'], 'total_wall_s': time.time() - t0,
      'llm_tokens': float(np.mean(lens)) + extra,
      'gates_final': gates,
      'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
      **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
  }


def _history_len(row: dict) -> int:
  """A result row's history length: rows written before the rename call it `seq_len`."""
  return row['history_len'] if 'history_len' in row else row['seq_len']


def _budget_gflop() -> float:
  """Training GFLOPs of `--budget_row` at this history_len (run it first)."""
  budgets = []
  if os.path.exists(_JSONL.value):
    with open(_JSONL.value) as f:
      budgets = [r['train_gflop'] for r in map(json.loads, filter(str.strip, f))
                 if r['row'] == _BUDGET_ROW.value and _history_len(r) == _HISTORY_LEN.value]
  if budgets:
    return budgets[-1]  # The latest run of that row.
  raise ValueError(f'No {_BUDGET_ROW.value!r} row at history_len {_HISTORY_LEN.value} in '
                   f'{_JSONL.value}: run it before the equal-compute LoRA row.')


NOTES = """
Machine: 2 CPU cores, 24 GB, no accelerator (none was lent to this session). Gemma 3
270M from the PyPI GGUF, frozen in bfloat16 (strategy Enc: encoder, projection,
cross-attention blocks train; LoRA: adapters only). Every training row sees the same
batches (seed 0, next_item and fav_genre batches mixed evenly; batch 8); text prompt +
LoRA stops when it has spent the FLOPs of the cross-attention row. Evaluation: every
test user (one window each, 373 users at 50 events, unless the targets column says
more), exact likelihood ranking;
next item = the true item + 19 catalogue items drawn uniformly (chance R@1 0.05, R@5
0.25, R@10 0.50); favourite genre = all 20 genre names (chance R@1 0.05). [lo, hi] =
95% bootstrap CI over users. train s includes compilation (one executable per
trimmed batch shape) and excludes evaluation; GFLOP = XLA cost analysis of every
step, summed. Peak RSS is the whole process (training + evaluation).
"""


def _ci(r: dict, key: str) -> str:
  if key not in r:
    return 'n/a'
  lo, hi = r.get(key + '_lo'), r.get(key + '_hi')
  return f'{r[key]:.3f}' + (f' [{lo:.3f}, {hi:.3f}]' if lo is not None else '')


def _targets(r: dict) -> str:
  """'targets / users' of the next-item task (rows before session 19: one per user)."""
  n = r.get('next_item/examples')
  return 'n/a' if n is None else f"{n:.0f} / {r.get('next_item/users', n):.0f}"


def table(rows: list[dict]) -> str:
  # A rerun of a row (same name and history_len) replaces it.
  rows = list({(r['row'], _history_len(r)): r for r in rows}.values())
  head = ('| row | history_len | examples | fav-genre R@1 | next-item R@1 | next-item R@5 | '
          'next-item R@10 | test targets / users | LLM tokens / example | train GFLOP | train s | '
          'peak RSS GB | commit |\n|' + '---|' * 13 + '\n')
  out = []
  for r in rows:
    out.append(
        f"| {r['desc']} | {_history_len(r)} | {r.get('examples', 0)} | "
        f"{_ci(r, 'fav_genre/recall@1')} | "
        f"{_ci(r, 'next_item/recall@1')} | {_ci(r, 'next_item/recall@5')} | "
        f"{_ci(r, 'next_item/recall@10')} | {_targets(r)} | "
        f"{r['llm_tokens']:.0f} | {r.get('train_gflop', 0):.0f} | {r['train_wall_s']:.0f} | "
        f"{r['peak_rss_gb']:.2f} | {r.get('commit', '?')} |")
  return head + '\n'.join(out) + '\n'


def main(argv):
  del argv
  if _ONE.value:
    logging.set_verbosity(logging.INFO)
    print('ROW_RESULT ' + json.dumps(run_row(_ONE.value)), flush=True)
    return
  for name in _ROWS.value:
    if name not in ROWS:
      raise ValueError(f'Unknown row {name!r}; known: {list(ROWS)}')
  for name in _ROWS.value:
    cmd = [sys.executable, '-m', 'benchmarks.stage2', f'--one_row={name}'] + [
        f'--{f.name}={f.value}' for f in (_EXAMPLES, _BATCH, _EVAL_BATCHES, _CANDIDATES,
                                          _HISTORY_LEN, _WORKROOT, _JSONL, _BUDGET_ROW,
                                          _LORA_STEPS)] + [f'--eval_tasks={",".join(_EVAL_TASKS.value)}']
    print(f'== {name}: {" ".join(cmd)}', flush=True)
    # The row's log (steps/s, ETA, eval) streams to this stderr.
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.startswith('ROW_RESULT ')]
    if proc.returncode or not lines:
      print(f'row {name} failed (exit {proc.returncode}); see the log above', flush=True)
      continue
    with open(_JSONL.value, 'a') as f:
      f.write(lines[-1][len('ROW_RESULT '):] + '\n')
    print(write_report(), flush=True)
  if not _ROWS.value:
    print(write_report(), flush=True)


def _extra() -> str:
  """Below the table: benchmarks/stage2_throughput.md, stage2_references.md,
  stage2_references_8k.md and stage2_references_L200.md (their scripts write them) and
  the hand-written stage2_findings.md."""
  out = ''
  for name in ('stage2_throughput.md', 'stage2_references.md', 'stage2_references_8k.md',
               'stage2_references_L200.md', 'stage2_findings.md'):
    path = os.path.join(os.path.dirname(__file__), name)
    if os.path.exists(path):
      with open(path) as f:
        out += '\n' + f.read()
  return out


def write_report() -> str:
  """Rewrites `--out` from every row in `--jsonl`; returns the table. The findings and
  the tables of the other stage-2 scripts follow it in the default `--out` only."""
  with open(_JSONL.value) as f:
    rows = [json.loads(l) for l in f if l.strip()]
  with open(_OUT.value, 'w') as f:
    f.write('# Stage 2 on ml-latest-small (real Gemma 3 270M)\n\n'
            'Command: `python -m benchmarks.stage2 --examples=4000 [--history_len=200] '
            '[--rows=...]` (`--rows=` alone rewrites this file from the .jsonl)\n' + NOTES +
            '\n' + table(rows) + (_extra() if _OUT.value == _OUT.default else ''))
  return table(rows)


if __name__ == '__main__':
  app.run(main)
