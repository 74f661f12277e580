r"""Linear probes on frozen stage-1 user embeddings (user_llm/probe.py).

  python -m benchmarks.stage1_probe \
      --workdir workdirs/stage1/standard/ar_early_s0,workdirs/stage1/standard/ar_early_seen_s0

Windows are stage 2's (protocol 'full_window': 50 history events, users with >= 52
events); the encoders are the runs' (config.json of the first, every run's last
checkpoint: the runs must share an encoder architecture). Rows: each pretrained
encoder, the same architecture randomly initialised (3 init seeds), each pooled two
ways (the last output; the mean of all outputs), the history's bag of genres, and the
majority class. Writes a JSON of the estimates.

  python -m benchmarks.stage1_probe --next_event \
      --workdir workdirs/stage1/multi_target/ar_early_future_s0 \
      --out benchmarks/stage1_probe_next.json

Next-event probes (`--next_event`) on the run's own protocol, e.g. (b) multi_target:
3,050 held-out targets (each user's last 5 events, each with the history before it),
which neither the encoder nor the probe ever trained on. The probe reads the encoder's
output at each scored position and predicts the next event's genre (20 classes) and
item (a linear softmax over the whole catalogue: Recall@K, NDCG@10); it is fitted on
the last `loss_last_k` positions of every training window (the targets stage 1
trains on), its L2 weight chosen per row on the validation targets. Rows: each
pretrained encoder, the same architecture randomly initialised (3 init seeds), the
pretrained run's own heads (a reference, not a probe), and constant features (the
probe then learns the label prior: popularity for items).
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
from user_llm import stats

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


def next_event_data(exp, params, split: str, last_k: int, own_heads: bool = False,
                    batch_size: int = 256) -> dict[str, np.ndarray]:
  """Encoder outputs at the scored positions of `split` and their next events.

  'train': the last `last_k` positions of every training window (both the position
  and its next event real); other splits: each window's last history position,
  whose next event is the held-out target (kept as the catalogue evaluator keeps it).

  Returns:
    x float32 [N, D], item / genre int [N] (the next event's ids), user int [N]; with
    `own_heads`, own_item / own_genre float32 [N, V]: the run's own head logits.
  """
  k = last_k if split == 'train' else 1

  @jax.jit
  def embed(params, feats, mask):
    hist = {f: x[:, :-1] for f, x in feats.items()}
    if own_heads:
      h, logits = exp.model.apply({'params': params}, hist, mask[:, :-1], last_k=k)
      return h[:, -k:], {f: l[:, -k:] for f, l in logits.items()}
    h = exp.model.apply({'params': params}, hist, mask[:, :-1],
                        method=lambda m, f, m2: m.user_encoder(f, m2))
    return h[:, -k:], {}

  cols = {name: [] for name in ('x', 'item', 'genre', 'user', 'own_item', 'own_genre')}
  for batch in exp.dataset(split, batch_size, 0, 1, drop_remainder=False):
    h, logits = jax.device_get(embed(params, exp.inputs(batch), batch['mask']))
    mask = batch['mask']
    keep = (mask[:, -k - 1:-1] & mask[:, -k:]) & batch['example_mask'][:, None]
    if split != 'train':
      keep &= batch['item'][:, -1:] > 0
    cols['x'].append(h[keep])
    for f in ('item', 'genre'):
      cols[f].append(batch[f][:, -k:][keep])
      if own_heads:
        cols[f'own_{f}'].append(logits[f][keep])
    cols['user'].append(np.broadcast_to(batch['user'][:, None], keep.shape)[keep])
  return {name: np.concatenate(v) for name, v in cols.items() if v}


def next_event_main(args) -> None:
  """Next-event genre and item probes (see the module docstring)."""
  workdirs = args.workdir.split(',')
  config = experiment.read_config(os.path.join(workdirs[0], 'config.json'))
  exp = experiment.build(config, sharding.make_mesh(config.mesh))
  last_k = config.model.loss_last_k or exp.prepared.history_len
  encoders = {f'pretrained {os.path.basename(wd)}': checkpointing.load_params(wd)
              for wd in workdirs}
  for s in args.random_seeds.split(','):
    encoders[f'random encoder (init seed {s})'] = exp.init_params(jax.random.key(1000 + int(s)))
  num = {'genre': exp.prepared.vocabs['genre'].size, 'item': exp.prepared.vocabs['item'].size}
  l2s = [float(v) for v in args.l2.split(',')]
  results = {'workdir': workdirs, 'protocol': config.data.protocol, 'rows': {},
             'l2_grid': l2s, 'item_steps': args.item_steps, 'item_batch': args.item_batch}

  hits = {}  # (row, label) -> per-test-target accuracy / Recall@10, for paired differences.
  users = None

  def probe_row(name, fit, valid, test):
    row = results['rows'][name] = {'fit_targets': int(len(fit['item']))}
    for label in ('genre', 'item'):
      kw = (dict(ks=(1, 5, 10), num_special=dp.NUM_RESERVED, steps=args.item_steps,
                 batch_size=args.item_batch) if label == 'item' else {})
      metric = 'recall@10' if label == 'item' else 'accuracy'
      score_kw = {k: kw.pop(k) for k in ('ks', 'num_special') if k in kw}
      # L2 weight by the validation targets (one per user), never the test ones.
      fits = {l2: probe.fit_logreg(fit['x'], fit[label], num[label], l2=l2, **kw)
              for l2 in l2s}
      logits = lambda d, l2: d['x'] @ fits[l2][0] + fits[l2][1]
      best = max(l2s, key=lambda l2: probe.score(
          logits(valid, l2), valid[label], valid['user'], **score_kw)[0][metric].mean)
      est, per = probe.score(logits(test, best), test[label], test['user'], **score_kw)
      hits[name, label] = per[metric]
      row[label] = {k: _triple(e) for k, e in est.items()}
      row[label]['l2'] = best
      print(f'{name:45s} next {label:6s} l2={best:g} ' +
            ' '.join(f'{k} {e}' for k, e in est.items()), flush=True)

  for name, params in encoders.items():
    pretrained = name.startswith('pretrained')
    fit = next_event_data(exp, params, 'train', last_k)
    valid = next_event_data(exp, params, 'validation', last_k)
    test = next_event_data(exp, params, 'test', last_k, own_heads=pretrained)
    if users is None:
      users = test['user']
    elif not np.array_equal(users, test['user']):
      raise ValueError(f'{name}: other test targets than the first row.')
    probe_row(name, fit, valid, test)
    if pretrained:  # The run's own trained heads on the same targets (not a probe).
      own = {'item': probe.score(test['own_item'], test['item'], test['user'], ks=(1, 5, 10),
                                 num_special=dp.NUM_RESERVED)[0],
             'genre': probe.score(test['own_genre'], test['genre'], test['user'])[0]}
      results['rows'][f'{name}: its own heads'] = {
          f: {k: _triple(e) for k, e in est.items()} for f, est in own.items()}
    if name == next(iter(encoders)):  # Constant features: the probe learns the prior.
      const = {split: dict(d, x=np.ones((len(d['x']), 1), np.float32))
               for split, d in (('fit', fit), ('valid', valid), ('test', test))}
      probe_row('constant features (label prior)', const['fit'], const['valid'], const['test'])
  # Paired over the same targets: each pretrained row minus every other probe row.
  results['paired'] = {}
  for (a, label), va in hits.items():
    if not a.startswith('pretrained'):
      continue
    for (b, label_b), vb in hits.items():
      if label_b == label and b != a:
        est = stats.bootstrap(va - vb, users)
        results['paired'][f'{a} - {b}: next {label}'] = _triple(est)
        print(f'{a} - {b}: next {label} {est}', flush=True)
  with open(args.out, 'w') as f:
    json.dump(results, f, indent=1)


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
  parser.add_argument('--next_event', action='store_true',
                      help='Next-event genre / item probes on the run\'s own protocol.')
  parser.add_argument('--l2', default='1e-6,1e-5,1e-4,1e-3',
                      help='--next_event: L2 weights tried on the validation targets.')
  parser.add_argument('--item_steps', type=int, default=1500,
                      help='--next_event: Adam steps of the item probe.')
  parser.add_argument('--item_batch', type=int, default=1024,
                      help='--next_event: minibatch of the item probe.')
  args = parser.parse_args()
  if args.next_event:
    next_event_main(args)
    return

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
