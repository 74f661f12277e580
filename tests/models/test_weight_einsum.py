"""`weight_einsum`: gm's products with the weight read in place, and their int8 form."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from user_llm import decoding
from user_llm.models import gemma as gemma_lib
from user_llm.models import user_llm as ul
from user_llm.models import weight_einsum as we
from configs import testing

# gm's equations (gemma/gm/nn/_modules.py) and the unembedding, with small shapes.
GM_EINSUMS = [
    ('BTD,NDH->BTNH', (2, 3, 256), (4, 256, 5), (1,)),  # q_einsum
    ('BSD,CKDH->CBSKH', (2, 3, 256), (2, 1, 256, 5), (2,)),  # kv_einsum
    ('BTD,SNDH->SBTNH', (1, 1, 256), (3, 4, 256, 5), (2,)),  # qkv_einsum
    ('...F,NHF->...NH', (2, 3, 256), (2, 6, 256), (2,)),  # gating, transposed
    ('...F,NFH->...NH', (1, 1, 256), (2, 256, 6), (1,)),  # gating
    ('...H,HF->...F', (2, 3, 384), (384, 8), (0,)),  # linear
    ('BTNH,NHD->BTD', (1, 1, 4, 64), (4, 64, 8), (0, 1)),  # attn_vec_einsum
    ('...D,VD->...V', (1, 640), (50, 640), (1,)),  # unembedding
]


@pytest.mark.parametrize('eqn,x_shape,w_shape,contracted', GM_EINSUMS)
def test_equals_einsum_in_every_dtype(eqn, x_shape, w_shape, contracted):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(x_shape).astype(np.float32)
  w = rng.standard_normal(w_shape).astype(np.float32)
  want = np.einsum(eqn, x, w)
  got = we.weight_einsum(eqn, jnp.asarray(x), jnp.asarray(w))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)
  got = we.weight_einsum(eqn, jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16))
  assert got.dtype == jnp.bfloat16
  scale = np.abs(want).max()
  assert np.abs(np.asarray(got, np.float32) - want).max() < 0.02 * scale
  # int8 (W8A8) against the product with the dequantised weight: activation rounding only.
  qw = we.quantize(jnp.asarray(w), contracted)
  assert qw.values.dtype == jnp.int8 and qw.shape == w.shape
  want_q = np.einsum(eqn, x, np.asarray(qw.unbox()))
  got = np.asarray(we.weight_einsum(eqn, jnp.asarray(x), qw))
  assert np.abs(got - want_q).max() < 0.03 * np.abs(want_q).max()


def test_other_products_fall_back_to_einsum():
  x, w = jnp.ones((2, 3, 4)), jnp.ones((2, 4, 5))
  assert we._plan(*we._letters('BTD,BDH->BTH', 3)) is None  # B is a true batch letter.
  np.testing.assert_array_equal(we.weight_einsum('BTD,BDH->BTH', x, w),
                                jnp.einsum('BTD,BDH->BTH', x, w))


def _weight_sized_copies(dec, params) -> list[str]:
  """copy / transpose / convert ops in the compiled `sample` with a weight's size."""
  leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, we.Int8Weight))
  sizes = {math.prod(x.shape) for x in leaves if len(x.shape) >= 2}
  ctx = decoding.prefill(dec, params, jnp.ones((1, 4), jnp.int32), None, 4)
  text = decoding.sample.lower(dec, params, ctx, max_new_tokens=4).compile().as_text()
  found = []
  for m in re.finditer(r'= \w+\[([\d,]*)\]\{[^}]*\} (copy|transpose|convert)\(', text):
    if math.prod(int(d) for d in m.group(1).split(',') if d) in sizes:
      found.append(m.group(0))
  return found


def test_decode_loop_reads_weights_in_place():
  """The speed-critical property (benchmarks/decode_speed.md): no decode step copies,
  transposes or converts a weight. gm's einsums did, every step."""
  cfg, dec, params = testing.tiny_decoder()
  assert _weight_sized_copies(gemma_lib.GemmaDecoder(cfg, gm_layers=True), params)
  assert not _weight_sized_copies(dec, params)
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  assert not _weight_sized_copies(dec, bf16)
  assert not _weight_sized_copies(dec, we.quantize_int8(dec, params, min_size=1))


def test_int8_params_keep_gm_names_and_decode_close_to_float():
  cfg, dec, params = testing.tiny_decoder()
  q = we.quantize_int8(dec, params, min_size=1)
  is_q = lambda x: isinstance(x, we.Int8Weight)
  assert jax.tree.structure(jax.tree.map(lambda x: 0, q, is_leaf=is_q)) == jax.tree.structure(
      jax.tree.map(lambda x: 0, params))
  quantized = {jax.tree_util.keystr(p) for p, x in
               jax.tree_util.tree_flatten_with_path(q, is_leaf=is_q)[0] if is_q(x)}
  assert "['embedder']['input_embedding']" in quantized
  assert "['layer_0']['mlp']['gating_einsum']" in quantized
  assert "['layer_0']['attn']['q_einsum']['w']" in quantized
  assert not any('scale' in k for k in quantized)  # Norm scales stay float.
  assert gemma_lib.compute_dtype(q) == jnp.float32
  # Per output channel: the gating weight [2, F, D] contracts D, so one scale per (2, F).
  assert q['layer_0']['mlp']['gating_einsum'].scale.shape == (2, cfg.hidden_dim, 1)

  prompts = jnp.asarray(decoding.left_pad([[2, 5, 9, 11], [2, 6]]))
  want = decoding.prefill(dec, params, prompts, None, 0).logits
  got = decoding.prefill(dec, q, prompts, None, 0).logits
  assert np.abs(np.asarray(got - want)).max() < 0.05 * np.abs(np.asarray(want)).max()
  # Without a cache (training path) the box unboxes: weight-only dequantised, also close.
  full = dec.apply({'params': q}, prompts).logits[:, -1]
  assert np.abs(np.asarray(full - want)).max() < 0.05 * np.abs(np.asarray(want)).max()


def test_lora_adapters_apply_on_the_cached_path():
  """`gm.nn.LoRA` intercepts the same Einsums: its adapters must still be added."""
  model = ul.UserLLM(testing.tiny_gemma_config(), None, mode='text_prompt', lora_rank=2)
  tokens = jnp.asarray([[2, 5, 9, 11]])
  params = model.init(jax.random.PRNGKey(0), tokens)['params']
  params = jax.tree_util.tree_map_with_path(  # Non-zero adapters (LoRA's B starts at 0).
      lambda p, x: x + 0.3 if 'lora' in jax.tree_util.keystr(p) else x, params)
  full = model.apply({'params': params}, tokens).logits[:, -1]  # No cache: gm's einsums.
  cached = decoding.prefill(model, params, tokens, {}, 0).logits
  np.testing.assert_allclose(np.asarray(cached), np.asarray(full), rtol=1e-4, atol=1e-4)
  no_lora = jax.tree_util.tree_map_with_path(
      lambda p, x: x * 0 if 'lora' in jax.tree_util.keystr(p) else x, params)
  assert np.abs(np.asarray(decoding.prefill(model, no_lora, tokens, {}, 0).logits - full)).max() > 1e-3
