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
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

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
               steps: int = 300, lr: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
  """Multinomial logistic regression by full-batch Adam on standardised features.

  Args:
    x: float [N, F]; y: int [N] in [0, num_classes).
    l2: weight penalty (on the standardised scale).

  Returns:
    (W [F, C], b [C]) on the raw features (the standardisation folded in):
    logits = x @ W + b.
  """
  mu, sd = x.mean(0), x.std(0) + 1e-6
  xs = jnp.asarray((x - mu) / sd, jnp.float32)
  yj = jnp.asarray(y)
  params = {'w': jnp.zeros((x.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}
  tx = optax.adam(lr)

  def loss(p):
    logits = xs @ p['w'] + p['b']
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, yj).mean()
    return ce + l2 * jnp.sum(p['w'] ** 2)

  @jax.jit
  def run(p):
    def body(carry, _):
      p, s = carry
      g = jax.grad(loss)(p)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), None, length=steps)
    return p

  p = jax.device_get(run(params))
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
