"""Batched sampling with `gm`'s KV cache: greedy, temperature, top-k.

The model is any Linen module whose `__call__` takes the `GemmaDecoder` keywords
(`tokens, input_mask, prefix, prefix_mask, positions, attention_mask, cache,
last_only`) and returns a `DecoderOutput`; `model_kwargs` carries extra inputs
(for User-LLM, the user memory) unchanged into every call, so the user side is
computed by the caller once and never re-run per token.

Prompts are left-padded so every row's last prompt token sits in the same cache slot;
RoPE positions count only real tokens, so the padding changes nothing. Token choice
reuses `gm.text` sampling methods (`Greedy`, `RandomSampling`, `TopkSampling`).

Letters: B batch, L prompt length, P prefix length, S cache length, T new tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
from gemma import gm
import jax
import jax.numpy as jnp
import numpy as np

from user_llm.models import gemma as gemma_lib


def left_pad(sequences: Sequence[Sequence[int]], length: int | None = None) -> np.ndarray:
  """int32[B, L] with each sequence right-aligned and 0 before it."""
  length = length or max(len(s) for s in sequences)
  out = np.zeros((len(sequences), length), np.int32)
  for i, s in enumerate(sequences):
    if len(s) > length:
      raise ValueError(f'Prompt {i} has {len(s)} tokens > max length {length}')
    if s:
      out[i, -len(s):] = s
  return out


@functools.partial(
    jax.jit,
    static_argnames=('model', 'max_new_tokens', 'sampling', 'stop_tokens', 'cache_dtype'),
)
def generate(
    model: nn.Module,
    params: Any,
    tokens: jax.Array,
    *,
    max_new_tokens: int,
    rng: jax.Array | None = None,
    prefix: jax.Array | None = None,
    prefix_mask: jax.Array | None = None,
    model_kwargs: dict[str, Any] | None = None,
    sampling: gm.text.SamplingMethod = gm.text.Greedy(),
    stop_tokens: tuple[int, ...] = (1, 106),
    cache_dtype: Any = None,
) -> jax.Array:
  """Prefills the prompt into a KV cache, then samples up to `max_new_tokens`.

  Args:
    model: the decoder-like module (static).
    params: its params.
    tokens: int[B, L] left-padded prompts (0 = padding), BOS included.
    max_new_tokens: T, number of decode steps at most.
    rng: PRNG key for non-greedy sampling.
    prefix: float[B, P, D] soft-prompt embeddings, attended by the whole prompt.
    prefix_mask: bool[B, P].
    model_kwargs: extra inputs passed to every model call (e.g. user memory).
    sampling: a `gm.text.SamplingMethod`.
    stop_tokens: a row stops after emitting one of these (default eos=1 and
      <end_of_turn>=106 of Gemma 3); later positions are 0.
    cache_dtype: dtype of the KV cache (default: the params' compute dtype).

  Returns:
    int32[B, T]: generated tokens, 0 after the stop token.
  """
  model_kwargs = model_kwargs or {}
  rng = jax.random.PRNGKey(0) if rng is None else rng
  batch, prompt_len = tokens.shape
  input_mask = tokens != 0
  if prefix is not None:
    if prefix_mask is None:
      prefix_mask = jnp.ones(prefix.shape[:2], bool)
    input_mask = jnp.concatenate([prefix_mask, input_mask], axis=1)
  pre_len = input_mask.shape[1]
  cache_len = pre_len + max_new_tokens
  cfg = model.config if hasattr(model, 'config') else model.decoder_config
  cache = gemma_lib.init_cache(
      cfg, batch, cache_len, cache_dtype or gemma_lib.compute_dtype(params))

  # Prefill: prefix-LM mask over the prompt, padded with False to the cache size.
  positions = gemma_lib.positions_from_mask(input_mask)
  mask = gemma_lib.prefix_lm_mask(input_mask, 0 if prefix is None else prefix.shape[1])
  mask = jnp.pad(mask, ((0, 0), (0, 0), (0, max_new_tokens)))
  out = model.apply(
      {'params': params}, tokens, input_mask=tokens != 0, prefix=prefix,
      prefix_mask=prefix_mask, positions=positions, attention_mask=mask,
      cache=cache, last_only=True, **model_kwargs,
  )
  slot_valid = jnp.pad(input_mask, ((0, 0), (0, max_new_tokens)))
  last_pos = positions[:, -1]
  stop = jnp.asarray(stop_tokens, jnp.int32)

  def choose(logits, step):
    return sampling.get_next_tokens(
        logits.astype(jnp.float32), jax.random.fold_in(rng, step)
    ).astype(jnp.int32)

  def body(carry):
    step, cache, logits, slot_valid, last_pos, done, out_tokens = carry
    token = jnp.where(done, 0, choose(logits, step))
    out_tokens = out_tokens.at[:, step].set(token)
    done = done | jnp.isin(token, stop)
    slot_valid = slot_valid.at[:, pre_len + step].set(True)
    pos = last_pos + 1
    res = model.apply(
        {'params': params}, token[:, None], input_mask=jnp.ones((batch, 1), bool),
        positions=pos[:, None], attention_mask=slot_valid[:, None, :],
        cache=cache, last_only=True, **model_kwargs,
    )
    return step + 1, res.cache, res.logits, slot_valid, pos, done, out_tokens

  def cond(carry):
    step, *_, done, _ = carry
    return (step < max_new_tokens) & ~jnp.all(done)

  init = (
      jnp.int32(0), out.cache, out.logits, slot_valid, last_pos,
      jnp.zeros((batch,), bool), jnp.zeros((batch, max_new_tokens), jnp.int32),
  )
  *_, out_tokens = jax.lax.while_loop(cond, body, init)
  return out_tokens


def trim(tokens: np.ndarray, stop_tokens: Sequence[int] = (1, 106)) -> list[list[int]]:
  """Rows of `generate` output cut before the first stop token or padding."""
  rows = []
  for row in np.asarray(tokens):
    kept = []
    for t in row.tolist():
      if t == 0 or t in stop_tokens:
        break
      kept.append(t)
    rows.append(kept)
  return rows
