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
