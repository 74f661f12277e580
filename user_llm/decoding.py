"""Decoding with a user in context: prefill once, then sample or score answers.

As `gm.text`'s sampler, the prompt prefill and the per-token loop are apart:

  ctx = prefill(model, params, prompts, user, extra_len)   # once per user and prompt
  tokens = sample(model, params, ctx, max_new_tokens=..., stop_tokens=...)
  scores = score_candidates(model, params, prompts, candidates, user)  # prefill inside

`model` is any Linen module whose `__call__` takes the `GemmaDecoder` keywords
(`tokens, input_mask, prefix, prefix_mask, positions, attention_mask, cache,
last_only`) and returns a `DecoderOutput`: `GemmaDecoder` or `UserLLM`. `user` is what
`user_llm.models.user_llm.user_inputs` returns: {} (plain decoder, text prompt),
{'prefix', 'prefix_mask'} (soft prompt: it goes into the KV cache with the prompt) or
{'memory_kv', 'memory_mask'} (cross-attention: passed unchanged to every later call).
The user side is thus computed once by the caller and never re-run per token.

Prompts are left-padded (`left_pad`) so every row's last prompt token sits in the same
cache slot; RoPE positions count only real tokens, so the padding changes nothing.
The KV cache is `gm`'s (left-aligned; a call writes its tokens from `end_index` on).
Token choice reuses `gm.text` sampling methods (`Greedy`, `RandomSampling`,
`TopkSampling`).

Letters: B batch (users x prompts), L prompt length, P soft-prompt (prefix) length,
S cache length (the prefill fills P + L slots and leaves `extra_len` free),
C candidate answers, A answer tokens, T new tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any

import flax
import flax.linen as nn
from gemma import gm
import jax
import jax.numpy as jnp
import numpy as np

from user_llm.models import cached_attention
from user_llm.models import gemma as gemma_lib

_PREFIX_KEYS = ('prefix', 'prefix_mask')


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


def trim(tokens: np.ndarray, stop_tokens: Sequence[int]) -> list[list[int]]:
  """Rows of `sample` output int[B, T] cut before the first stop token or padding."""
  rows = []
  for row in np.asarray(tokens):
    kept = []
    for t in row.tolist():
      if t == 0 or t in stop_tokens:
        break
      kept.append(t)
    rows.append(kept)
  return rows


def memory_inputs(user: dict[str, Any] | None) -> dict[str, Any]:
  """The part of `user` every call needs (cross-attention memory); the soft prompt
  is read once, by the prefill, and lives in the KV cache after it."""
  return {k: v for k, v in (user or {}).items() if k not in _PREFIX_KEYS}


@flax.struct.dataclass
class UserContext:
  """A user and prompt after the prefill: all that sampling and scoring read."""

  user: dict[str, Any]  # `memory_inputs(user)`: passed to every later call, [B, ...].
  cache: gemma_lib.Cache  # per layer k/v [B, S, K, H]; P + L slots filled.
  logits: jax.Array  # float[B, V]: the next-token logits after the prompt.
  input_mask: jax.Array  # bool[B, P + L]: the filled slots that are real tokens.
  last_pos: jax.Array  # int32[B]: RoPE position of the last prompt token.

  @property
  def cache_size(self) -> int:
    """S."""
    return next(iter(self.cache.values()))['k'].shape[1]

  def slot_mask(self) -> jax.Array:
    """bool[B, S]: the cache slots later tokens may read (the free ones are False)."""
    used = self.input_mask.shape[1]
    return jnp.pad(self.input_mask, ((0, 0), (0, self.cache_size - used)))


@functools.partial(jax.jit, static_argnames=('model', 'extra_len', 'cache_dtype'))
def prefill(model: nn.Module, params: Any, prompts: jax.Array,
            user: dict[str, Any] | None = None, extra_len: int = 0, *,
            cache_dtype: Any = None) -> UserContext:
  """Prompt (after the soft prompt, if any) into a fresh KV cache.

  Args:
    model: the decoder-like module (static).
    params: its params.
    prompts: int[B, L] left-padded prompts (0 = padding), BOS included.
    user: `user_inputs` with leading dim B (None or {} for none); a soft prompt
      (`prefix` float[B, P, D], `prefix_mask` bool[B, P], default all True) is
      attended bidirectionally (prefix-LM mask), the prompt causally.
    extra_len: free cache slots left for the tokens to come (static).
    cache_dtype: dtype of the KV cache (default: the params' compute dtype).

  Returns:
    The `UserContext`, cache length S = P + L + extra_len.
  """
  user = dict(user or {})
  prefix, prefix_mask = user.pop('prefix', None), user.pop('prefix_mask', None)
  input_mask = prompts != 0
  if prefix is not None:
    if prefix_mask is None:
      prefix_mask = jnp.ones(prefix.shape[:2], bool)
    input_mask = jnp.concatenate([prefix_mask, input_mask], axis=1)
  cache = gemma_lib.init_cache(model.config, prompts.shape[0], input_mask.shape[1] + extra_len,
                               cache_dtype or gemma_lib.compute_dtype(params))
  positions = gemma_lib.positions_from_mask(input_mask)
  mask = gemma_lib.prefix_lm_mask(input_mask, 0 if prefix is None else prefix.shape[1])
  # A left-padded causal prompt into an empty cache: local layers may read only their
  # window's band of slots (cached_attention.contiguous_prompt); a soft prompt is
  # bidirectional and its padding gap breaks the slot = position-offset rule.
  with cached_attention.contiguous_prompt(prefix is None):
    out = model.apply(
        {'params': params}, prompts, input_mask=prompts != 0, prefix=prefix,
        prefix_mask=prefix_mask, positions=positions,
        attention_mask=jnp.pad(mask, ((0, 0), (0, 0), (0, extra_len))),
        cache=cache, last_only=True, **user)
  return UserContext(user=user, cache=out.cache, logits=out.logits, input_mask=input_mask,
                     last_pos=positions[:, -1])


def extend(model: nn.Module, params: Any, cache: gemma_lib.Cache, tokens: jax.Array,
           slot_mask: jax.Array, last_pos: jax.Array, user: dict[str, Any], *,
           last_only: bool = False) -> gemma_lib.DecoderOutput:
  """Runs `tokens` after the filled slots of `cache` (a decode step when T = 1).

  New token j is written to slot `end_index + j` and sees the slots of `slot_mask`
  and new tokens <= j (all real: a generated 0 is a token, and the right padding of
  a candidate is read only by later padding). Call it inside a jit; the T slots from
  `end_index` on must be free (False in `slot_mask`, and inside the cache).

  Args:
    model, params: as `prefill`.
    cache: the KV cache, S slots.
    tokens: int[B, T].
    slot_mask: bool[B, S], the cached slots the new tokens may read.
    last_pos: int[B], position of the last cached token (new ones follow it).
    user: `memory_inputs(user)`.
    last_only: only the last position's logits.

  Returns:
    DecoderOutput: logits float[B, T, V] (float[B, V] with `last_only`), new cache.
  """
  batch, length = tokens.shape
  start = next(iter(cache.values()))['end_index'][0]  # gm writes every row there.
  # The new tokens' slots are free in `slot_mask`, so a causal block written over
  # them is the whole mask (a slice update: no per-slot arithmetic per decode step).
  mask = jnp.broadcast_to(slot_mask[:, None, :], (batch, length, slot_mask.shape[1]))
  causal = jnp.broadcast_to(jnp.tril(jnp.ones((length, length), bool)), (batch, length, length))
  mask = jax.lax.dynamic_update_slice(mask, causal, (0, 0, start))
  return model.apply(
      {'params': params}, tokens, input_mask=jnp.ones((batch, length), bool),
      positions=last_pos[:, None] + 1 + jnp.arange(length, dtype=jnp.int32)[None],
      attention_mask=mask, cache=cache, last_only=last_only, **user)


@functools.partial(jax.jit,
                   static_argnames=('model', 'max_new_tokens', 'sampling', 'stop_tokens'))
def sample(model: nn.Module, params: Any, ctx: UserContext, *, max_new_tokens: int,
           rng: jax.Array | None = None,
           sampling: gm.text.SamplingMethod = gm.text.Greedy(),
           stop_tokens: tuple[int, ...] = ()) -> jax.Array:
  """Samples up to T = `max_new_tokens` tokens after a prefilled context.

  Args:
    model, params: as `prefill`.
    ctx: from `prefill` with `extra_len` >= T.
    max_new_tokens: T, number of decode steps at most.
    rng: PRNG key for non-greedy sampling (default PRNGKey(0)).
    sampling: a `gm.text.SamplingMethod`.
    stop_tokens: a row stops after emitting one of these (the tokenizer's
      `stop_ids`); () = always T tokens.

  Returns:
    int32[B, T]: generated tokens, 0 after the stop token.
  """
  used = ctx.input_mask.shape[1]
  if max_new_tokens > ctx.cache_size - used:
    raise ValueError(f'max_new_tokens={max_new_tokens} > the {ctx.cache_size - used} free '
                     'cache slots: prefill with a larger extra_len')
  rng = jax.random.PRNGKey(0) if rng is None else rng
  batch = ctx.logits.shape[0]
  stop = jnp.asarray(stop_tokens, jnp.int32)

  def body(carry):
    step, cache, logits, slot_mask, pos, done, out = carry
    token = sampling.get_next_tokens(logits.astype(jnp.float32), jax.random.fold_in(rng, step))
    token = jnp.where(done, 0, token.astype(jnp.int32))
    out = out.at[:, step].set(token)
    done = done | jnp.isin(token, stop)
    res = extend(model, params, cache, token[:, None], slot_mask, pos, ctx.user, last_only=True)
    slot_mask = slot_mask.at[:, used + step].set(True)
    return step + 1, res.cache, res.logits, slot_mask, pos + 1, done, out

  def cond(carry):
    step, *_, done, _ = carry
    return (step < max_new_tokens) & ~jnp.all(done)

  init = (jnp.int32(0), ctx.cache, ctx.logits, ctx.slot_mask(), ctx.last_pos,
          jnp.zeros((batch,), bool), jnp.zeros((batch, max_new_tokens), jnp.int32))
  return jax.lax.while_loop(cond, body, init)[-1]


def generate(model: nn.Module, params: Any, prompts: jax.Array,
             user: dict[str, Any] | None = None, *, max_new_tokens: int,
             rng: jax.Array | None = None,
             sampling: gm.text.SamplingMethod = gm.text.Greedy(),
             stop_tokens: tuple[int, ...] = (), cache_dtype: Any = None) -> jax.Array:
  """`prefill` then `sample`: int32[B, T] for prompts int[B, L] (see both)."""
  ctx = prefill(model, params, jnp.asarray(prompts), user, max_new_tokens,
                cache_dtype=cache_dtype)
  return sample(model, params, ctx, max_new_tokens=max_new_tokens, rng=rng,
                sampling=sampling, stop_tokens=tuple(stop_tokens))


@functools.partial(jax.jit, static_argnames=('model',))
def _score_chunk(model: nn.Module, params: Any, ctx: UserContext,
                 cands: jax.Array) -> jax.Array:
  """float[B, C] sum of log-probs of candidates int[B, C, A] after the cached prompt."""
  b, c, a = cands.shape
  # [B, ...] -> [B*C, ...]: the prompt's cache (and the user memory) per candidate.
  ctx = jax.tree.map(lambda x: jnp.repeat(x, c, axis=0), ctx)
  cands = cands.reshape(b * c, a)
  res = extend(model, params, ctx.cache, cands, ctx.slot_mask(), ctx.last_pos, ctx.user)
  # Token 0 of a candidate is predicted by the prompt's last logits, token j by j-1.
  logits = jnp.concatenate([ctx.logits[:, None], res.logits[:, :-1]], axis=1)
  # logit[token] - logsumexp(logits): never materialises a [B*C, A, V] log-softmax.
  logits = logits.astype(jnp.float32)
  tok_logp = (jnp.take_along_axis(logits, cands[..., None], axis=-1)[..., 0]
              - jax.nn.logsumexp(logits, axis=-1))
  return jnp.sum(jnp.where(cands != 0, tok_logp, 0.0), axis=-1).reshape(b, c)


def score_candidates(model: nn.Module, params: Any, prompts: np.ndarray,
                     candidates: np.ndarray, user: dict[str, Any] | None = None,
                     chunk: int = 0) -> np.ndarray:
  """Log-likelihood log p(answer | user, prompt) of every candidate answer.

  The prompt (and soft prompt) is prefilled once; its cache is then repeated for
  the candidates, each scored in one cached forward. Text prompts are long (about 22
  Gemma tokens per history event), so re-reading them per candidate would cost C
  times more.

  Args:
    model, params: as `prefill`.
    prompts: int32[B, L] left-padded prompts (BOS included).
    candidates: int32[B, C, A] candidate answers (EOS included), right-padded with 0.
    user: `user_inputs`, leading dim B.
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
  ctx = prefill(model, params, jnp.asarray(prompts), user, a)
  parts = []
  for start in range(0, c, chunk):
    part = candidates[:, start:start + chunk]
    if part.shape[1] < chunk:  # Keep one compiled shape: pad with empty candidates.
      part = np.pad(part, ((0, 0), (0, chunk - part.shape[1]), (0, 0)))
    scores = _score_chunk(model, params, ctx, jnp.asarray(part))
    parts.append(np.asarray(scores)[:, :min(chunk, c - start)])
  return np.concatenate(parts, axis=1)
