"""Prefill once, then sample: the pieces compose into `generate`."""

from gemma import gm
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from user_llm import decoding
from user_llm.models import gemma as gemma_lib
from configs import testing


_decoder = testing.tiny_decoder


@pytest.mark.parametrize('method', [gm.text.Greedy(), gm.text.RandomSampling(temperature=1.0)])
def test_generate_is_prefill_then_sample(method):
  cfg, dec, params = _decoder()
  prompts = decoding.left_pad([[2, 5, 9, 11], [2, 6]])
  user = {'prefix': jax.random.normal(jax.random.PRNGKey(2), (2, 3, cfg.embed_dim))}
  rng = jax.random.PRNGKey(7)
  want = decoding.generate(dec, params, prompts, user, max_new_tokens=6, rng=rng,
                           sampling=method)
  # A context with more free slots than used: the unused slots change nothing.
  ctx = decoding.prefill(dec, params, jnp.asarray(prompts), user, 10)
  assert ctx.cache_size == 3 + 4 + 10 and ctx.input_mask.shape == (2, 7)
  got = decoding.sample(dec, params, ctx, max_new_tokens=6, rng=rng, sampling=method)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # The same context serves a second, shorter sampling (it is not consumed).
  again = decoding.sample(dec, params, ctx, max_new_tokens=3, rng=rng, sampling=method)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(want)[:, :3])


def test_sample_needs_room_in_the_cache():
  _, dec, params = _decoder()
  ctx = decoding.prefill(dec, params, jnp.asarray(decoding.left_pad([[2, 5]])), None, 2)
  with pytest.raises(ValueError, match='free cache slots'):
    decoding.sample(dec, params, ctx, max_new_tokens=3)


def test_trim_cuts_at_stop_tokens_and_padding():
  out = np.array([[5, 6, 1, 7], [5, 106, 6, 0], [5, 6, 0, 0]])
  assert decoding.trim(out, (1, 106)) == [[5, 6], [5], [5, 6]]
  assert decoding.trim(out, (1,)) == [[5, 6], [5, 106, 6], [5, 6]]


def test_sample_compiles_once_per_shape():
  """One executable (the whole token loop) serves every call with the same shapes."""
  _, dec, params = _decoder()
  ctx = decoding.prefill(dec, params, jnp.asarray(decoding.left_pad([[2, 5, 9], [2, 6]])), None, 5)
  decoding.sample(dec, params, ctx, max_new_tokens=5)
  compiled = decoding.sample._cache_size()
  other = decoding.prefill(dec, params, jnp.asarray(decoding.left_pad([[2, 7, 8], [2, 9]])), None, 5)
  decoding.sample(dec, params, other, max_new_tokens=5)
  assert decoding.sample._cache_size() == compiled
