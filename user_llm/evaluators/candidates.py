"""Stage 2: rank candidate answers by the LLM's likelihood (next item, favourite genre).

Each candidate answer (its tokens + EOS) is scored by log p(answer | user, prompt)
(`user_llm.decoding.score_candidates`: the prompt is prefilled once per example).
- 'fav_genre': every genre name of the catalogue; Recall@1.
- 'next_item': the true next item and `config.eval.num_candidates - 1` catalogue items
  drawn without replacement (fixed per example by `config.eval.seed`), uniformly or
  in proportion to their training counts (`config.eval.negatives`), a
  sampled-candidates protocol because scoring all 9.7k MovieLens titles per user is
  out of reach on CPU (`num_candidates=0` ranks the full catalogue); Recall@K.
  Uniform negatives are mostly obscure titles, so popularity alone ranks the true
  item high; popularity-sampled ones leave that to what is known of the user.
"""

import numpy as np

import data_pipelines
from user_llm import decoding
from user_llm import metrics
from user_llm.evaluators import common

TASKS = ('next_item', 'fav_genre')


def sample_negatives(rng: np.random.Generator, targets: np.ndarray, num_items: int,
                     num_candidates: int, weights: np.ndarray | None = None) -> np.ndarray:
  """int[B, C-1] item ids drawn without replacement, never the target.

  Args:
    rng: draws in row order, so a reference model can rebuild the same candidates.
    targets: int[B] the true item ids.
    num_items: ids are drawn from [NUM_RESERVED, num_items) (never pad/OOV).
    num_candidates: C, the target included; 0 = every other item.
    weights: None draws uniformly; else float[num_items] draw weights (e.g.
      `Prepared.item_counts`: popularity-sampled negatives); items of weight 0 are
      never drawn.
  """
  first = data_pipelines.NUM_RESERVED
  n = num_candidates or (num_items - first)
  out = []
  for t in targets:
    pool = np.setdiff1d(np.arange(first, num_items), [t])
    if weights is None:
      out.append(rng.choice(pool, size=min(n - 1, len(pool)), replace=False))
      continue
    pool = pool[weights[pool] > 0]
    p = weights[pool] / weights[pool].sum()
    out.append(rng.choice(pool, size=min(n - 1, len(pool)), replace=False, p=p))
  return np.asarray(out, np.int32)


def negative_weights(exp) -> np.ndarray | None:
  """Draw weights of `config.eval.negatives` (one home for the rows and references).

  'uniform': None (every catalogue item alike); 'popularity': training-event counts,
  so negatives are as popular as true next items tend to be and an answer prior that
  knows only popularity ranks the true item near chance.
  """
  kind = exp.config.eval.get('negatives', 'uniform')
  if kind == 'uniform':
    return None
  if kind == 'popularity':
    return exp.prepared.item_counts.astype(np.float64)
  raise ValueError(f"config.eval.negatives={kind!r}: expected 'uniform' or 'popularity'.")


class CandidateRanking:
  """Recall@K of the true answer among candidate answers (see module docstring)."""

  def __init__(self, exp, task: str):
    """Args: exp: a set-up `UserLLMExperiment`; task: one of TASKS."""
    if task not in TASKS:
      raise ValueError(f'CandidateRanking scores {TASKS}, not {task!r}.')
    if task == 'fav_genre' and exp.config.eval.get('target_item_memory', False):
      raise ValueError('config.eval.target_item_memory reads each target as an item id: '
                       "evaluate next_item only (config.eval.tasks=('next_item',)).")
    self.exp, self.task = exp, task
    self.ks = (1,) if task == 'fav_genre' else tuple(exp.config.eval.ks)
    self.weights = negative_weights(exp) if task == 'next_item' else None

  def candidates(self, batch, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(int32[B, C, A] candidate answers, int32[B] index of the true one)."""
    exp = self.exp
    a, eos = exp.config.data.max_answer_tokens, exp.tokenizer.eos_id
    enc = lambda text: (exp.tokenizer.encode(text)[:a - 1] + [eos])
    b = len(batch['target'])
    first = data_pipelines.NUM_RESERVED
    if self.task == 'fav_genre':
      names = exp.prepared.genres[first:]
      cands = [[enc(n) for n in names]] * b
      target = np.maximum(batch['target'] - first, 0)  # OOV genre -> scored as index 0.
    else:
      names = exp.prepared.catalogue.names
      negatives = sample_negatives(rng, batch['target'], len(names),
                                   exp.config.eval.num_candidates, self.weights)
      cands, target = [], np.zeros(b, np.int32)
      for i in range(b):
        p = int(batch['prompt_len'][i])
        true = [t for t in batch['tokens'][i, p:p + a].tolist() if t != 0]
        cands.append([true] + [enc(names[j]) for j in negatives[i]])
    out = np.zeros((b, len(cands[0]), a), np.int32)
    for i, row in enumerate(cands):
      for j, c in enumerate(row):
        out[i, j, :len(c)] = c
    return out, target.astype(np.int32)

  def run(self, params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(metrics '{task}/recall@K' with CIs, per-example columns)."""
    exp = self.exp
    rng = np.random.default_rng(exp.config.eval.seed)
    cols = common.Columns()
    for batch in common.eval_batches(exp, self.task):
      prompts, user = common.llm_inputs(exp, params, batch)
      cands, target = self.candidates(batch, rng)
      scores = decoding.score_candidates(exp.model, params, prompts, cands, user,
                                         chunk=exp.config.eval.candidate_chunk)
      cols.add(batch['example_mask'], user=batch['user'],
               **metrics.recall_at(scores, target, self.ks))
    examples = cols.arrays()
    return common.summarise(examples, prefix=f'{self.task}/'), examples
