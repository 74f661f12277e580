"""benchmarks/stage2_lib.py on a tiny Gemma and a tiny MovieLens: non-LLM references rank
the LLM rows' candidates, and rows re-score under changed eval fields."""

import jax
import numpy as np

from benchmarks import stage2_lib
from configs import testing
from user_llm import experiment
from user_llm import sharding


def _exp(tiny_movielens, tmp_path, stage1_workdir):
  cfg = testing.tiny_userllm_config()
  cfg.data.path = str(tiny_movielens)
  cfg.data.cache_dir = str(tmp_path / 'cache')
  cfg.userllm.encoder_workdir = str(stage1_workdir)
  cfg.eval.max_batches = -1
  cfg.eval.tasks = ('next_item',)
  return cfg, experiment.build(cfg, sharding.make_mesh(cfg.mesh))


def test_references_and_rescoring_share_users_and_candidates(tiny_movielens, tmp_path,
                                                             stage1_workdir):
  cfg, exp = _exp(tiny_movielens, tmp_path, stage1_workdir)
  exp.config.eval.negatives = 'popularity'
  num_items = len(exp.prepared.catalogue.names)

  def oracle(batch):  # The true item alone scores 1: ranked first among any candidates.
    s = np.zeros((len(batch['target']), num_items), np.float32)
    s[np.arange(len(s)), batch['target']] = 1.0
    return s

  hits = stage2_lib.reference_hits(exp, oracle)
  assert len(hits['user']) > 0 and hits['recall@1'].min() == 1.0
  pop = stage2_lib.reference_hits(exp, stage2_lib.popularity_scores(exp))
  np.testing.assert_array_equal(pop['user'], hits['user'])
  assert np.all((pop['recall@5'] >= pop['recall@1']) & (pop['recall@5'] <= 1))
  taste = stage2_lib.reference_hits(exp, stage2_lib.genre_taste_scores(exp))
  np.testing.assert_array_equal(taste['user'], hits['user'])

  # The LLM's own evaluator, popularity negatives, the pretrained decoder alone.
  out, seconds = stage2_lib.run_evaluators(
      cfg, lambda e: e.load_pretrained(e.init_params(jax.random.PRNGKey(0))),
      negatives='popularity')
  assert set(out) == {'next_item'} and seconds > 0
  np.testing.assert_array_equal(out['next_item']['user'], hits['user'])
  assert cfg.eval.negatives == 'popularity'
