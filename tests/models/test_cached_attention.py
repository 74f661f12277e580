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
