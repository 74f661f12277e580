r"""Linear probes on frozen stage-1 user embeddings (user_llm/probe.py).

  python -m benchmarks.stage1_probe \
      --workdir workdirs/stage1/standard/ar_early_s0,workdirs/stage1/standard/ar_early_seen_s0

Windows are stage 2's (protocol 'full_window': 50 history events, users with >= 52
events); the encoders are the runs' (config.json of the first, every run's last
checkpoint: the runs must share an encoder architecture). Rows: each pretrained
encoder, the same architecture randomly initialised (3 init seeds), each pooled two
ways (the last output; the mean of all outputs), the history's bag of genres, and the
majority class. Writes a JSON of the estimates.
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import data_pipelines as dp
from configs import movielens_pretrain
from user_llm import checkpointing
from user_llm import experiment
from user_llm import probe
from user_llm import pretrain
from user_llm import sharding

_COL = {c: i for i, c in enumerate(dp.COLUMNS)}  # Columns of a stored timeline.


def load_experiment(wd: str) -> pretrain.PretrainExperiment:
  """The run's experiment, on stage 2's windows (same vocabulary, see data_pipelines)."""
  config = experiment.read_config(os.path.join(wd, 'config.json'))
  movielens_pretrain.set_protocol(config, 'full_window')
  config.data.stride = 1
  return experiment.build(config, sharding.make_mesh(config.mesh))


def probe_windows(prepared, per_user: int, seed: int) -> np.ndarray:
  """Up to `per_user` (0: all) random training windows per user, then every test window."""
  rng = np.random.default_rng(seed)
  train = prepared.windows('train')
  if per_user <= 0:
    return np.concatenate([train, prepared.windows('test')])
  rows = []
  for u in np.unique(train[:, 0]):
    mine = train[train[:, 0] == u]
    rows.append(mine[rng.choice(len(mine), min(per_user, len(mine)), replace=False)])
  return np.concatenate(rows + [prepared.windows('test')])


def labels_and_bag(prepared, rows: np.ndarray):
  """Favourite genre of the history, next-event genre, bag of all genres [N, G]."""
  genre_vocab = prepared.vocabs['genre']
  all_genres = prepared.catalogue.all_genres
  history_len = prepared.history_len
  fav, nxt, bag = [], [], np.zeros((len(rows), genre_vocab.size), np.float32)
  for i, (u, t, _) in enumerate(rows):
    table, _, _ = prepared.timeline(int(u))
    hist = [all_genres[j] for j in table[t - history_len:t, _COL['item_index']]]
    fav.append(genre_vocab.id(dp.favourite_genre(hist)))
    nxt.append(table[t, _COL['genre']])
    for gs in hist:
      for g in genre_vocab.ids(gs):
        bag[i, g] += 1.0 / history_len
  return np.asarray(fav), np.asarray(nxt), bag


def window_inputs(exp, rows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """History features {f: int32[N, U]} and mask bool[N, U] of the window rows."""
  example = dp.Example(exp.prepared, 'next_event', exp.features, dp.ByteTokenizer(), False, 1, 1)
  exs = [example(r) for r in rows]
  feats = {f: np.stack([e[f][:-1] for e in exs]) for f in exp.input_names}
  return feats, np.stack([e['mask'][:-1] for e in exs])


def encoder_features(exp, params, feats, mask, batch_size: int = 512) -> np.ndarray:
  """[last position | mean over real positions] of the encoder outputs, [N, 2D]."""

  @jax.jit
  def embed(params, feats, mask):
    h = exp.model.apply({'params': params}, feats, mask,
                        method=lambda m, f, k: m.user_encoder(f, k))
    mean = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return jnp.concatenate([h[:, -1], mean], -1)

  n = len(mask)
  pad = -n % batch_size  # One compiled shape.
  feats = {f: np.pad(x, ((0, pad), (0, 0))) for f, x in feats.items()}
  mask = np.pad(mask, ((0, pad), (0, 0)), constant_values=True)
  out = [np.asarray(embed(params, {f: x[s:s + batch_size] for f, x in feats.items()},
                          mask[s:s + batch_size]))
         for s in range(0, n + pad, batch_size)]
  return np.concatenate(out)[:n]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='workdirs/stage1/standard/ar_early_s0,'
                      'workdirs/stage1/standard/ar_early_seen_s0',
                      help='Stage-1 workdirs, comma separated (same encoder architecture).')
  parser.add_argument('--per_user', type=int, default=0,
                      help='Training windows per user (0 = all of them).')
  parser.add_argument('--folds', type=int, default=5)
  parser.add_argument('--random_seeds', default='0,1,2')
  parser.add_argument('--out', default='benchmarks/stage1_probe.json')
  args = parser.parse_args()

  workdirs = args.workdir.split(',')
  exp = load_experiment(workdirs[0])
  rows = probe_windows(exp.prepared, args.per_user, seed=0)
  is_test = np.zeros(len(rows), bool)
  is_test[-len(exp.prepared.windows('test')):] = True
  fav, nxt, bag = labels_and_bag(exp.prepared, rows)
  labels = {'fav_genre': fav, 'next_genre': nxt}
  num_classes = exp.prepared.vocabs['genre'].size
  encoders = {}
  for wd in workdirs:
    name = 'pretrained encoder' if len(workdirs) == 1 else f'pretrained {os.path.basename(wd)}'
    encoders[name] = checkpointing.load_params(wd)
  for s in args.random_seeds.split(','):
    encoders[f'random encoder (init seed {s})'] = exp.init_params(jax.random.key(1000 + int(s)))
  inputs = window_inputs(exp, rows)
  feats = {}
  for name, params in encoders.items():
    x = encoder_features(exp, params, *inputs)
    d = x.shape[1] // 2
    # The last output is the causal encoder's summary of the whole history; the mean
    # is what a reader attending to every output (stage 2's cross-attention) can get.
    feats[f'{name}, last position'] = x[:, :d]
    feats[f'{name}, mean over positions'] = x[:, d:]
  feats['bag of genres (counts / 50)'] = bag

  results = {'workdir': workdirs, 'train_windows': int((~is_test).sum()),
             'test_users': int(is_test.sum()), 'folds': args.folds, 'rows': {}}
  users = rows[:, 0]
  for name, x in feats.items():
    data = probe.ProbeData(x, labels, users, is_test)
    results['rows'][name] = {}
    for label in labels:
      est, _ = probe.cross_fit(data, label, num_classes, folds=args.folds)
      results['rows'][name][label] = _triple(est)
      print(f'{name:40s} {label:12s} {est}', flush=True)
  data = probe.ProbeData(bag, labels, users, is_test)
  results['rows']['majority class'] = {
      label: _triple(probe.majority(data, label)) for label in labels}
  with open(args.out, 'w') as f:
    json.dump(results, f, indent=1)
  print(json.dumps(results['rows'], indent=1))


def _triple(est) -> list[float]:
  return [est.mean, est.lo, est.hi]


if __name__ == '__main__':
  main()
