"""Linear probes: does a frozen user embedding carry the user's tastes?

A probe is a multinomial logistic regression (optax, full batch) from a fixed
feature vector per window to a label. Features (`Features`):
- 'encoder': the stage-1 encoder's outputs, as stage 2 consumes them, pooled to
  [last position; mean over real positions] (2D);
- the same for a randomly initialised encoder of the same shape (the control: what
  the architecture alone gives);
- 'bag_of_genres': the history's genre counts over ALL genres of each item,
  divided by the number of events (a hand-made reference).

Labels: the favourite genre of the history window (data_pipelines.favourite_genre,
the stage-2 task) and the genre of the next event (the target's first genre).

Protocol (`cross_fit`): users are split into `folds` groups; the probe for fold f
is trained on TRAINING windows of the other folds' users and scored on the TEST
window of fold f's users, so every test user is scored by a probe that never saw
them, and the accuracy comes with a bootstrap CI over users.

Next-event probes (`score`, benchmarks/stage1_probe.py --next_event): the label is
the event after a position (its genre, or its item ranked over the catalogue), the
probe is fitted on training positions and scored on held-out events that neither it
nor the encoder trained on, so no user needs to be held out.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from user_llm import metrics as metrics_lib
from user_llm import stats


@dataclasses.dataclass
class ProbeData:
  """Features and labels of probe examples.

  Attributes:
    x: float32 [N, F] features.
    labels: name -> int [N] class ids.
    users: int [N] user of each example.
    is_test: bool [N], True for the user's test window (scored), False for
      training windows (fitted on).
  """

  x: np.ndarray
  labels: dict[str, np.ndarray]
  users: np.ndarray
  is_test: np.ndarray


def fit_logreg(x: np.ndarray, y: np.ndarray, num_classes: int, *, l2: float = 1e-3,
               steps: int = 300, lr: float = 0.05, batch_size: int = 0,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Multinomial logistic regression by Adam on standardised features.

  Args:
    x: float [N, F]; y: int [N] in [0, num_classes).
    l2: weight penalty (on the standardised scale).
    steps: Adam steps.
    batch_size: 0 = full batch; else each step reads `batch_size` examples of a
      fresh permutation per pass (what a large label set needs: full-batch logits
      of 100k windows x 9.7k items would not fit in memory).
    seed: the minibatch order.

  Returns:
    (W [F, C], b [C]) on the raw features (the standardisation folded in):
    logits = x @ W + b.
  """
  mu, sd = x.mean(0), x.std(0) + 1e-6
  xs = jnp.asarray((x - mu) / sd, jnp.float32)
  yj = jnp.asarray(y)
  params = {'w': jnp.zeros((x.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}
  tx = optax.adam(lr)
  if batch_size:
    rng = np.random.default_rng(seed)
    passes = -(-steps * batch_size // len(y))
    order = np.concatenate([rng.permutation(len(y)) for _ in range(passes)])
    batches = jnp.asarray(order[:steps * batch_size].reshape(steps, batch_size))
  else:
    batches = jnp.zeros((steps, 0), jnp.int32)

  def loss(p, idx, xs, yj):
    xb, yb = (xs[idx], yj[idx]) if batch_size else (xs, yj)
    logits = xb @ p['w'] + p['b']
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    return ce + l2 * jnp.sum(p['w'] ** 2)

  @jax.jit  # The data are arguments: as closed-over constants XLA would fold them.
  def run(p, batches, xs, yj):
    def body(carry, idx):
      p, s = carry
      g = jax.grad(loss)(p, idx, xs, yj)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), batches)
    return p

  p = jax.device_get(run(params, batches, xs, yj))
  w = p['w'] / sd[:, None]
  return np.asarray(w), np.asarray(p['b'] - (mu / sd) @ p['w'])


def cross_fit(data: ProbeData, label: str, num_classes: int, *, folds: int = 5,
              seed: int = 0, **fit_kw) -> tuple[stats.Estimate, np.ndarray]:
  """Accuracy on every test window, each predicted by a probe blind to its user.

  Returns:
    (accuracy estimate with a 95% bootstrap CI over users, per-test-window hits).
  """
  users = np.unique(data.users)
  fold_of = dict(zip(users, np.random.default_rng(seed).permutation(len(users)) % folds))
  fold = np.asarray([fold_of[u] for u in data.users])
  y = data.labels[label]
  hits = np.zeros(len(y), bool)
  for f in range(folds):
    fit = ~data.is_test & (fold != f)
    score = data.is_test & (fold == f)
    if not score.any():
      continue
    w, b = fit_logreg(data.x[fit], y[fit], num_classes, **fit_kw)
    hits[score] = (data.x[score] @ w + b).argmax(-1) == y[score]
  test = data.is_test
  return stats.bootstrap(hits[test], data.users[test], seed=seed), hits[test]


def majority(data: ProbeData, label: str) -> stats.Estimate:
  """Accuracy of always answering the most frequent training label (the floor)."""
  y = data.labels[label]
  top = np.bincount(y[~data.is_test]).argmax()
  return stats.bootstrap(y[data.is_test] == top, data.users[data.is_test])


def score(logits: np.ndarray, y: np.ndarray, users: np.ndarray, *, ks: tuple[int, ...] = (),
          num_special: int = 0) -> tuple[dict[str, stats.Estimate], dict[str, np.ndarray]]:
  """Scores [M, C] (a fitted probe's x @ W + b, or a model's own head) on held-out targets.

  For next-event labels: the held-out events were never a training target of the
  encoder nor of the probe, so no cross-fitting over users is needed.

  Args:
    logits: float [M, C]; y: int [M], the held-out targets.
    users: int [M], the user of each (the bootstrap's unit).
    ks: () = top-1 accuracy; else Recall@K and NDCG@10 over every class >=
      `num_special` (classes below it, pad and OOV, are never candidates, and a
      target among them is a miss, as in the stage-1 catalogue evaluator), with the
      tie rule of `user_llm.metrics`.

  Returns:
    (name -> estimate with a 95% bootstrap CI over users, name -> per-target values).
  """
  if ks:
    excl = metrics_lib.exclusion_mask(None, *logits.shape, num_special)
    per = metrics_lib.rank_metrics(logits, y, excl, tuple(ks))
    known = y >= num_special
    per = {k: np.asarray(v) * known for k, v in per.items()}
  else:
    per = {'accuracy': np.asarray(metrics_lib.accuracy(logits, y))}
  return {k: stats.bootstrap(v, users) for k, v in per.items()}, per
