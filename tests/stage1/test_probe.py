"""Linear probes: a separable label is learnt, a random one is not, users stay apart."""

import numpy as np

from user_llm import probe


def _data(num_users=60, per_user=6, seed=0):
  rng = np.random.default_rng(seed)
  users = np.repeat(np.arange(num_users), per_user)
  x = rng.normal(size=(len(users), 5)).astype(np.float32)
  labels = {'linear': (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0),  # 4 classes.
            'noise': rng.integers(0, 4, len(users))}
  is_test = np.zeros(len(users), bool)
  is_test[per_user - 1::per_user] = True  # Each user's last example is its test one.
  return probe.ProbeData(x, labels, users, is_test)


def test_cross_fit_learns_a_linear_label_and_not_noise():
  data = _data()
  est, hits = probe.cross_fit(data, 'linear', 4, folds=3)
  assert est.num_users == 60 and len(hits) == 60
  assert est.mean > 0.85 and est.lo <= est.mean <= est.hi
  noise, _ = probe.cross_fit(data, 'noise', 4, folds=3)
  assert noise.mean < 0.5  # Chance is 0.25.
  assert probe.majority(data, 'noise').mean < 0.5


def test_fit_logreg_folds_standardisation_into_raw_weights():
  data = _data()
  x = data.x * 100 + 7  # Badly scaled features give the same predictions.
  w, b = probe.fit_logreg(x, data.labels['linear'], 4)
  acc = ((x @ w + b).argmax(-1) == data.labels['linear']).mean()
  assert acc > 0.9


def test_probe_benchmark_runs_on_a_stage1_workdir(stage1_workdir, tmp_path, monkeypatch):
  """benchmarks/stage1_probe.py end to end on the tiny run (it once broke silently)."""
  import json  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from benchmarks import stage1_probe  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'probe.json'
  wd = str(stage1_workdir)
  monkeypatch.setattr(sys, 'argv', ['stage1_probe', f'--workdir={wd},{wd}', '--random_seeds=0',
                                    '--folds=2', f'--out={out}'])
  stage1_probe.main()
  rows = json.loads(out.read_text())['rows']
  name = f'pretrained {stage1_workdir.name}, mean over positions'
  assert {name, 'random encoder (init seed 0), last position', 'majority class'} <= set(rows)
  for est in rows[name].values():
    assert 0.0 <= est[1] <= est[0] <= est[2] <= 1.0  # mean inside its CI.


def test_minibatch_fit_learns_and_scores_ranks_over_many_classes():
  """The item probe's path: minibatch Adam over a large label set, Recall@K scoring
  that never ranks the reserved classes and counts a reserved target as a miss."""
  rng = np.random.default_rng(0)
  n, classes = 3000, 50
  centres = rng.normal(size=(classes, 8)).astype(np.float32) * 3
  y = rng.integers(2, classes, n)
  x = centres[y] + rng.normal(size=(n, 8)).astype(np.float32)
  w, b = probe.fit_logreg(x[:2500], y[:2500], classes, steps=400, batch_size=128, l2=1e-5)
  y_test = y[2500:].copy()
  y_test[:10] = 1  # OOV targets: misses whatever the scores.
  users = np.arange(len(y_test)) // 5
  est, per = probe.score(x[2500:] @ w + b, y_test, users, ks=(1, 10), num_special=2)
  assert est['recall@1'].mean > 0.8 and est['recall@10'].mean > est['recall@1'].mean - 1e-9
  assert per['recall@10'][:10].sum() == 0
  assert est['recall@1'].num_users == 100
  acc, _ = probe.score(x[2500:] @ w + b, y[2500:], users)
  assert acc['accuracy'].mean > 0.8


def test_next_event_probe_benchmark_runs_on_a_stage1_workdir(stage1_workdir, tmp_path, monkeypatch):
  """`stage1_probe --next_event`: pretrained, random, own-head and prior rows."""
  import json  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from benchmarks import stage1_probe  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'probe_next.json'
  monkeypatch.setattr(sys, 'argv', ['stage1_probe', '--next_event', f'--workdir={stage1_workdir}',
                                    '--random_seeds=0', '--l2=1e-4,1e-3', '--item_steps=20',
                                    '--item_batch=64', f'--out={out}'])
  stage1_probe.main()
  res = json.loads(out.read_text())
  name = f'pretrained {stage1_workdir.name}'
  assert set(res['rows']) == {name, f'{name}: its own heads', 'random encoder (init seed 0)',
                              'constant features (label prior)'}
  for row in res['rows'].values():
    for est in [row['genre']['accuracy'], row['item']['recall@10']]:
      assert 0.0 <= est[1] <= est[0] <= est[2] <= 1.0
  assert res['rows'][name]['item']['l2'] in (1e-4, 1e-3)
  paired = res['paired'][f'{name} - random encoder (init seed 0): next item']
  assert paired[1] <= paired[0] <= paired[2]
  assert len(res['paired']) == 4  # (random, constant) x (genre, item).
