"""The real Gemma 3 270M, converted from the PyPI GGUF once per test session."""

import os
import pathlib

from absl import logging
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from user_llm import gemma_checks
from user_llm import gemma_loader

TESTDATA = pathlib.Path(__file__).parents[1] / 'testdata'
MOVIES = pathlib.Path(
    os.environ.get('USER_LLM_DATA', pathlib.Path(__file__).parents[3] / 'shared/data/ml-latest-small')
) / 'movies.csv'


@pytest.fixture(scope='module')
def gemma(gemma_cache_dir):
  logging.set_verbosity(logging.WARNING)
  llm = ml_collections.ConfigDict(dict(
      model='Gemma3_270M', checkpoint='', tokenizer='', cache_dir=str(gemma_cache_dir),
      param_dtype='float32'))
  return gemma_loader.load_gemma(llm)


def test_perplexity_on_english_passage(gemma):
  cfg, params, tok = gemma
  ppl, n = gemma_checks.perplexity(cfg, params, tok, (TESTDATA / 'english_passage.txt').read_text())
  print(f'perplexity {ppl:.3f} over {n} tokens')
  assert n > 100
  assert ppl <= 12.0


def test_same_logits_as_gm_gemma3_270m(gemma):
  cfg, params, tok = gemma
  tokens = jnp.asarray([[2] + tok.encode('User-LLM reads a user timeline.')], jnp.int32)
  assert gemma_checks.max_abs_diff_vs_gm('Gemma3_270M', cfg, params, tokens) <= 1e-4


def test_cached_greedy_equals_uncached(gemma):
  cfg, params, tok = gemma
  prompts = ['The capital of France is', 'My favourite movie is']
  cached, texts = gemma_checks.greedy(cfg, params, tok, prompts, 16)
  uncached = gemma_checks.greedy_uncached(cfg, params, tok, prompts, 16)
  np.testing.assert_array_equal(cached, uncached)
  assert 'Paris' in texts[0] or 'capital' in texts[0]


@pytest.mark.skipif(not MOVIES.is_file(), reason=f'{MOVIES} not present')
def test_tokenizer_round_trips_1000_titles(gemma):
  _, _, tok = gemma
  ok, bad = gemma_checks.title_round_trip(tok, MOVIES, 1000)
  assert not bad and ok == 1000


def test_user_llm_at_init_equals_gemma_270m(gemma):
  """Gates at 0: User-LLM (cross-attention + Perceiver) = the unchanged Gemma 3 270M."""
  import jax
  from flax.core import FrozenDict
  from user_llm.models import gemma as gemma_lib
  from user_llm.models import user_encoder as ue
  from user_llm.models import user_llm as ul

  cfg, params, tok = gemma
  enc = ue.UserEncoder(FrozenDict(item=30, genre=6, rating=12),
                       FrozenDict(item=16, genre=4, rating=4), d_model=32, max_len=6)
  model = ul.UserLLM(cfg, enc, mode='cross_attention', xattn_layers=(0, 9), num_latents=4)
  feats = {f: jnp.full((1, 6), 3, jnp.int32) for f in ('item', 'genre', 'rating')}
  mask = jnp.ones((1, 6), bool)
  tokens = jnp.asarray([[2] + tok.encode('Which movie will this user watch next?')], jnp.int32)
  new = jax.jit(lambda r: {k: v for k, v in model.init(
      r, feats, mask, tokens, method='init_all')['params'].items() if k != 'decoder'})(
          jax.random.PRNGKey(0))
  assert set(new) == {'user_encoder', 'projection', 'resampler', 'cross_attention'}
  full = dict(new, decoder=params)
  got = jax.jit(lambda p: model.apply({'params': p}, feats, mask, tokens, method='forward').logits)(full)
  want = jax.jit(lambda p: gemma_lib.GemmaDecoder(cfg).apply({'params': p}, tokens).logits)(params)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
