"""`gm.nn.Attention` with a KV cache, minus XLA:CPU's copies of the cache per step.

Why (benchmarks/decode_speed.md): inside `decoding.sample`'s loop, XLA:CPU fused gm's
cache update (`dynamic_update_slice`) into two consumers (the next-step carry and the
attention product), and each fusion needed its own copy of the old buffer: four copies
of every layer's K and V per decode step. At batch 8 with 1,000 cached slots that is
~1.2 GB per step, more than Gemma 3 270M's float32 weights. An optimization barrier on
the updated K and V makes them one value that both consumers read, in place.

`intercept_cached_attention` runs this instead of `gm.nn.Attention.__call__` for calls
with a cache; the code is gm 4.0.1's (gemma/gm/nn/_modules.py), restated for the cache
case with the barrier added, and calls the module's own Einsums and norms (so their
params, names, LoRA adapters and `weight_einsum` apply unchanged). Without a cache
gm's own method runs. tests/models/test_gemma.py and test_gemma_real.py check cached
decoding against full uncached forwards.

Letters (gm's): B batch, T new tokens, S cache slots, N heads, K kv heads, G heads per
kv head, H head dim, D width.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import flax.linen as nn
from gemma.gm.math import _positional_embeddings
from gemma.gm.nn import _modules
import jax
import jax.numpy as jnp
import numpy as np

# Set by `contiguous_prompt` (at trace time): the cached call is a prefill from slot 0 of
# a causal prompt whose real tokens are contiguous, so local layers may be banded.
_CONTIGUOUS = contextvars.ContextVar('contiguous_prompt', default=False)


def _attend(module: _modules.Attention, query: jax.Array, key: jax.Array,
            value: jax.Array, mask: jax.Array) -> jax.Array:
  """float[B, T, N, H]: softmax(q k / soft cap, masked) v for q [B, T, N, H], k and v
  [B, S, K, H], mask bool[B, T, S] (gm's arithmetic, grouped-query heads included)."""
  b, t, n, h = query.shape
  k = module.num_kv_heads
  if module.use_gqa:
    logits = jnp.einsum('BTKGH,BSKH->BTKGS', query.reshape(b, t, k, n // k, h), key)
    logits = logits.reshape(b, t, n, -1)
  else:
    logits = jnp.einsum('BTNH,BSNH->BTNS', query, key)
  if module.attn_logits_soft_cap is not None:
    logits = jnp.tanh(logits / module.attn_logits_soft_cap) * module.attn_logits_soft_cap
  logits = jnp.where(jnp.expand_dims(mask, -2), logits, _modules.K_MASK)
  probs = module.attention_weights(jax.nn.softmax(logits, axis=-1).astype(key.dtype))
  if module.use_gqa:
    encoded = jnp.einsum('BTKGS,BSKH->BTKGH', probs.reshape(b, t, k, n // k, -1), value)
    return encoded.reshape(b, t, n, h)
  return jnp.einsum('BTNS,BSNH->BTNH', probs, value)


def _banded_local(module: _modules.Attention, query: jax.Array, key: jax.Array,
                  value: jax.Array, q_pos: jax.Array, k_pos: jax.Array,
                  attn_mask: jax.Array) -> jax.Array:
  """Sliding-window attention of a prefill, reading 2W slots per query instead of S.

  Queries go in blocks of W (the window); block i reads slots [(i-1)W, (i+1)W), which
  hold every key its window can see when the prompt starts at slot 0 and is causal with
  its real tokens contiguous (`contiguous_prompt`). Exact: the same keys, mask and
  softmax as the dense path, without the S - 2W always-masked columns per query
  (benchmarks/prefill_banded.md: 4,480 tokens, 1.66x fewer prefill GFLOP).

  Shapes: query [B, T, N, H]; key, value [B, S, K, H]; q_pos int[B, T]; k_pos int[B, S];
  attn_mask bool[B, T, S]. Returns float[B, T, N, H].
  """
  w = module.sliding_window_size
  b, t, n, h = query.shape
  nb = -(-t // w)
  cols = (nb + 1) * w  # W empty slots in front: slot s is column s + W.

  def to_cols(x, axis):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (w, max(0, cols - w - x.shape[axis]))
    return jax.lax.slice_in_dim(jnp.pad(x, pad), 0, cols, axis=axis)

  band = np.arange(nb)[:, None] * w + np.arange(2 * w)[None]  # [nb, 2W] columns.
  kb = jnp.take(to_cols(key, 1), band, axis=1)  # [B, nb, 2W, K, H]
  vb = jnp.take(to_cols(value, 1), band, axis=1)
  kpos = jnp.take(to_cols(k_pos, 1), band, axis=1)  # [B, nb, 2W]
  rows = lambda x: jnp.pad(x, [(0, 0), (0, nb * w - t)] + [(0, 0)] * (x.ndim - 2))
  qb = rows(query).reshape(b, nb, w, n, h)
  qpos = rows(q_pos).reshape(b, nb, w)
  mask = rows(to_cols(attn_mask, 2)).reshape(b, nb, w, cols)
  mask = jnp.take_along_axis(mask, jnp.asarray(band)[None, :, None, :], axis=3)
  kpos, qpos = kpos[:, :, None, :], qpos[..., None]  # [B, nb, 1, 2W], [B, nb, W, 1]
  sliding = (kpos > qpos - w) & (kpos < qpos + w)  # gm's create_sliding_mask rule.
  merge = lambda x: x.reshape((b * nb,) + x.shape[2:])
  out = _attend(module, merge(qb), merge(kb), merge(vb), merge(mask & sliding))
  return out.reshape(b, nb * w, n, h)[:, :t]


def _attention(module: _modules.Attention, x: jax.Array, segment_pos: jax.Array,
               cache: dict[str, jax.Array], attn_mask: jax.Array):
  """gm's `Attention.__call__` with a cache: (new cache, float[B, T, D])."""
  if module.use_qkv_einsum:
    query, key, value = module.qkv_einsum('BTD,SNDH->SBTNH', x)
  else:
    query = module.q_einsum('BTD,NDH->BTNH', x)
    key, value = module.kv_einsum('BSD,CKDH->CBSKH', x)
  if module.use_qk_norm:
    query, key = module._query_norm(query), module._key_norm(key)  # pylint: disable=protected-access
  rope = dict(base_frequency=module.rope_base_frequency, scale_factor=module.rope_scale_factor)
  query = _positional_embeddings.apply_rope(query, segment_pos, **rope)
  query = query * module.query_pre_attn_scalar
  key = _positional_embeddings.apply_rope(key, segment_pos, **rope)

  start = cache['end_index'][0] % cache['v'].shape[1]  # Left-aligned cache, as gm.
  value = jax.lax.dynamic_update_slice(cache['v'], value, (0, start, 0, 0))
  key = jax.lax.dynamic_update_slice(cache['k'], key, (0, start, 0, 0))
  positions = jax.lax.dynamic_update_slice(cache['positions'], segment_pos, (0, start))
  key, value = jax.lax.optimization_barrier((key, value))  # The fix (module docstring).

  window = module.sliding_window_size
  if (module.attn_type == _modules.AttentionType.LOCAL_SLIDING and _CONTIGUOUS.get()
      and query.shape[1] >= 2 * window):
    encoded = _banded_local(module, query, key, value, segment_pos, positions, attn_mask)
  else:
    if module.attn_type == _modules.AttentionType.LOCAL_SLIDING:
      attn_mask = attn_mask * _modules.create_sliding_mask(
          segment_pos, cache_positions=positions, sliding_window_size=window)
    encoded = _attend(module, query, key, value, attn_mask)
  out = module.attn_vec_einsum('BTNH,NHD->BTD', encoded)
  new_cache = {'v': value, 'k': key, 'end_index': cache['end_index'] + query.shape[1],
               'positions': positions}
  return new_cache, out


def _interceptor(next_fun, args, kwargs, context):
  module = context.module
  if (isinstance(module, _modules.Attention) and context.method_name == '__call__'
      and not kwargs and len(args) == 4 and args[2] is not None):
    return _attention(module, *args)
  return next_fun(*args, **kwargs)


@contextlib.contextmanager
def intercept_cached_attention() -> Iterator[None]:
  """Inside, `gm.nn.Attention` calls with a cache run `_attention`."""
  with nn.intercept_methods(_interceptor):
    yield


@contextlib.contextmanager
def contiguous_prompt(enabled: bool = True) -> Iterator[None]:
  """Inside (while tracing), cached local-attention layers with T >= 2W run banded.

  Only for a prefill into an empty cache of a causal, left-padded prompt (no soft
  prompt before a padding gap): then every key a query's window sees lies within W
  slots of it, which `_banded_local` relies on.
  """
  token = _CONTIGUOUS.set(enabled)
  try:
    yield
  finally:
    _CONTIGUOUS.reset(token)
