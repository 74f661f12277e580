"""Shared by the stage-2 benchmarks: re-scoring trained rows, non-LLM references.

  reevaluate(workdir, **eval_overrides)  a trained row's evaluators under changed
                                         `config.eval` fields (no retraining)
  run_evaluators(config, load_params)    the same for any config (e.g. zero-shot)
  reference_hits(exp, scores_fn)         a non-LLM scorer's Recall@K over the very
                                         next-item candidates the LLM rows rank
  stage1_scores(exp, workdir)            the stage-1 run's item head, as a scores_fn
  popularity_scores(exp)                 training counts, as a scores_fn
  genre_taste_scores(exp)                the history's genre shares, as a scores_fn
  load_results(path), row_key(workdir)   the benchmarks' accumulated JSON and its keys
"""

import json
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from user_llm import checkpointing
from user_llm import experiment
from user_llm import metrics
from user_llm import sharding
from user_llm.evaluators import candidates

# scores_fn(batch) -> float[B, num_items]: a score for every item id of the catalogue.
ScoresFn = Callable[[dict[str, np.ndarray]], np.ndarray]


def reevaluate(workdir: str, tasks: tuple[str, ...] | None = None,
               **eval_overrides: Any) -> tuple[dict[str, dict[str, np.ndarray]], float]:
  """({task: per-example columns}, seconds): the row's evaluators, `config.eval` changed.

  Args:
    workdir: a trained stage-2 row (its config.json and final checkpoint).
    tasks: the evaluators to run (default: the row's own `config.eval.tasks`).
    **eval_overrides: `config.eval` fields to set, e.g. negatives='popularity'.
  """
  config = experiment.read_config(os.path.join(workdir, 'config.json'))
  return run_evaluators(config, lambda exp: checkpointing.load_params(workdir), tasks,
                        **eval_overrides)


def run_evaluators(config, load_params: Callable[[Any], Any],
                   tasks: tuple[str, ...] | None = None,
                   **eval_overrides: Any) -> tuple[dict[str, dict[str, np.ndarray]], float]:
  """`reevaluate` for any config: load_params(exp) gives the params (e.g. a checkpoint,
  or the pretrained Gemma alone for a row with nothing to train)."""
  for key, value in eval_overrides.items():
    config.eval[key] = value
  if tasks is not None:
    config.eval.tasks = tasks
  exp = experiment.build(config, sharding.make_mesh(config.mesh))
  params = exp.inference_params(load_params(exp))
  t0 = time.time()
  out = {}
  for evaluator in exp.evaluators():
    _, examples = evaluator.run(params)
    out[evaluator.task] = {k: np.asarray(v) for k, v in examples.items()}
  return out, time.time() - t0


def reference_hits(exp, scores_fn: ScoresFn) -> dict[str, np.ndarray]:
  """Per-test-example 'user' and 'recall@K' of `scores_fn` over the LLM rows' candidates.

  The candidates are `evaluators.candidates.sample_negatives`' draws for the rows of
  `exp.config.eval` (same seed, order and `negatives`), ranked with the same tie rule.
  """
  ec = exp.config.eval
  rng = np.random.default_rng(ec.seed)  # As CandidateRanking.run.
  weights = candidates.negative_weights(exp)
  cols = {'user': []}
  ds = exp.dataset(ec.split, 'next_item', ec.batch_size, 0, shuffle=False, num_epochs=1)
  num_items = len(exp.prepared.catalogue.names)
  for batch in ds:
    neg = candidates.sample_negatives(rng, batch['target'], num_items, ec.num_candidates,
                                      weights)
    ids = np.concatenate([batch['target'][:, None], neg], axis=1)
    per = metrics.recall_at(np.take_along_axis(scores_fn(batch), ids, axis=1),
                            np.zeros(len(ids), np.int32), ec.ks)
    keep = batch['example_mask']
    cols['user'].append(batch['user'][keep])
    for k, v in per.items():
      cols.setdefault(k, []).append(v[keep])
  return {k: np.concatenate(v) for k, v in cols.items()}


def stage1_scores(exp, workdir: str) -> ScoresFn:
  """The stage-1 run in `workdir`: its item head after the last history event."""
  s1 = experiment.read_config(os.path.join(workdir, 'config.json'))  # Old ones too.
  s1exp = experiment.build(s1, exp.mesh)  # Builds stage 1's data and model.
  params = checkpointing.load_params(workdir)
  apply = jax.jit(lambda p, feats, mask: s1exp.model.apply({'params': p}, feats, mask)[1]['item'][:, -1])
  return lambda batch: np.asarray(apply(params, s1exp.inputs(batch), batch['mask']))


def popularity_scores(exp) -> ScoresFn:
  """Every user alike: each item's training count (`Prepared.item_counts`)."""
  counts = exp.prepared.item_counts.astype(np.float32)
  return lambda batch: np.broadcast_to(counts, (len(batch['target']), len(counts)))


def genre_taste_scores(exp) -> ScoresFn:
  """Genre taste alone: the mean share of the history's events in each of the item's
  genres (the history's first-genre ids, `batch['genre']`); no popularity, no item ids."""
  genre_ids = exp.prepared.catalogue.genre_ids
  num_genres = len(exp.prepared.genres)
  has = np.zeros((len(genre_ids), num_genres), np.float32)  # [V_item, G] multi-hot.
  for i, gs in enumerate(genre_ids):
    if gs:
      has[i, list(gs)] = 1.0 / len(gs)

  def scores(batch):
    g = np.where(batch['mask'], batch['genre'], 0)
    share = np.stack([np.bincount(r, minlength=num_genres) for r in g]).astype(np.float32)
    share[:, 0] = 0.0  # Padding.
    share /= np.maximum(share.sum(1, keepdims=True), 1.0)
    return share @ has.T
  return scores


def load_results(path: str) -> dict:
  """The accumulated per-row results of a re-scoring benchmark ({} before its first row)."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def row_key(workdir: str) -> str:
  """'<workroot>/<row>' of a row workdir, e.g. 'stage2_bench_s16/xattn_future_L50'."""
  workdir = workdir.rstrip('/')
  return os.path.basename(os.path.dirname(workdir)) + '/' + os.path.basename(workdir)
