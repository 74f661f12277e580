"""Exact-likelihood ranking of candidate answers with one shared prompt prefill.

Stage-2 Recall@K ranks candidate answers (item names, genre names) by
log p(answer + EOS | user, prompt). The prompt (and the user side) is prefilled once
per example into the KV cache; the cache is then repeated for the C candidates,
which are scored in one cached forward each. Text prompts are long (about 22 Gemma
tokens per history event), so re-reading them per candidate would cost C times more.

Letters: B examples, C candidates, A answer tokens, P prefix, L prompt, S cache, V vocab.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from user_llm.models import gemma as gemma_lib


@functools.partial(jax.jit, static_argnames=('model', 'answer_len'))
def _prefill(model: nn.Module, params: Any, prompt: jax.Array, user: dict[str, Any],
             answer_len: int):
  """Prompt (+ soft prompt) into a KV cache with room for `answer_len` more tokens."""
  user = dict(user)
  prefix, prefix_mask = user.pop('prefix', None), user.pop('prefix_mask', None)
  input_mask = prompt != 0
  if prefix is not None:
    input_mask = jnp.concatenate([prefix_mask, input_mask], axis=1)
  cache = gemma_lib.init_cache(model.config, prompt.shape[0], input_mask.shape[1] + answer_len,
                               gemma_lib.compute_dtype(params))
  positions = gemma_lib.positions_from_mask(input_mask)
  mask = gemma_lib.prefix_lm_mask(input_mask, 0 if prefix is None else prefix.shape[1])
  out = model.apply({'params': params}, prompt, input_mask=prompt != 0, prefix=prefix,
                    prefix_mask=prefix_mask, positions=positions,
                    attention_mask=jnp.pad(mask, ((0, 0), (0, 0), (0, answer_len))),
                    cache=cache, last_only=True, **user)
  return out.cache, out.logits, input_mask, positions[:, -1]


@functools.partial(jax.jit, static_argnames=('model',))
def _score_chunk(model: nn.Module, params: Any, cache, last_logits, input_mask, last_pos,
                 cands: jax.Array, user: dict[str, Any]) -> jax.Array:
  """float[B, C] sum of log-probs of candidates int[B, C, A] after the cached prompt."""
  b, c, a = cands.shape
  pre = input_mask.shape[1]
  rep = lambda x: jnp.repeat(x, c, axis=0)  # [B, ...] -> [B*C, ...]
  cache = jax.tree.map(rep, cache)
  # Cross-attention memory K/V (a soft prompt already sits in the cache).
  user = jax.tree.map(rep, {k: v for k, v in user.items() if not k.startswith('prefix')})
  cands = cands.reshape(b * c, a)
  cand_mask = cands != 0
  # Candidate token j sees the prompt slots and candidate slots <= j.
  attn = jnp.concatenate([
      jnp.broadcast_to(rep(input_mask)[:, None, :], (b * c, a, pre)),
      jnp.broadcast_to(jnp.tril(jnp.ones((a, a), bool))[None], (b * c, a, a)),
  ], axis=2)
  pos = rep(last_pos)[:, None] + 1 + jnp.arange(a)[None]
  res = model.apply({'params': params}, cands, input_mask=cand_mask, positions=pos,
                    attention_mask=attn, cache=cache, **user)
  # Token 0 of a candidate is predicted by the prompt's last logits, token j by j-1.
  logits = jnp.concatenate([rep(last_logits)[:, None], res.logits[:, :-1]], axis=1)
  # logit[token] - logsumexp(logits): never materialises a [B*C, A, V] log-softmax.
  logits = logits.astype(jnp.float32)
  tok_logp = (jnp.take_along_axis(logits, cands[..., None], axis=-1)[..., 0]
              - jax.nn.logsumexp(logits, axis=-1))
  return jnp.sum(jnp.where(cand_mask, tok_logp, 0.0), axis=-1).reshape(b, c)


def score_candidates(model, params, prompts: np.ndarray, candidates: np.ndarray,
                     user: dict[str, Any], chunk: int = 0) -> np.ndarray:
  """Log-likelihood of every candidate answer; the prompt is prefilled once.

  Args:
    model: a module with the `GemmaDecoder` call keywords (GemmaDecoder, UserLLM).
    params: its params.
    prompts: int32[B, L] left-padded prompts (BOS included).
    candidates: int32[B, C, A] candidate answers (EOS included), right-padded with 0.
    user: per-example user inputs (`user_llm.user_inputs`), leading dim B.
    chunk: score at most this many candidates per call (bounds the [B*C, A, V]
      logits); 0 = all at once.

  Returns:
    float32[B, C].
  """
  # Only the longest candidate's length (rounded up to 8: few compiled shapes) is
  # scored: candidates are right-padded, and padded positions cost a 262k-way logit.
  used = int((candidates != 0).any((0, 1)).nonzero()[0].max(initial=0)) + 1
  candidates = candidates[:, :, :min(candidates.shape[2], -(-used // 8) * 8)]
  c, a = candidates.shape[1:]
  chunk = chunk or c
  state = _prefill(model, params, jnp.asarray(prompts), user, a)
  parts = []
  for start in range(0, c, chunk):
    part = candidates[:, start:start + chunk]
    if part.shape[1] < chunk:  # Keep one compiled shape: pad with empty candidates.
      part = np.pad(part, ((0, 0), (0, chunk - part.shape[1]), (0, 0)))
    scores = _score_chunk(model, params, *state, jnp.asarray(part), user)
    parts.append(np.asarray(scores)[:, :min(chunk, c - start)])
  return np.concatenate(parts, axis=1)


def recall_at(scores: np.ndarray, target: np.ndarray, ks=(1, 5, 10)) -> dict[str, np.ndarray]:
  """Per-example hit@K: the target candidate ranks within the top K.

  Ties count against the target (rank = number of candidates scoring >= it, minus
  itself), so a constant scorer gets Recall@1 = 0, never a lucky 1.
  """
  tgt = np.take_along_axis(scores, target[:, None], axis=1)
  rank = (scores >= tgt).sum(axis=1) - 1
  return {f'recall@{k}': (rank < k).astype(np.float32) for k in ks}
