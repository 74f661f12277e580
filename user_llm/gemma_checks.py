"""Sanity checks of a loaded Gemma: perplexity, greedy text, equivalence with `gm`.

Used by `launch/check_gemma.py` and the tests; each returns plain numbers.
"""

from __future__ import annotations

import csv
import os

from gemma import gm
import jax
import jax.numpy as jnp
import numpy as np

from user_llm import decoding
from user_llm.models import gemma as gemma_lib


def perplexity(decoder_config, params, tokenizer, text: str) -> tuple[float, int]:
  """exp(mean next-token NLL) of `text` after BOS, and its number of tokens."""
  ids = [tokenizer.special_tokens.BOS] + tokenizer.encode(text)
  tokens = jnp.asarray([ids], jnp.int32)
  logits = jax.jit(gemma_lib.GemmaDecoder(decoder_config).apply)({'params': params}, tokens).logits
  logp = jax.nn.log_softmax(logits[0, :-1].astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, tokens[0, 1:, None], axis=-1).mean()
  return float(jnp.exp(nll)), len(ids)


def greedy(decoder_config, params, tokenizer, prompts: list[str], max_new_tokens: int = 16):
  """Greedy continuations (token ids and text) of `prompts` with the KV cache."""
  ids = [[tokenizer.special_tokens.BOS] + tokenizer.encode(p) for p in prompts]
  out = decoding.generate(
      gemma_lib.GemmaDecoder(decoder_config), params, decoding.left_pad(ids),
      max_new_tokens=max_new_tokens, stop_tokens=(),
  )
  stop = (tokenizer.special_tokens.EOS, tokenizer.special_tokens.END_OF_TURN)
  return np.asarray(out), [tokenizer.decode(r) for r in decoding.trim(out, stop)]


def greedy_uncached(decoder_config, params, tokenizer, prompts: list[str], max_new_tokens: int = 16):
  """The same greedy tokens by repeated full forward passes (no cache): the reference.

  The sequence lives in a fixed-size buffer whose unwritten tail is masked out, so
  the forward compiles once; causality makes the tail irrelevant to the logits read.
  """
  dec = gemma_lib.GemmaDecoder(decoder_config)
  prompt = decoding.left_pad(
      [[tokenizer.special_tokens.BOS] + tokenizer.encode(p) for p in prompts])
  length = prompt.shape[1]
  seq = jnp.pad(jnp.asarray(prompt), ((0, 0), (0, max_new_tokens)))
  mask = jnp.pad(jnp.asarray(prompt != 0), ((0, 0), (0, max_new_tokens)))
  apply = jax.jit(lambda p, t, m: dec.apply({'params': p}, t, input_mask=m).logits)
  for t in range(max_new_tokens):
    nxt = jnp.argmax(apply(params, seq, mask)[:, length + t - 1], -1).astype(jnp.int32)
    seq = seq.at[:, length + t].set(nxt)
    mask = mask.at[:, length + t].set(True)
  return np.asarray(seq[:, length:])


def max_abs_diff_vs_gm(model_name: str, decoder_config, params, tokens: jax.Array) -> float:
  """max |logits(GemmaDecoder) - logits(gm.nn.<model_name>)| on the same params."""
  ref = getattr(gm.nn, model_name)(dtype=jnp.float32)
  want = jax.jit(ref.apply)({'params': params}, tokens).logits
  got = jax.jit(gemma_lib.GemmaDecoder(decoder_config).apply)({'params': params}, tokens).logits
  return float(jnp.max(jnp.abs(want.astype(jnp.float32) - got.astype(jnp.float32))))


def title_round_trip(tokenizer, movies_csv: str | os.PathLike, count: int = 1000) -> tuple[int, list[str]]:
  """How many of the first `count` movie titles decode(encode(t)) == t, and failures."""
  with open(movies_csv, newline='', encoding='utf-8') as f:
    titles = [row['title'] for _, row in zip(range(count), csv.DictReader(f))]
  bad = [t for t in titles if tokenizer.decode(tokenizer.encode(t)) != t]
  return len(titles) - len(bad), bad
