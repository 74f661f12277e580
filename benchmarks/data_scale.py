r"""`prepare` at MovieLens-20M size: wall time and peak memory on a generated release.

  python -m benchmarks.data_scale --events 20000000 --out /tmp/ml20m_synth
  python -m benchmarks.data_scale --events 20000000 --out /tmp/ml20m_synth --markdown

Writes a synthetic release in the published ml-20m csv format (ratings.csv with
the header userId,movieId,rating,timestamp; movies.csv; tags.csv) with ml-20m's
shape (138,493 users with >= 20 ratings, a long tail of heavy users, 26,744 movies
drawn Zipf-like, half-star ratings, ~465k tags), once (reused when present), then runs
`prepare` on it in a fresh subprocess (its peak RSS is the number reported) with
the MovieLens stage-1 data config (history_len 50, stride 10, left-padded).
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

_EVENTS = flags.DEFINE_integer('events', 20_000_000, 'Ratings to generate.')
_OUT = flags.DEFINE_string('out', '/tmp/ml20m_synth', 'Folder of the generated release.')
_CACHE = flags.DEFINE_string('cache_dir', '', 'Cache folder (default OUT/cache, emptied).')
_MARKDOWN = flags.DEFINE_bool('markdown', False, 'Print a benchmarks/data_stats.md row.')
_CHILD = flags.DEFINE_bool('child', False, 'Internal: run prepare and print JSON.')

GENRES = ('Action', 'Adventure', 'Animation', 'Children', 'Comedy', 'Crime', 'Documentary',
          'Drama', 'Fantasy', 'Film-Noir', 'Horror', 'IMAX', 'Musical', 'Mystery', 'Romance',
          'Sci-Fi', 'Thriller', 'War', 'Western')
USERS, MOVIES, TAGS_PER_EVENT = 138_493, 26_744, 465_564 / 20_000_263


def _user_counts(events: int, rng: np.random.Generator) -> np.ndarray:
  """Ratings per user: >= 20 each (as in ml-20m), the rest Pareto-distributed."""
  users = min(USERS, max(1, events // 40))
  extra = rng.pareto(1.2, users)
  extra = np.floor(extra / extra.sum() * (events - 20 * users)).astype(np.int64)
  counts = 20 + extra
  counts[: events - counts.sum()] += 1  # Exactly `events` in total.
  return counts


def generate(out: str, events: int, seed: int = 0) -> None:
  """Writes ratings.csv, movies.csv and tags.csv of a synthetic ml-20m-like release."""
  os.makedirs(out, exist_ok=True)
  rng = np.random.default_rng(seed)
  with open(os.path.join(out, 'movies.csv'), 'w', encoding='utf-8') as f:
    f.write('movieId,title,genres\n')
    for m in range(1, MOVIES + 1):
      genres = '|'.join(GENRES[(m * k) % len(GENRES)] for k in range(1, 2 + m % 3))
      title = f'"Movie {m}, The ({1900 + m % 120})"' if m % 7 == 0 else f'Movie {m} ({1900 + m % 120})'
      f.write(f'{m},{title},{genres}\n')
  popularity = 1.0 / np.arange(1, MOVIES + 1) ** 0.8
  popularity /= popularity.sum()
  counts = _user_counts(events, rng)
  ratings = open(os.path.join(out, 'ratings.csv'), 'w', encoding='utf-8')
  tags = open(os.path.join(out, 'tags.csv'), 'w', encoding='utf-8')
  ratings.write('userId,movieId,rating,timestamp\n')
  tags.write('userId,movieId,tag,timestamp\n')
  for start in range(0, len(counts), 2000):  # Users in blocks: bounded memory.
    block = counts[start:start + 2000]
    user = np.repeat(np.arange(start + 1, start + 1 + len(block)), block)
    movie = rng.choice(MOVIES, size=len(user), p=popularity) + 1
    stars = rng.integers(1, 11, size=len(user)) / 2
    t0 = np.repeat(rng.integers(789_000_000, 1_400_000_000, len(block)), block)
    time_ = t0 + np.concatenate([np.cumsum(rng.integers(1, 5_000, n)) for n in block])
    ratings.write(''.join(f'{u},{m},{s},{t}\n' for u, m, s, t in
                          zip(user.tolist(), movie.tolist(), stars.tolist(), time_.tolist())))
    tagged = np.flatnonzero(rng.random(len(user)) < TAGS_PER_EVENT)
    tags.write(''.join(f'{user[i]},{movie[i]},tag {movie[i] % 97},{time_[i]}\n'
                       for i in tagged.tolist()))
  ratings.close()
  tags.close()


def _child(out: str, cache_dir: str) -> None:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import data_pipelines  # pylint: disable=g-import-not-at-top
  from configs import movielens_pretrain  # pylint: disable=g-import-not-at-top
  config = movielens_pretrain.get_config('').data
  config.path, config.cache_dir = out, cache_dir
  t, cpu = time.time(), time.process_time()
  prepared = data_pipelines.prepare(config)
  wall, cpu = time.time() - t, time.process_time() - cpu
  t = time.time()
  data_pipelines.prepare(config)  # Reuse: hashes the sources and the cache files.
  print(json.dumps({'wall_s': wall, 'cpu_s': cpu, 'reuse_s': time.time() - t,
                    'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                    'stats': prepared.stats, 'windows': prepared.manifest['num_records']}))


def main(argv):
  del argv
  if _CHILD.value:
    return _child(_OUT.value, _CACHE.value)
  if not os.path.isfile(os.path.join(_OUT.value, 'tags.csv')):
    t = time.time()
    generate(_OUT.value, _EVENTS.value)
    print(f'generated {_EVENTS.value} ratings in {_OUT.value} in {time.time() - t:.0f} s')
  cache = _CACHE.value or os.path.join(_OUT.value, 'cache')
  subprocess.run(['rm', '-rf', cache], check=True)
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.data_scale', '--child',
                         f'--out={_OUT.value}', f'--cache_dir={cache}'],
                        check=True, stdout=subprocess.PIPE, text=True)  # stderr: the bar.
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  size = os.path.getsize(os.path.join(_OUT.value, 'ratings.csv')) / 2**20
  print(json.dumps(result, indent=1))
  if _MARKDOWN.value:
    s = result['stats']
    print(f"| synthetic ml-20m csv ({_EVENTS.value:,} ratings, {size:.0f} MiB) | "
          f"{s['users']:,} | {s['items']:,} | {s['events']:,} | {result['wall_s']:.0f} s | "
          f"{result['cpu_s']:.0f} s | {result['reuse_s']:.0f} s | {result['peak_rss_gb']:.2f} GB |")


if __name__ == '__main__':
  app.run(main)
