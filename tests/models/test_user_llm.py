"""User-LLM modules: tree layout, gates at 0 = plain Gemma, cached user memory."""

from flax.core import FrozenDict
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from user_llm import decoding
from user_llm.models import cross_attention as xattn_lib
from user_llm.models import gemma as gemma_lib
from configs import testing
from user_llm.models import user_encoder as ue
from user_llm.models import user_llm as ul

VOCABS = {'item': 20, 'genre': 6, 'rating': 7}
U = 5


def _model(mode, num_latents=0, lora_rank=0):
  # FrozenDicts keep the module hashable (decoding takes it as static).
  enc = ue.UserEncoder(FrozenDict(VOCABS), FrozenDict(item=8, genre=4, rating=4), d_model=16,
                       num_heads=2, mlp_dim=32, max_len=U)
  return ul.UserLLM(testing.tiny_gemma_config(), enc if mode != 'text_prompt' else None,
                    mode=mode, xattn_layers=(0, 2), num_latents=num_latents, lora_rank=lora_rank)


def _user(b=2, seed=0):
  rng = np.random.default_rng(seed)
  feats = {f: jnp.asarray(rng.integers(2, v, (b, U)), jnp.int32) for f, v in VOCABS.items()}
  mask = jnp.ones((b, U), bool).at[1, :2].set(False)
  return feats, mask


TOKENS = jnp.array([[2, 5, 9, 11, 7, 3], [2, 6, 7, 8, 0, 0]])


def _init(model):
  feats, mask = _user()
  return model.init(jax.random.PRNGKey(0), feats, mask, TOKENS, method='init_all')['params']


@pytest.mark.parametrize('mode,latents', [('cross_attention', 0), ('cross_attention', 3),
                                          ('soft_prompt', 0), ('soft_prompt', 3),
                                          ('text_prompt', 0)])
def test_tree_layout(mode, latents):
  params = jax.eval_shape(lambda: _init(_model(mode, latents)))
  dec = jax.eval_shape(
      lambda: gemma_lib.GemmaDecoder(testing.tiny_gemma_config()).init(
          jax.random.PRNGKey(0), TOKENS)['params'])
  assert jax.tree.structure(params['decoder']) == jax.tree.structure(dec)
  want = {'decoder'}
  if mode != 'text_prompt':
    want |= {'user_encoder', 'projection'} | ({'resampler'} if latents else set())
  if mode == 'cross_attention':
    want.add('cross_attention')
    assert set(params['cross_attention']) == {'layer_0', 'layer_2'}
    blk = params['cross_attention']['layer_0']
    assert blk['attn_gate'].shape == () and blk['ffw_gate'].shape == ()
    assert {'pre_cross_attention_norm', 'cross_attn', 'pre_ffw_norm', 'mlp'} <= set(blk)
  assert set(params) == want


def test_resampler_output_shape():
  r = xattn_lib.PerceiverResampler(num_latents=3, depth=2, num_heads=2, head_dim=4, hidden_dim=8)
  x = jnp.ones((2, 7, 16))
  out = jax.eval_shape(lambda: r.init_with_output(jax.random.PRNGKey(0), x,
                                                  jnp.ones((2, 7), bool))[0])
  assert out.shape == (2, 3, 16)


def test_gates_zero_equals_plain_gemma():
  model = _model('cross_attention')
  params = _init(model)
  feats, mask = _user()
  got = model.apply({'params': params}, feats, mask, TOKENS, method='forward').logits
  want = gemma_lib.GemmaDecoder(testing.tiny_gemma_config()).apply(
      {'params': params['decoder']}, TOKENS).logits
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # Opening the gates makes the user matter.
  params['cross_attention']['layer_0']['attn_gate'] = jnp.float32(1.0)
  moved = model.apply({'params': params}, feats, mask, TOKENS, method='forward').logits
  assert not np.allclose(np.asarray(moved), np.asarray(want))


def test_lora_tree_keeps_gemma_names_and_starts_equal():
  model = _model('cross_attention', lora_rank=2)
  params = _init(model)
  flat = jax.tree_util.tree_flatten_with_path(params['decoder'])[0]
  names = ['/'.join(str(getattr(k, 'key', k)) for k in path) for path, _ in flat]
  assert any('lora' in n for n in names)
  base = [n for n in names if 'lora' not in n]
  assert 'layer_0/attn/q_einsum/w' in base and 'embedder/input_embedding' in base
  xattn = jax.tree_util.tree_flatten_with_path(params['cross_attention'])[0]
  assert not any('lora' in str(path) for path, _ in xattn)  # Always fully trained.
  # LoRA 'b' starts at 0, so the wrapped decoder starts as the plain one.
  feats, mask = _user()
  plain = _model('cross_attention')
  base = jax.tree_util.tree_map_with_path(lambda p, x: x, params)
  got = model.apply({'params': params}, feats, mask, TOKENS, method='forward').logits
  assert got.shape == (2, TOKENS.shape[1], 64)
  del plain, base


