"""The decode-anatomy benchmark's pieces on a tiny Gemma: a cut decoder is the same model."""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import decode_anatomy
from user_llm.models import gemma as gemma_lib
from configs import testing


def test_truncated_decoder_keeps_weights_and_all_layers_is_the_model():
  config = testing.tiny_gemma_config(num_layers=4)
  params = gemma_lib.GemmaDecoder(config).init(
      jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32))['params']
  full = decode_anatomy.decode_step(gemma_lib.GemmaDecoder(config), logits=True)(
      params, gemma_lib.init_cache(config, 1, decode_anatomy.CACHE_SLOTS))

  decoder, cfg, p = decode_anatomy.truncated(config, params, 4)
  same = decode_anatomy.decode_step(decoder, logits=True)(
      p, gemma_lib.init_cache(cfg, 1, decode_anatomy.CACHE_SLOTS))
  np.testing.assert_array_equal(np.asarray(same), np.asarray(full))

  decoder, cfg, p = decode_anatomy.truncated(config, params, 1)
  assert sorted(k for k in p if k.startswith('layer_')) == ['layer_0']
  assert p['layer_0'] is params['layer_0']
  hidden = decode_anatomy.decode_step(decoder, logits=False)(
      p, gemma_lib.init_cache(cfg, 1, decode_anatomy.CACHE_SLOTS))
  assert hidden.shape == (1, config.embed_dim) and np.isfinite(np.asarray(hidden)).all()


def test_timed_reports_milliseconds_and_flops():
  ms, gflop = decode_anatomy.timed(lambda a, b: a @ b, jnp.ones((64, 64)), jnp.ones((64, 64)),
                                   runs=3)
  assert ms > 0
  assert abs(gflop - 2 * 64**3 / 1e9) / (2 * 64**3 / 1e9) < 0.05
  rows = [('x', 2.0, 0.004, 10.0)]
  text = decode_anatomy.report(rows, type('A', (), {'runs': 3})())
  assert '| x | 2.0 | 0.004 | 10 | 5.0 | 2.0 |' in text
