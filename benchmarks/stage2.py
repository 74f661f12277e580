r"""Stage-2 benchmark: User-LLM variants against the text-prompt baseline on MovieLens.

Every row trains `configs/movielens_userllm.py` with the real Gemma 3 270M at the same
scale (steps, batch, tasks next_item + fav_genre mixed), then evaluates on the same
test windows. Each row runs in a fresh process so its peak RSS is its own.

  python -m benchmarks.stage2 --steps 40 --batch_size 4 --eval_batches 8 \
      --out benchmarks/stage2_results.md            # all rows, in order
  python -m benchmarks.stage2 --rows xattn,soft ... # a subset

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
    'text_prompt_zeroshot': ('mode=text_prompt,strategy=enc', 'text prompt, frozen Gemma (nothing to train)'),
    'text_prompt_lora': ('mode=text_prompt,strategy=lora', 'text prompt, LoRA'),
    'xattn': ('mode=cross_attention', 'cross-attention, Enc'),
    'xattn_perceiver': ('mode=cross_attention,latents=16', 'cross-attention + Perceiver, Enc'),
    'soft': ('mode=soft_prompt', 'soft prompt, Enc'),
    'soft_perceiver': ('mode=soft_prompt,latents=16', 'soft prompt + Perceiver, Enc'),
    'xattn_lora': ('mode=cross_attention,strategy=lora', 'cross-attention, LoRA'),
    'xattn_full': ('mode=cross_attention,strategy=full', 'cross-attention, Full'),
    'xattn_proj': ('mode=cross_attention,strategy=proj', 'cross-attention, Proj'),
    'xattn_random_enc': ('mode=cross_attention,random_encoder', 'cross-attention, random encoder, Enc'),
}

_ROWS = flags.DEFINE_list('rows', list(ROWS), 'Rows to run, in order.')
_STEPS = flags.DEFINE_integer('steps', 40, 'Training steps per row.')
_BATCH = flags.DEFINE_integer('batch_size', 4, 'Global train batch.')
_EVAL_BATCHES = flags.DEFINE_integer('eval_batches', 8, 'Test batches of 4 users per task.')
_CANDIDATES = flags.DEFINE_integer('num_candidates', 20, 'Next-item candidates.')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 50, 'History events.')
_WORKROOT = flags.DEFINE_string('workroot', 'workdirs/stage2_bench', 'Per-row workdirs.')
_JSONL = flags.DEFINE_string('jsonl', 'benchmarks/stage2_results.jsonl', 'Row results.')
_OUT = flags.DEFINE_string('out', 'benchmarks/stage2_results.md', 'Markdown table.')
_ONE = flags.DEFINE_string('one_row', '', 'Internal: run this row in this process.')


def run_row(name: str) -> dict:
  """Trains and evaluates one row in this process; returns its measurements."""
  from configs import movielens_userllm  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from user_llm import train  # pylint: disable=g-import-not-at-top

  arg = f'{ROWS[name][0]},seq_len={_SEQ_LEN.value}'
  cfg = movielens_userllm.get_config(arg)
  cfg.train.num_steps = _STEPS.value if 'zeroshot' not in name else 0
  cfg.train.batch_size = _BATCH.value
  cfg.train.warmup = max(1, _STEPS.value // 10)
  cfg.train.ckpt_every = max(_STEPS.value, 1)
  cfg.eval.max_batches = _EVAL_BATCHES.value
  cfg.eval.num_candidates = _CANDIDATES.value
  workdir = os.path.join(_WORKROOT.value, f'{name}_L{_SEQ_LEN.value}')
  t0 = time.time()
  metrics = train.train_and_evaluate(cfg, workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    res = json.load(f)
  # LLM tokens per example: prompt + answer tokens (+ soft-prompt positions).
  exp = train.get_experiment(cfg, None)
  ds = exp._dataset('test', 'next_item', 16, 0, shuffle=False, num_epochs=1)  # pylint: disable=protected-access
  lens = []
  for i, batch in enumerate(ds):
    keep = batch['example_mask']
    lens.extend(((batch['tokens'] != 0).sum(1))[keep].tolist())
    if i >= 3:
      break
  extra = 0
  if cfg.userllm.mode == 'soft_prompt':
    extra = cfg.userllm.num_latents or cfg.data.seq_len
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                          text=True, check=False).stdout.strip()
  return {
      'row': name, 'desc': ROWS[name][1], 'commit': commit, 'seq_len': cfg.data.seq_len,
      'steps': cfg.train.num_steps, 'batch': cfg.train.batch_size,
      'train_wall_s': res['train_wall_s'], 'total_wall_s': time.time() - t0,
      'llm_tokens': float(np.mean(lens)) + extra,
      'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
      **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
  }


NOTES = """
Machine: 2 CPU cores (AMD EPYC), 24 GB, no accelerator (none was lent to this
project's sessions). Gemma 3 270M from the PyPI GGUF, frozen in bfloat16 except for
strategy Full (float32). Rows were run by several invocations of the command above
with `--rows=` subsets (the `commit` column says which code ran). The seq_len 50 rows
other than text prompt + LoRA ran on a machine shared with other jobs (load average
5-9), so their train s are pessimistic; the seq_len 200 rows and text prompt + LoRA
ran later on an idle machine. Evaluation: the first 32 test users per task (8 batches
of 4), likelihood ranking; next item = the true item + 19 sampled catalogue items
(chance: R@1 0.05, R@5 0.25, R@10 0.50); favourite genre = all 20 genre names (chance
R@1 0.05). One user is 0.031. Peak RSS is the whole process (training + evaluation);
evaluation of the text prompt dominates its row.

The seq_len 200 rows use the stage-1 encoder trained at 200 events
(`workdirs/stage1_ar_early_L200`, see benchmarks/stage1_results.md); their test users
are the first 32 of those with 200+ events, so they are not the seq_len 50 users.
"""


def table(rows: list[dict]) -> str:
  # A rerun of a row (same name and seq_len) replaces it.
  rows = list({(r['row'], r['seq_len']): r for r in rows}.values())
  head = ('| row | seq_len | steps x batch | fav-genre R@1 | next-item R@1 | R@5 | R@10 | '
          'LLM tokens / example | train s | peak RSS GB | commit |\n|' + '---|' * 11 + '\n')
  out = []
  for r in rows:
    out.append(
        f"| {r['desc']} | {r['seq_len']} | {r['steps']} x {r['batch']} | "
        f"{r.get('fav_genre/recall@1', float('nan')):.3f} | {r.get('next_item/recall@1', float('nan')):.3f} | "
        f"{r.get('next_item/recall@5', float('nan')):.3f} | {r.get('next_item/recall@10', float('nan')):.3f} | "
        f"{r['llm_tokens']:.0f} | {r['train_wall_s']:.0f} | {r['peak_rss_gb']:.2f} | "
        f"{r.get('commit', '?')} |")
  return head + '\n'.join(out) + '\n'


def main(argv):
  del argv
  if _ONE.value:
    logging.set_verbosity(logging.WARNING)
    print('ROW_RESULT ' + json.dumps(run_row(_ONE.value)), flush=True)
    return
  for name in _ROWS.value:
    if name not in ROWS:
      raise ValueError(f'Unknown row {name!r}; known: {list(ROWS)}')
  for name in _ROWS.value:
    cmd = [sys.executable, '-m', 'benchmarks.stage2', f'--one_row={name}'] + [
        f'--{f.name}={f.value}' for f in (_STEPS, _BATCH, _EVAL_BATCHES, _CANDIDATES, _SEQ_LEN,
                                          _WORKROOT)]
    print(f'== {name}: {" ".join(cmd)}', flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.startswith('ROW_RESULT ')]
    if proc.returncode or not lines:
      print(proc.stderr[-3000:], flush=True)
      continue
    with open(_JSONL.value, 'a') as f:
      f.write(lines[-1][len('ROW_RESULT '):] + '\n')
    print(write_report(), flush=True)
  if not _ROWS.value:
    print(write_report(), flush=True)


def write_report() -> str:
  """Rewrites `--out` from every row in `--jsonl`; returns the table."""
  with open(_JSONL.value) as f:
    rows = [json.loads(l) for l in f if l.strip()]
  with open(_OUT.value, 'w') as f:
    f.write('# Stage 2 on ml-latest-small (real Gemma 3 270M)\n\n'
            'Command: `python -m benchmarks.stage2 --steps=40 --batch_size=4 '
            '--eval_batches=8 [--seq_len=200] [--rows=...]` (`--rows=` alone rewrites this '
            'file from the .jsonl)\n' + NOTES + '\n' + table(rows))
  return table(rows)


if __name__ == '__main__':
  app.run(main)
