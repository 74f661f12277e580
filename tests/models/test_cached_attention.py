"""`cached_attention`: gm's attention with a cache, its K/V updated without copies."""

import dataclasses
import re

from gemma import gm
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from user_llm import decoding
from user_llm.models import cached_attention
from user_llm.models import gemma as gemma_lib
from configs import testing


@pytest.mark.parametrize('kv_heads,attn_type', [(2, gm.nn.AttentionType.LOCAL_SLIDING),
                                                (1, gm.nn.AttentionType.GLOBAL),
                                                (4, gm.nn.AttentionType.GLOBAL)])
def test_equals_gm_attention(kv_heads, attn_type):
  """GQA, one kv head (Gemma 3 270M) and multi-head (qkv_einsum); sliding window."""
  attn = gm.nn.Attention(num_heads=4, num_kv_heads=kv_heads, features=16, head_dim=8,
                         attn_type=attn_type, query_pre_attn_scalar=8**-0.5,
                         attn_logits_soft_cap=50.0, sliding_window_size=3, use_qk_norm=True)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 2, 16)), jnp.float32)
  pos = jnp.asarray([[5, 6], [3, 4]], jnp.int32)
  cache = gm.nn.Attention.init_cache(cache_size=9, num_heads=kv_heads, head_dim=8,
                                     batch_size=2, dtype=jnp.float32)
  cache = {**cache, 'k': jnp.asarray(rng.standard_normal(cache['k'].shape), jnp.float32),
           'v': jnp.asarray(rng.standard_normal(cache['v'].shape), jnp.float32),
           'end_index': jnp.full((2,), 5, jnp.int32),
           'positions': jnp.tile(jnp.arange(9, dtype=jnp.int32), (2, 1))}
  mask = jnp.asarray(rng.random((2, 2, 9)) < 0.8)
  params = attn.init(jax.random.PRNGKey(0), x, pos, cache, mask)['params']
  want = attn.apply({'params': params}, x, pos, cache, mask)
  with cached_attention.intercept_cached_attention():
    got = attn.apply({'params': params}, x, pos, cache, mask)
  for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


def _cache_copies_per_step(dec, params) -> int:
  """copy ops of a K/V-cache-sized buffer in the compiled `sample` loop body."""
  ctx = decoding.prefill(dec, params, jnp.ones((2, 4), jnp.int32), None, 12)
  text = decoding.sample.lower(dec, params, ctx, max_new_tokens=12).compile().as_text()
  body = re.search(r'body=(%[\w.\-]+)', text).group(1)
  body = re.search(re.escape(body) + r' .*?\n}\n', text, re.S).group(0)
  kv = ','.join(map(str, ctx.cache['layer_0']['k'].shape))
  return len(re.findall(rf'f32\[{kv}\]\{{[^}}]*\}} copy\(', body))


def test_decode_loop_does_not_copy_the_cache():
  """The speed-critical property at long contexts: gm's attention let XLA:CPU copy
  every layer's K and V several times per decode step."""
  cfg = dataclasses.replace(testing.tiny_gemma_config(), num_kv_heads=1)  # As 270M's.
  dec = gemma_lib.GemmaDecoder(cfg)
  params = dec.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))['params']
  assert _cache_copies_per_step(gemma_lib.GemmaDecoder(cfg, gm_layers=True), params) > 0
  assert _cache_copies_per_step(dec, params) == 0


@pytest.mark.parametrize('kv_heads', [1, 2])
def test_banded_local_prefill_equals_full_forward(kv_heads):
  """Prompts of 23 / 9 / 1 tokens, window 4: the prefill's local layers run banded
  (T >= 2W); its last logits and the greedy tokens after it match uncached forwards."""
  cfg = dataclasses.replace(testing.tiny_gemma_config(), num_kv_heads=kv_heads)
  dec = gemma_lib.GemmaDecoder(cfg)
  params = dec.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))['params']
  params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape),
                        params)
  prompts = decoding.left_pad([[2] + [3 + i % 50 for i in range(22)], [2, 7, 9, 3, 5, 6, 7, 8, 9],
                               [2]])
  assert prompts.shape[1] >= 2 * cfg.sliding_window_size
  ctx = decoding.prefill(dec, params, jnp.asarray(prompts), None, 6)
  seq = jnp.asarray(prompts)
  full = dec.apply({'params': params}, seq, input_mask=seq != 0).logits[:, -1]
  np.testing.assert_allclose(np.asarray(ctx.logits), np.asarray(full), rtol=1e-4, atol=1e-4)
  got = decoding.sample(dec, params, ctx, max_new_tokens=6)
  mask = seq != 0
  for i in range(6):
    nxt = jnp.argmax(dec.apply({'params': params}, seq, input_mask=mask).logits[:, -1], -1)
    np.testing.assert_array_equal(np.asarray(got[:, i]), np.asarray(nxt))
    seq = jnp.concatenate([seq, nxt[:, None].astype(jnp.int32)], axis=1)
    mask = jnp.concatenate([mask, jnp.ones_like(nxt[:, None], bool)], axis=1)


def test_banded_local_equals_dense_attention():
  """`_banded_local` against the dense masked path on one local layer: causal,
  left-padded rows, T = 11 (not a multiple of W = 3), 4 free slots after the prompt."""
  attn = gm.nn.Attention(num_heads=4, num_kv_heads=2, features=16, head_dim=8,
                         attn_type=gm.nn.AttentionType.LOCAL_SLIDING,
                         query_pre_attn_scalar=8**-0.5, attn_logits_soft_cap=None,
                         sliding_window_size=3, use_qk_norm=True)
  rng = np.random.default_rng(0)
  t, s = 11, 15
  x = jnp.asarray(rng.standard_normal((2, t, 16)), jnp.float32)
  real = jnp.asarray(np.arange(t)[None] >= np.array([[0], [4]]))  # Row 1: 4 pads.
  pos = gemma_lib.positions_from_mask(real)
  mask = jnp.pad(gemma_lib.prefix_lm_mask(real, 0), ((0, 0), (0, 0), (0, s - t)))
  cache = gm.nn.Attention.init_cache(cache_size=s, num_heads=2, head_dim=8, batch_size=2,
                                     dtype=jnp.float32)
  params = attn.init(jax.random.PRNGKey(0), x, pos, cache, mask)['params']
  with cached_attention.intercept_cached_attention():
    want = attn.apply({'params': params}, x, pos, cache, mask)
    with cached_attention.contiguous_prompt():
      got = attn.apply({'params': params}, x, pos, cache, mask)
  keep = np.asarray(real)[..., None]  # Padding rows' outputs are never read.
  np.testing.assert_allclose(np.asarray(got[1]) * keep, np.asarray(want[1]) * keep,
                             rtol=1e-5, atol=1e-5)
  for w, g in zip(jax.tree.leaves(want[0]), jax.tree.leaves(got[0])):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
