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
from collections.abc import Iterator

import flax.linen as nn
from gemma.gm.math import _positional_embeddings
from gemma.gm.nn import _modules
import jax
import jax.numpy as jnp


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

  b, t, n, h = query.shape
  k = module.num_kv_heads
  if module.use_gqa:
    logits = jnp.einsum('BTKGH,BSKH->BTKGS', query.reshape(b, t, k, n // k, h), key)
    logits = logits.reshape(b, t, n, -1)
  else:
    logits = jnp.einsum('BTNH,BSNH->BTNS', query, key)
  if module.attn_logits_soft_cap is not None:
    logits = jnp.tanh(logits / module.attn_logits_soft_cap) * module.attn_logits_soft_cap
  if module.attn_type == _modules.AttentionType.LOCAL_SLIDING:
    attn_mask = attn_mask * _modules.create_sliding_mask(
        segment_pos, cache_positions=positions, sliding_window_size=module.sliding_window_size)
  logits = jnp.where(jnp.expand_dims(attn_mask, -2), logits, _modules.K_MASK)
  probs = module.attention_weights(jax.nn.softmax(logits, axis=-1).astype(key.dtype))
  if module.use_gqa:
    encoded = jnp.einsum('BTKGS,BSKH->BTKGH', probs.reshape(b, t, k, n // k, -1), value)
    encoded = encoded.reshape(b, t, n, h)
  else:
    encoded = jnp.einsum('BTNS,BSNH->BTNH', probs, value)
  out = module.attn_vec_einsum('BTNH,NHD->BTD', encoded)
  new_cache = {'v': value, 'k': key, 'end_index': cache['end_index'] + t, 'positions': positions}
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
