"""The decode-speed benchmark's pieces on a tiny Gemma."""

import jax.numpy as jnp
import numpy as np

from benchmarks import decode_speed
from user_llm import decoding
from user_llm.models import gemma as gemma_lib
from configs import testing


def test_variants_time_without_recompiling_and_report():
  cfg, _, params = testing.tiny_decoder()
  made = decode_speed.variants(cfg, params, decode_speed.VARIANTS)
  assert set(made) == set(decode_speed.VARIANTS) and made['gm-f32'][0].gm_layers
  prompts = jnp.asarray(decoding.left_pad([[2, 5, 9], [2, 6]]))
  runs_of = {(name, 2): (dec, p, decoding.prefill(dec, p, prompts, None, 3))
             for name, (dec, p) in made.items()}
  timing = decode_speed.time_decoding(runs_of, new_tokens=3, rounds=2)
  for t in timing.values():
    assert len(t['wall']) == 2 and t['compiles'] == 0 and t['tokens'].shape == (2, 3)
  # Same greedy tokens on the reference and the default float32 path.
  np.testing.assert_array_equal(timing['f32', 2]['tokens'], timing['gm-f32', 2]['tokens'])
  args = type('A', (), {'runs': 2, 'new_tokens': 3})()
  sizes = {name: 1e6 for name in made}
  qual = {'f32': dict(agree=1.0, kl=0.0, ppl=7.0, n=10), 'int8': dict(agree=0.9, kl=0.01,
                                                                     ppl=7.5, n=10)}
  text = decode_speed.report(timing, sizes, qual, args)
  assert text.count('\n| gm-f32 | 2 |') == 1 and '| f32 | 2 |' in text and '| yes | 0 |' in text
  assert '| int8 | 90.0% | 0.0100 | 7.500 |' in text


def test_teacher_forced_logits_are_the_full_forward():
  cfg, dec, params = testing.tiny_decoder()
  tokens = jnp.asarray([[2, 5, 9, 11, 7]])
  want = dec.apply({'params': params}, tokens).logits[0]
  got = decode_speed.teacher_forced_logits(dec, params, tokens)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
  assert isinstance(dec, gemma_lib.GemmaDecoder)
