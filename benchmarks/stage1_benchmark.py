r"""Stage-1 benchmark on MovieLens ml-latest-small (CPU): trains every row, writes a table.

  python -m benchmarks.stage1_benchmark [--rows ar_early,popularity] [--table PATH]

Each row is one launcher run (`python -m launch.main --config
configs/movielens_pretrain.py:<arg> --workdir workdirs/stage1_<row>`); a finished
workdir is reused (its results.json read back). The AR early-fusion encoder
checkpoint stays in `workdirs/stage1_ar_early` for stage 2.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROWS = {  # row -> (label, config arg)
    'ar_early': ('AR encoder, early fusion (User-LLM)', 'model=ar,fusion=early'),
    'ar_late': ('AR encoder, late fusion', 'model=ar,fusion=late'),
    'dual': ('Dual Encoder', 'model=dual'),
    'bert4rec': ('Bert4Rec', 'model=bert4rec'),
    'popularity': ('Popularity', 'model=popularity'),
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(row: str) -> list[str]:
  return [sys.executable, '-m', 'launch.main',
          f'--config=configs/movielens_pretrain.py:{ROWS[row][1]}',
          f'--workdir=workdirs/stage1_{row}']


def run(row: str) -> dict:
  workdir = os.path.join(ROOT, 'workdirs', f'stage1_{row}')
  results = os.path.join(workdir, 'results.json')
  if not os.path.exists(results):
    os.makedirs(workdir, exist_ok=True)
    t = time.time()
    with open(os.path.join(workdir, 'launch.log'), 'w') as log:
      subprocess.run(command(row), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    print(f'{row}: {time.time() - t:.0f}s', flush=True)
  with open(results) as f:
    return json.load(f)


def table(results: dict[str, dict]) -> str:
  lines = ['| model | Recall@1 | Recall@5 | Recall@10 | NDCG@10 | train wall time | steps | batch |',
           '|---|---|---|---|---|---|---|---|']
  for row, r in results.items():
    cfg = r.get('config', {})
    lines.append(
        f"| {ROWS[row][0]} | {r['recall@1']:.4f} | {r['recall@5']:.4f} | {r['recall@10']:.4f} "
        f"| {r['ndcg@10']:.4f} | {r['train_wall_s'] / 60:.1f} min | {r['step']} "
        f"| {cfg.get('batch_size', '')} |")
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rows', default=','.join(ROWS))
  parser.add_argument('--table', default=os.path.join(ROOT, 'workdirs', 'stage1_table.md'))
  args = parser.parse_args()
  results = {}
  for row in args.rows.split(','):
    results[row] = run(row)
    with open(args.table, 'w') as f:
      f.write(table(results) + '\n')
  print(table(results))


if __name__ == '__main__':
  main()
