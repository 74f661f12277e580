"""Per-example values -> reported metrics, shared by every evaluator."""

from collections.abc import Iterable, Mapping

import numpy as np

from user_llm import stats

# Columns that identify an example; never averaged.
ID_KEYS = ('user', 'target_index', 'num_events')


class Columns:
  """Accumulates per-example arrays batch by batch (only the rows kept)."""

  def __init__(self):
    self._cols: dict[str, list[np.ndarray]] = {}

  def add(self, keep: np.ndarray, **values) -> None:
    """values: name -> [B] arrays; rows where `keep` is False are dropped."""
    for k, v in values.items():
      self._cols.setdefault(k, []).append(np.asarray(v)[keep])

  def arrays(self) -> dict[str, np.ndarray]:
    return {k: np.concatenate(v) for k, v in self._cols.items()}


def summarise(examples: Mapping[str, np.ndarray], ci_keys: Iterable[str] | None = None,
              prefix: str = '') -> dict[str, float]:
  """Mean of every metric column, and `_lo`/`_hi` 95% bootstrap bounds over users.

  Args:
    examples: column -> [N] (must hold 'user'; `ID_KEYS` are not metrics).
    ci_keys: metrics that get a CI (None = all of them).
    prefix: prepended to every key (e.g. 'next_item/').

  Returns:
    {prefix+metric: mean, prefix+metric_lo, prefix+metric_hi, prefix+'examples',
     prefix+'users'}.
  """
  if 'user' not in examples or not len(examples['user']):
    raise ValueError(f'No {prefix or "evaluation "}examples to summarise.')
  users = examples['user']
  out = {}
  for k, v in sorted(examples.items()):
    if k in ID_KEYS:
      continue
    out[prefix + k] = float(np.mean(v))
    if ci_keys is None or k in ci_keys:
      est = stats.bootstrap(v, users)
      out[f'{prefix}{k}_lo'], out[f'{prefix}{k}_hi'] = est.lo, est.hi
  out[prefix + 'examples'] = float(len(users))
  out[prefix + 'users'] = float(len(np.unique(users)))
  return out


def llm_inputs(exp, params, batch) -> tuple[np.ndarray, dict]:
  """(int32[B, L] left-padded [BOS] prompts, the user inputs) of a stage-2 test batch.

  `exp` is a set-up `UserLLMExperiment`; the user side (encoder -> memory) runs once
  here and is reused for every candidate or generated token.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from user_llm.models import user_llm as ul  # pylint: disable=g-import-not-at-top
  keep = batch['example_mask']
  # Few prompt shapes, so few compiled prefills: the length is rounded up (to 32 up
  # to 256 tokens, to 128 beyond). With one shape per batch, two text-prompt runs
  # (prompts of 1,000-1,250 tokens) compiled a new prefill nearly every batch and
  # were killed out of host memory (24 GB) around their 60th batch.
  longest = int(batch['prompt_len'].max())
  step = 32 if longest <= 256 else 128
  prompts = np.zeros((len(keep), -(-longest // step) * step), np.int32)
  for r, p in enumerate(batch['prompt_len']):
    if p:
      prompts[r, -p:] = batch['tokens'][r, :p]
  prompts[~keep, -1] = exp.tokenizer.bos_id  # Padding rows: a harmless prompt.
  if exp.config.eval.get('target_item_memory', False):
    # Diagnostic (item read-out rows): the memory is the true answer's own item
    # embedding (`UserLLM.item_memory`), what item alignment taught Gemma to name.
    memory = exp.model.apply({'params': params}, jnp.asarray(batch['target']),
                             method='item_memory')
    return prompts, ul.inputs_from_memory(exp.model, params, *memory)
  rows = np.arange(len(keep))
  shift = exp.config.eval.get('shuffle_users', 0)
  if shift:  # Counterfactual: another real user's history (config.eval.shuffle_users).
    real = rows[keep]
    rows[real] = np.roll(real, -shift)
  feats = {f: jnp.asarray(batch[f][rows]) for f in exp.encoder_inputs}
  return prompts, ul.user_inputs(exp.model, params, feats, jnp.asarray(batch['mask'][rows]))


def eval_batches(exp, task: str):
  """The stage-2 evaluation batches of `task` (config.eval: split, batch size, max_batches)."""
  ec = exp.config.eval
  ds = exp.dataset(ec.split, task, ec.batch_size, 0, shuffle=False, num_epochs=1)
  for i, batch in enumerate(ds):
    if 0 <= ec.max_batches <= i:
      return
    yield batch
