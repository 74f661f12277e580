"""Helpers for tests (like `gm.testing`): subprocess environments, a tiny MovieLens."""

import os
import pathlib
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def launcher_env(**extra) -> dict[str, str]:
  """Environment of a launcher subprocess: CPU, repo importable, own XLA flags."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu',
             # Identical launches reuse compiled programs (the suite has a CI budget).
             JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), 'user_llm_jax_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  env.pop('XLA_FLAGS', None)
  env.update(extra)
  return env


GENRES = ['Action', 'Comedy', 'Drama', 'Horror', 'Romance']


def write_movielens(root: pathlib.Path, users: int = 6, events: int = 16,
                    movies: int = 30) -> pathlib.Path:
  """A tiny MovieLens release (movies.csv, ratings.csv, tags.csv) in `root`."""
  root.mkdir(parents=True, exist_ok=True)
  lines = ['movieId,title,genres']
  for m in range(1, movies + 1):
    g = '|'.join(GENRES[(m + k) % len(GENRES)] for k in range(1 + m % 2))
    lines.append(f'{m},Movie {m} ({1990 + m}),{g}')
  (root / 'movies.csv').write_text('\n'.join(lines) + '\n')
  rows, tags = ['userId,movieId,rating,timestamp'], ['userId,movieId,tag,timestamp']
  for u in range(1, users + 1):
    for t in range(events):
      m = (u * 7 + t * (1 + u % 3)) % movies + 1
      rows.append(f'{u},{m},{1 + (u + t) % 5}.0,{1_000_000 + 100 * t}')
      if t % 2:  # Tags are MovieLens' review text.
        tags.append(f'{u},{m},{GENRES[t % 5].lower()} fun,{1_000_000 + 100 * t}')
  (root / 'ratings.csv').write_text('\n'.join(rows) + '\n')
  (root / 'tags.csv').write_text('\n'.join(tags) + '\n')
  return root
