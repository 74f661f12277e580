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
           last_only: bool = False, logits_at: jax.Array | None = None,
           logits_rows: jax.Array | None = None) -> gemma_lib.DecoderOutput:
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
    logits_at, logits_rows: only these positions' logits (`GemmaDecoder.__call__`).

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
      attention_mask=mask, cache=cache, last_only=last_only, logits_at=logits_at,
      logits_rows=logits_rows, **user)


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


def _token_logp(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """float32[...]: log p(token) = logit[token] - logsumexp(logits), for logits
  float[..., V] and tokens int[...] (never materialises a [..., V] log-softmax)."""
  logits = logits.astype(jnp.float32)
  return jnp.take_along_axis(logits, tokens[..., None], -1)[..., 0] - jax.nn.logsumexp(logits, -1)


@functools.partial(jax.jit, static_argnames=('model', 'pack'))
def _score_chunk(model: nn.Module, params: Any, ctx: UserContext, cands: jax.Array,
                 rows: jax.Array, cols: jax.Array, *, pack: bool = True) -> jax.Array:
  """float[B, C] sum of log-probs of candidates int[B, C, A] after the cached prompt.

  Token 0 of a candidate is predicted by the prompt's last logits, token j >= 1 by
  the candidate's position j - 1. With `pack`, only those positions are unembedded:
  `rows`, `cols` int32[B, N/B] list each real token j >= 1 as (flat candidate
  b * C + c, j), padded with (0, 0) entries that count nothing (B rows, so a batch-
  sharded mesh splits the unembedding too). The 262k-way unembedding is about
  two thirds of a Gemma 3 270M token's FLOPs, and half the [B*C, A] slots are
  padding (MovieLens titles: 12 tokens on average, chunks padded to the longest).
  `pack=False` unembeds every slot (the reference the tests and the benchmark compare).
  """
  b, c, a = cands.shape
  flat = cands.reshape(b * c, a)
  first = _token_logp(ctx.logits[:, None], cands[:, :, 0])  # [B, C], one logsumexp per row.
  first = jnp.where(cands[:, :, 0] != 0, first, 0.0).reshape(b * c)
  # [B, ...] -> [B*C, ...]: the prompt's cache (and the user memory) per candidate.
  ctx = jax.tree.map(lambda x: jnp.repeat(x, c, axis=0), ctx)
  if not pack:
    res = extend(model, params, ctx.cache, flat, ctx.slot_mask(), ctx.last_pos, ctx.user)
    later = _token_logp(res.logits[:, :-1], flat[:, 1:])  # [B*C, A-1]
    later = jnp.where(flat[:, 1:] != 0, later, 0.0).sum(-1)
  else:
    res = extend(model, params, ctx.cache, flat, ctx.slot_mask(), ctx.last_pos, ctx.user,
                 logits_at=jnp.maximum(cols - 1, 0), logits_rows=rows)  # logits [B, N/B, V]
    lp = jnp.where(cols > 0, _token_logp(res.logits, flat[rows, cols]), 0.0)
    later = jax.ops.segment_sum(lp.ravel(), rows.ravel(), num_segments=b * c)
  return (first + later).reshape(b, c)


def _packed_positions(cands: np.ndarray, per_row: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """(rows, cols) int32[B, N/B]: every real token j >= 1 of candidates int[B, C, A] as
  (flat candidate index, j), padded with (0, 0) to a multiple of `per_row` x B entries
  so that few shapes compile."""
  b = cands.shape[0]
  rows, cols = np.nonzero(cands.reshape(-1, cands.shape[-1])[:, 1:] != 0)
  n = max(1, -(-len(rows) // (per_row * b))) * per_row * b
  pad = lambda x: np.pad(x.astype(np.int32), (0, n - len(x))).reshape(b, -1)
  return pad(rows), pad(cols + 1)


def score_candidates(model: nn.Module, params: Any, prompts: np.ndarray,
                     candidates: np.ndarray, user: dict[str, Any] | None = None,
                     chunk: int = 0, pack: bool = True, by_length: bool = True) -> np.ndarray:
  """Log-likelihood log p(answer | user, prompt) of every candidate answer.

  The prompt (and soft prompt) is prefilled once; its cache is then repeated for
  the candidates, each scored in one cached forward. Text prompts are long (about 22
  Gemma tokens per history event), so re-reading them per candidate would cost C
  times more. Each row's candidates are scored shortest first, so a chunk holds
  candidates of similar length and runs only as many positions as its longest
  (rounded up to 8: few compiled shapes); with `pack`, only real tokens are
  unembedded (`_score_chunk`).

  Args:
    model, params: as `prefill`.
    prompts: int32[B, L] left-padded prompts (BOS included).
    candidates: int32[B, C, A] candidate answers (EOS included), right-padded with 0.
    user: `user_inputs`, leading dim B.
    chunk: score at most this many candidates per call (bounds the decoder's
      [B*chunk, A] positions); 0 = all at once.
    pack: unembed only the real answer tokens (False: every slot; same scores).
    by_length: score each row's candidates shortest first (False: in their order;
      same scores, chunks then run to about the longest candidate of all).

  Returns:
    float32[B, C].
  """
  candidates = np.asarray(candidates)
  lengths = (candidates != 0).sum(-1)  # [B, C]
  order = (np.argsort(lengths, axis=1, kind='stable') if by_length  # Per row, shortest first.
           else np.broadcast_to(np.arange(lengths.shape[1]), lengths.shape))
  ranked = np.take_along_axis(candidates, order[..., None], axis=1)
  c = candidates.shape[1]
  chunk = chunk or c
  ranked_len = np.take_along_axis(lengths, order, axis=1)
  ctx = prefill(model, params, jnp.asarray(prompts), user, candidates.shape[2])
  parts = []
  for start in range(0, c, chunk):
    part = ranked[:, start:start + chunk]
    if part.shape[1] < chunk:  # Keep one compiled shape: pad with empty candidates.
      part = np.pad(part, ((0, 0), (0, chunk - part.shape[1]), (0, 0)))
    # Only this chunk's longest candidate's positions run (a padded slot costs a token).
    used = int(ranked_len[:, start:start + chunk].max(initial=1))
    part = part[:, :, :min(part.shape[2], -(-used // 8) * 8)]
    rows, cols = _packed_positions(part)
    scores = _score_chunk(model, params, ctx, jnp.asarray(part), jnp.asarray(rows),
                          jnp.asarray(cols), pack=pack)
    parts.append(np.asarray(scores)[:, :min(chunk, c - start)])
  out = np.empty(candidates.shape[:2], np.float32)
  np.put_along_axis(out, order, np.concatenate(parts, axis=1), axis=1)
  return out
