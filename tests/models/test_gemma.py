"""GemmaDecoder against `gm.nn.Transformer`: same tree, same logits; cache; prefix."""

from gemma import gm
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from user_llm import decoding
from user_llm.models import gemma as gemma_lib
from configs import testing


def _init(cfg, seed=0):
  tokens = jnp.ones((1, 4), jnp.int32)
  ref = gm.nn.Transformer(config=cfg, dtype=jnp.float32)
  params = ref.init(jax.random.PRNGKey(seed), tokens)['params']
  # gm initialises norms at 0 (scale 1): perturb so the test sees every weight.
  params = jax.tree.map(
      lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params
  )
  return ref, params


def test_tree_matches_gm():
  cfg = testing.tiny_gemma_config()
  ref, params = _init(cfg)
  ours = gemma_lib.GemmaDecoder(cfg)
  mine = jax.eval_shape(ours.init, jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))
  assert jax.tree.structure(mine['params']) == jax.tree.structure(params)
  assert jax.tree.map(lambda a: a.shape, mine['params']) == jax.tree.map(
      lambda a: a.shape, params
  )


def test_logits_equal_gm_tiny():
  cfg = testing.tiny_gemma_config()
  ref, params = _init(cfg)
  tokens = jnp.array([[2, 5, 9, 11, 7, 3, 8, 21, 33, 4], [2, 6, 7, 8, 9, 10, 0, 0, 0, 0]])
  want = ref.apply({'params': params}, tokens).logits
  got = gemma_lib.GemmaDecoder(cfg).apply({'params': params}, tokens).logits
  valid = np.asarray(tokens != 0)
  np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=1e-5)


def test_prefix_lm_mask():
  mask = gemma_lib.prefix_lm_mask(jnp.array([[True, True, True, True, False]]), 2)
  want = np.array([
      [1, 1, 0, 0, 0],
      [1, 1, 0, 0, 0],
      [1, 1, 1, 0, 0],
      [1, 1, 1, 1, 0],
      [1, 1, 1, 1, 0],
  ], bool)
  np.testing.assert_array_equal(np.asarray(mask[0]), want)


def test_neg_inf_is_gms_mask_value_and_finite_in_bf16():
  from gemma.gm.nn import _modules  # pylint: disable=g-import-not-at-top
  assert gemma_lib.NEG_INF == _modules.K_MASK
  assert np.isfinite(np.asarray(jnp.bfloat16(gemma_lib.NEG_INF), np.float32))
  row = jnp.full((3,), gemma_lib.NEG_INF, jnp.bfloat16)  # A fully masked row: uniform.
  np.testing.assert_allclose(np.asarray(jax.nn.softmax(row.astype(jnp.float32))), 1 / 3)


def test_prefix_is_seen_bidirectionally_and_shifts_logits():
  cfg = testing.tiny_gemma_config()
  _, params = _init(cfg)
  dec = gemma_lib.GemmaDecoder(cfg)
  tokens = jnp.array([[2, 5, 9, 11]])
  prefix = jax.random.normal(jax.random.PRNGKey(3), (1, 3, cfg.embed_dim))
  out = dec.apply({'params': params}, tokens, prefix=prefix)
  assert out.logits.shape == (1, 7, cfg.num_embed)
  # Changing the last prefix slot changes the first prefix output (full attention).
  prefix2 = prefix.at[:, 2].add(1.0)
  out2 = dec.apply({'params': params}, tokens, prefix=prefix2)
  assert not np.allclose(out.logits[0, 0], out2.logits[0, 0])


@pytest.mark.parametrize('use_prefix', [False, True])
def test_cached_generation_equals_full_forwards(use_prefix):
  cfg = testing.tiny_gemma_config()
  _, params = _init(cfg)
  dec = gemma_lib.GemmaDecoder(cfg)
  prompts = decoding.left_pad([[2, 5, 9, 11, 7], [2, 6, 7]])
  prefix = None
  if use_prefix:
    prefix = jax.random.normal(jax.random.PRNGKey(4), (2, 3, cfg.embed_dim))
  got = decoding.generate(
      dec, params, prompts, {'prefix': prefix} if use_prefix else None, max_new_tokens=16,
      stop_tokens=())
  # Reference: 16 uncached full forward passes over the growing sequence.
  seq = jnp.asarray(prompts)
  mask = seq != 0
  want = []
  for _ in range(16):
    logits = dec.apply({'params': params}, seq, input_mask=mask, prefix=prefix).logits[:, -1]
    nxt = jnp.argmax(logits, -1).astype(jnp.int32)
    want.append(nxt)
    seq = jnp.concatenate([seq, nxt[:, None]], axis=1)
    # A generated 0 is a real token here, not padding.
    mask = jnp.concatenate([mask, jnp.ones_like(nxt[:, None], bool)], axis=1)
  np.testing.assert_array_equal(np.asarray(got), np.stack(want, 1))


def test_generation_stops_at_stop_token():
  cfg = testing.tiny_gemma_config()
  _, params = _init(cfg)
  dec = gemma_lib.GemmaDecoder(cfg)
  prompts = jnp.asarray(decoding.left_pad([[2, 5, 9]]))
  free = np.asarray(decoding.generate(dec, params, prompts, max_new_tokens=8, stop_tokens=()))
  stop = int(free[0, 2])
  first = list(free[0]).index(stop)
  got = np.asarray(decoding.generate(dec, params, prompts, max_new_tokens=8, stop_tokens=(stop,)))
  np.testing.assert_array_equal(got[0, : first + 1], free[0, : first + 1])
  assert (got[0, first + 1 :] == 0).all()
