"""Candidate ranking with a shared prefill equals scoring each full sequence."""

import jax
import jax.numpy as jnp
import numpy as np

from user_llm import decoding
from user_llm import metrics
from user_llm.models import gemma as gemma_lib
from configs import testing

CANDS = np.array([[[7, 8, 1], [9, 1, 0], [3, 3, 1]], [[4, 1, 0], [7, 8, 1], [5, 6, 1]]], np.int32)
PROMPTS = [[2, 5, 9, 11], [2, 6]]


_decoder = testing.tiny_decoder


def test_scores_equal_full_sequence_log_likelihood():
  _, dec, params = _decoder()
  got = decoding.score_candidates(dec, params, decoding.left_pad(PROMPTS), CANDS, {}, chunk=2)
  for b, prompt in enumerate(PROMPTS):
    for c in range(3):
      ans = [t for t in CANDS[b, c] if t]
      seq = jnp.asarray([prompt + ans])
      logp = jax.nn.log_softmax(dec.apply({'params': params}, seq).logits[0], -1)
      want = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(ans))
      np.testing.assert_allclose(got[b, c], want, rtol=1e-4, atol=1e-4)


def test_chunked_scores_equal_one_call_with_a_soft_prompt():
  cfg, dec, params = _decoder()
  user = {'prefix': jax.random.normal(jax.random.PRNGKey(2), (2, 3, cfg.embed_dim)),
          'prefix_mask': jnp.array([[True] * 3, [False, True, True]])}
  prompts = decoding.left_pad(PROMPTS)
  whole = decoding.score_candidates(dec, params, prompts, CANDS, user, chunk=0)
  chunked = decoding.score_candidates(dec, params, prompts, CANDS, user, chunk=2)
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)
  # The soft prompt is read: without it the scores differ.
  plain = decoding.score_candidates(dec, params, prompts, CANDS, {}, chunk=0)
  assert not np.allclose(plain, whole, atol=1e-3)


def test_recall_ties_count_against_target():
  scores = np.array([[0.0, 0.0, -1.0], [-3.0, -1.0, -2.0]])
  hits = metrics.recall_at(scores, np.array([0, 0]), ks=(1, 2))
  np.testing.assert_array_equal(hits['recall@1'], [0, 0])
  np.testing.assert_array_equal(hits['recall@2'], [1, 0])


def test_one_tie_rule_for_recall_at_and_rank_metrics():
  const = np.zeros((2, 5), np.float32)  # A constant scorer never gets a lucky hit.
  target = np.array([2, 4])
  np.testing.assert_array_equal(metrics.recall_at(const, target, ks=(1,))['recall@1'], [0, 0])
  m = metrics.rank_metrics(jnp.asarray(const), jnp.asarray(target), jnp.zeros((2, 5), bool),
                           ks=(1, 5), ndcg_k=5)
  np.testing.assert_array_equal(m['recall@1'], [0, 0])
  np.testing.assert_array_equal(m['recall@5'], [1, 1])  # Rank 4 of 5: last, not dropped.
  # Excluded candidates never count, ties or not; numpy and jax inputs agree.
  excl = np.zeros((2, 5), bool)
  excl[:, :2] = True
  np.testing.assert_array_equal(metrics.rank_of_target(const, target, excl), [2, 2])
  np.testing.assert_array_equal(
      metrics.rank_of_target(jnp.asarray(const), jnp.asarray(target), jnp.asarray(excl)), [2, 2])


def test_nll_and_top1_is_cross_entropy_and_argmax():
  logits = jax.random.normal(jax.random.key(0), (3, 4, 37)) * 3.0
  targets = jax.random.randint(jax.random.key(1), (3, 4), 0, 37)
  targets = targets.at[0, 0].set(logits[0, 0].argmax())  # At least one hit.
  nll, hit = metrics.nll_and_top1(logits, targets)
  ref = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(nll, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(hit, (logits.argmax(-1) == targets).astype(np.float32))
  assert hit[0, 0] == 1.0
  grad = jax.grad(lambda x: metrics.nll_and_top1(x, targets)[0].sum())(logits)
  np.testing.assert_allclose(grad, jax.nn.softmax(logits) - jax.nn.one_hot(targets, 37),
                             rtol=1e-5, atol=1e-6)


def test_packed_scores_equal_every_slot_scores_in_any_candidate_order():
  """Scoring only real tokens, shortest candidates first, changes no score."""
  _, dec, params = _decoder()
  rng = np.random.default_rng(0)
  lengths = rng.integers(0, 11, size=(3, 7))  # Ragged, some empty, longer than 8.
  cands = np.zeros((3, 7, 12), np.int32)
  for (b, c), n in np.ndenumerate(lengths):
    cands[b, c, :n] = rng.integers(1, dec.config.num_embed, size=n)
  prompts = decoding.left_pad([[2, 5, 9, 11], [2, 6], [2, 7, 7]])
  ref = decoding.score_candidates(dec, params, prompts, cands, {}, chunk=0, pack=False)
  for chunk in (0, 3):
    got = decoding.score_candidates(dec, params, prompts, cands, {}, chunk=chunk)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
  assert (ref[lengths == 0] == 0).all() and (ref[lengths > 0] < 0).all()
  # And both equal the full-sequence likelihood (one candidate per row checked).
  for b, prompt in enumerate([[2, 5, 9, 11], [2, 6], [2, 7, 7]]):
    c = int(np.argmax(lengths[b]))
    ans = cands[b, c, :lengths[b, c]].tolist()
    logp = jax.nn.log_softmax(dec.apply({'params': params}, jnp.asarray([prompt + ans])).logits[0], -1)
    want = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(ans))
    np.testing.assert_allclose(ref[b, c], want, rtol=1e-4, atol=1e-4)
