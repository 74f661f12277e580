"""Candidate ranking with a shared prefill equals scoring each full sequence."""

import jax
import jax.numpy as jnp
import numpy as np

from user_llm import ranking
from user_llm import sampling
from user_llm.models import gemma as gemma_lib
from user_llm.models import testing


def test_scores_equal_full_sequence_log_likelihood():
  cfg = testing.tiny_gemma_config()
  dec = gemma_lib.GemmaDecoder(cfg)
  params = dec.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))['params']
  params = jax.tree.map(lambda x: x + 0.2 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
  prompts = [[2, 5, 9, 11], [2, 6]]
  cands = np.array([[[7, 8, 1], [9, 1, 0], [3, 3, 1]], [[4, 1, 0], [7, 8, 1], [5, 6, 1]]], np.int32)
  got = ranking.score_candidates(dec, params, sampling.left_pad(prompts), cands, {}, chunk=2)
  for b, prompt in enumerate(prompts):
    for c in range(3):
      ans = [t for t in cands[b, c] if t]
      seq = jnp.asarray([prompt + ans])
      logp = jax.nn.log_softmax(dec.apply({'params': params}, seq).logits[0], -1)
      want = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(ans))
      np.testing.assert_allclose(got[b, c], want, rtol=1e-4, atol=1e-4)


def test_recall_ties_count_against_target():
  scores = np.array([[0.0, 0.0, -1.0], [-3.0, -1.0, -2.0]])
  hits = ranking.recall_at(scores, np.array([0, 0]), ks=(1, 2))
  np.testing.assert_array_equal(hits['recall@1'], [0, 0])
  np.testing.assert_array_equal(hits['recall@2'], [1, 0])
