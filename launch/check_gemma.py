"""Checks the converted (or any) Gemma 3: perplexity, greedy text, gm equivalence.

  python -m launch.check_gemma --passage tests/testdata/english_passage.txt \
      --movies ../shared/data/ml-latest-small/movies.csv

Loads through the same `config.llm` keys as training (empty checkpoint = the offline
GGUF, converted once into --cache_dir).
"""

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from user_llm import gemma_checks
from user_llm import gemma_loader

_MODEL = flags.DEFINE_string('model', 'Gemma3_270M', 'gm.nn class name.')
_CKPT = flags.DEFINE_string('checkpoint', '', 'Orbax params dir; empty = converted GGUF.')
_TOK = flags.DEFINE_string('tokenizer', '', 'tokenizer.model (with --checkpoint).')
_CACHE = flags.DEFINE_string('cache_dir', gemma_loader.DEFAULT_CACHE_DIR, 'Conversion cache.')
_PASSAGE = flags.DEFINE_string('passage', 'tests/testdata/english_passage.txt', 'English text.')
_MOVIES = flags.DEFINE_string('movies', '../shared/data/ml-latest-small/movies.csv', 'movies.csv')
_PROMPT = flags.DEFINE_string('prompt', 'The capital of France is', 'Greedy prompt.')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every array at INFO.
  llm = ml_collections.ConfigDict(dict(
      model=_MODEL.value, checkpoint=_CKPT.value, tokenizer=_TOK.value,
      cache_dir=_CACHE.value, param_dtype='float32'))
  cfg, params, tok = gemma_loader.load_gemma(llm)
  print(f'devices: {jax.devices()}')
  with open(_PASSAGE.value, encoding='utf-8') as f:
    ppl, n = gemma_checks.perplexity(cfg, params, tok, f.read())
  print(f'perplexity on {_PASSAGE.value} ({n} tokens): {ppl:.3f}')
  ids, texts = gemma_checks.greedy(cfg, params, tok, [_PROMPT.value], 16)
  print(f'greedy 16 tokens after {_PROMPT.value!r}: {texts[0]!r}')
  ref = gemma_checks.greedy_uncached(cfg, params, tok, [_PROMPT.value], 16)
  print(f'cached == uncached greedy (16 tokens): {bool(np.array_equal(ids, ref))}')
  tokens = jnp.asarray([[2] + tok.encode(_PROMPT.value)], jnp.int32)
  diff = gemma_checks.max_abs_diff_vs_gm(_MODEL.value, cfg, params, tokens)
  print(f'max |logits - gm.nn.{_MODEL.value} logits| (float32): {diff:.2e}')
  ok, bad = gemma_checks.title_round_trip(tok, _MOVIES.value)
  print(f'tokenizer round trip: {ok}/{ok + len(bad)} titles of {_MOVIES.value} exact')
  for t in bad[:5]:
    print(f'  mismatch: {t!r}')


if __name__ == '__main__':
  app.run(main)
