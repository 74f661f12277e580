"""Cluster bootstrap over users."""

import numpy as np

from user_llm import stats


def test_bootstrap_mean_and_interval_cover_the_truth():
  rng = np.random.default_rng(0)
  hits = rng.random(4000) < 0.1
  est = stats.bootstrap(hits)
  assert est.mean == hits.mean() and est.lo < 0.1 < est.hi
  # Binomial standard error: the 95% interval is about +-1.96 * 0.0047.
  assert abs((est.hi - est.lo) / 2 - 1.96 * np.sqrt(0.09 / 4000)) < 0.002
  assert stats.bootstrap(hits, seed=0) == est  # Deterministic given the seed.


def test_bootstrap_resamples_users_not_targets():
  # 100 users x 10 identical targets: the effective sample is 100 users, so the
  # interval must be as wide as for 100 independent targets, not 1000.
  per_user = np.random.default_rng(1).random(100) < 0.5
  values = np.repeat(per_user, 10)
  users = np.repeat(np.arange(100), 10)
  clustered = stats.bootstrap(values, users)
  naive = stats.bootstrap(values)
  assert clustered.num_users == 100 and clustered.num_targets == 1000
  assert (clustered.hi - clustered.lo) > 2.5 * (naive.hi - naive.lo)
  assert '[' in str(clustered)


def test_bootstrap_runs_adds_the_spread_between_runs():
  """Two configurations with the same true mean, whose runs (seeds) each shift every
  target's value: the users-only interval of the run means excludes 0 (these models
  differ), the two-level one does not (the configurations cannot be told apart)."""
  rng = np.random.default_rng(0)
  users = np.repeat(np.arange(600), 5)
  base = rng.random(users.size) < 0.12
  def runs(shifts):  # Each run flips a random ~|shift| share of targets up or down.
    out = []
    for s in shifts:
      flip = rng.random(users.size) < abs(s)
      out.append(np.where(flip, s > 0, base).astype(np.float64))
    return np.stack(out)
  a, b = runs([0.03, 0.02, -0.01]), runs([-0.03, -0.02, 0.01])
  users_only = stats.bootstrap(a.mean(0) - b.mean(0), users)
  both = stats.bootstrap_runs(a, b, users)
  assert users_only.lo > 0  # These six models do differ on these targets...
  assert both.lo < 0 < both.hi  # ...the configurations are not shown to.
  assert abs(both.mean - users_only.mean) < 1e-12
  assert both.hi - both.lo > 2 * (users_only.hi - users_only.lo)
  # Identical runs: no spread between runs, the users' interval again.
  same = stats.bootstrap_runs(a[:1].repeat(3, 0), b[:1].repeat(3, 0), users)
  ref = stats.bootstrap(a[0] - b[0], users)
  assert abs(same.lo - ref.lo) < 0.004 and abs(same.hi - ref.hi) < 0.004
