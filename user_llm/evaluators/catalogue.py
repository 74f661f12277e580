"""Stage 1: the held-out next item ranked over the whole item catalogue.

For each evaluation window (one per held-out target, `config.eval.split`), the
model's scores for the target event (position U, after up to U history events) rank
every catalogue item; Recall@K and NDCG@K are reported for each ranking of
`config.eval.rankings`: 'all' (every item but pad/OOV; keys `recall@10`, ...) and
'unseen' (also without every item of the user's whole past; keys
`unseen/recall@10`, ...). A target that maps to OOV (never seen in training) counts
as a miss. Models with per-feature heads also report next-event accuracies.
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import data_pipelines
import jax
import numpy as np

from user_llm import metrics as metrics_lib
from user_llm import sharding
from user_llm.evaluators import common

NUM_SPECIAL = data_pipelines.NUM_RESERVED  # Pad and OOV ids: never candidates.
RANKINGS = ('all', 'unseen')

# (params, batch) -> (item scores [B, V], feature -> logits [B, V_f] of the target event).
ScoreFn = Callable[[Any, Mapping[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


class CatalogueRanking:
  """Full-catalogue next-item ranking of a stage-1 model (see module docstring)."""

  def __init__(self, eval_cfg, score_fn: ScoreFn, dataset: Callable[..., Iterable],
               mesh: jax.sharding.Mesh | None):
    """Args: eval_cfg: config.eval; score_fn: the model's scores (traced, jitted here);
    dataset: `dataset(split, batch_size, seed, num_epochs, seen_items=bool)` -> batches;
    mesh: where batches are sharded."""
    unknown = set(eval_cfg.rankings) - set(RANKINGS)
    if unknown:
      raise ValueError(f'Unknown config.eval.rankings {sorted(unknown)}; expected {RANKINGS}.')
    self.cfg = eval_cfg
    self.dataset = dataset
    self.mesh = mesh
    self._score_fn = score_fn
    self._per_example = jax.jit(self._per_example_fn)

  def _per_example_fn(self, params, batch):
    """Per-example metrics [B] of every ranking, and per-feature accuracies."""
    ec = self.cfg
    scores, last = self._score_fn(params, batch)
    target = batch['item'][:, -1]
    known = target >= NUM_SPECIAL  # OOV targets cannot be ranked: misses.
    out = {}
    for ranking in ec.rankings:
      seen = batch['seen'] if ranking == 'unseen' else None
      excl = metrics_lib.exclusion_mask(seen, *scores.shape, NUM_SPECIAL)
      per = metrics_lib.rank_metrics(scores, target, excl, tuple(ec.ks), ec.ndcg_k)
      prefix = '' if ranking == 'all' else 'unseen/'
      out.update({prefix + k: v * known for k, v in per.items()})
    for f, logits in last.items():
      out[f'acc_{f}'] = metrics_lib.accuracy(logits, batch[f][:, -1])
    return out

  def run(self, params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(metrics with CIs for config.eval.ci_metrics, per-example columns)."""
    ec = self.cfg
    ds = self.dataset(ec.split, ec.batch_size, 0, 1, seen_items='unseen' in ec.rankings)
    cols = common.Columns()
    for i, batch in enumerate(ds):
      if 0 <= ec.max_batches <= i:
        break
      per = jax.device_get(self._per_example(params, sharding.shard_batch(batch, self.mesh)))
      keep = batch['example_mask'] & batch['mask'][:, -1] & (batch['item'][:, -1] > 0)
      cols.add(keep, **{k: batch[k] for k in common.ID_KEYS}, **per)
    examples = cols.arrays()
    if not examples:
      raise ValueError(f'No {ec.split} examples to evaluate.')
    return common.summarise(examples, tuple(ec.ci_metrics)), examples