@pytest.mark.parametrize('mode,latents', [('cross_attention', 3), ('soft_prompt', 3)])
def test_cached_generation_with_user_memory_equals_uncached(mode, latents):
  model = _model(mode, latents)
  params = _init(model)
  # Open the gates so the user memory changes the tokens.
  if mode == 'cross_attention':
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.float32(0.7) if str(p[-1]).endswith("gate']") else x, params)
  feats, mask = _user()
  user = ul.user_inputs(model, params, feats, mask)
  prompts = jnp.asarray(decoding.left_pad([[2, 5, 9, 11], [2, 6]]))
  got = decoding.generate(model, params, prompts, user, max_new_tokens=8, stop_tokens=())
  # Reference: full forwards (encoder included) over a fixed buffer, one compile.
  length = prompts.shape[1]
  seq = jnp.pad(prompts, ((0, 0), (0, 8)))
  in_mask = jnp.pad(prompts != 0, ((0, 0), (0, 8)))
  fwd = jax.jit(lambda s, m: model.apply({'params': params}, feats, mask, s, m,
                                         method='forward').logits)
  offset = 0 if mode == 'cross_attention' else latents  # Soft prompt logits come first.
  for t in range(8):
    nxt = jnp.argmax(fwd(seq, in_mask)[:, offset + length + t - 1], -1).astype(jnp.int32)
    seq = seq.at[:, length + t].set(nxt)
    in_mask = in_mask.at[:, length + t].set(True)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(seq[:, length:]))


def test_bf16_decoder_keeps_its_dtype_through_cross_attention():
  """A frozen bf16 Gemma with float32 new parts: the stream (and KV cache) stay bf16."""
  model = _model('cross_attention', num_latents=3)
  params = _init(model)
  params['decoder'] = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params['decoder'])
  feats, mask = _user()
  user = ul.user_inputs(model, params, feats, mask)
  out = decoding.generate(model, params, decoding.left_pad([[2, 5], [2]]), user,
                          max_new_tokens=2, stop_tokens=())
  assert out.shape == (2, 2)
  logits = model.apply({'params': params}, feats, mask, TOKENS, method='forward').logits
  assert logits.dtype == jnp.bfloat16


def test_bf16_decoder_with_float32_lora_generates():
  """LoRA adapters (float32) on a bf16 Gemma: the KV cache follows the promoted dtype."""
  model = _model('cross_attention', lora_rank=2)
  params = _init(model)
  params['decoder'] = jax.tree_util.tree_map_with_path(
      lambda p, x: x if 'lora' in jax.tree_util.keystr(p) else x.astype(jnp.bfloat16),
      params['decoder'])
  feats, mask = _user()
  user = ul.user_inputs(model, params, feats, mask)
  out = decoding.generate(model, params, decoding.left_pad([[2, 5], [2]]), user,
                          max_new_tokens=2, stop_tokens=())
  assert out.shape == (2, 2)


@pytest.mark.parametrize('lora_rank', [0, 2])
def test_remat_blocks_same_tree_logits_and_grads(lora_rank):
  """Per-layer remat (long text prompts) changes memory only: params, values, grads."""
  plain = _model('text_prompt', lora_rank=lora_rank)
  remat = ul.UserLLM(testing.tiny_gemma_config(), None, mode='text_prompt',
                     lora_rank=lora_rank, remat_blocks=True)
  params = _init(plain)
  # LoRA 'b' starts at 0: move it so the adapters' gradients are not trivially equal.
  params = jax.tree.map(lambda x: x + 0.01, params)
  assert jax.tree.structure(jax.eval_shape(lambda: _init(remat))) == jax.tree.structure(params)
  feats, mask = _user()

  def loss(p, model):
    out = model.apply({'params': p}, feats, mask, TOKENS, method='forward').logits
    return jnp.mean(jax.nn.logsumexp(out, -1))

  want, want_g = jax.value_and_grad(loss)(params, plain)
  got, got_g = jax.value_and_grad(loss)(params, remat)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got_g, want_g)
