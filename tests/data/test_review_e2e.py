"""Amazon and Google Local through the whole pipeline on tiny configs: stage 1 -> stage 2
(User-LLM and the text-prompt baseline: next item, favourite category, review ROUGE-Lsum)
-> generate for a user."""

import json

import pytest

from configs import amazon_pretrain
from configs import google_local_pretrain
from configs import testing
from tests.data import review_fixtures as rf
from user_llm import generation
from user_llm import train

PRETRAIN = {'amazon': amazon_pretrain, 'google_local': google_local_pretrain}
QUESTION = {'amazon': 'Which product will this user review next?',
            'google_local': 'Which place will this user visit next?'}


@pytest.mark.parametrize('release,dataset,modes', [
    ('amazon_2014', 'amazon', ('cross_attention', 'text_prompt')),
    ('google_2018', 'google_local', ('cross_attention',))])
def test_stage1_stage2_generate(tmp_path, release, dataset, modes):
  w = rf.write_release(release, tmp_path / 'data', users=120, items=40)
  cache = str(tmp_path / 'cache')
  s1 = PRETRAIN[dataset].get_config('runlocal')
  s1.data.path, s1.data.cache_dir = str(w.folder), cache
  s1.train.async_checkpoint, s1.train.num_steps = False, 2
  s1.eval.max_batches = 1
  metrics = train.train_and_evaluate(s1, str(tmp_path / 'stage1'))
  assert 0 <= metrics['recall@10'] <= 1 and s1.data.pad_short

  runs = {}
  for mode in modes:
    cfg = testing.tiny_userllm_config(
        f'mode={mode}' + (',strategy=lora' if mode == 'text_prompt' else ''), dataset)
    cfg.data.path, cfg.data.cache_dir = str(w.folder), cache
    cfg.data.max_answer_tokens = 8
    cfg.userllm.encoder_workdir = str(tmp_path / 'stage1')
    cfg.train.async_checkpoint, cfg.train.num_steps = False, 2
    if mode == 'text_prompt':  # The baseline of the review row (fewer compiles: seconds).
      cfg.tasks = cfg.eval.tasks = ('review',)
    runs[mode] = train.train_and_evaluate(cfg, str(tmp_path / mode))
  for metrics in runs.values():  # User-LLM and the text-prompt baseline: ROUGE-Lsum.
    assert 0 <= metrics['review/rougeLsum'] <= 1 and metrics['review/examples'] > 0
  metrics = runs['cross_attention']
  assert 0 <= metrics['next_item/recall@1'] <= 1 and 0 <= metrics['fav_genre/recall@1'] <= 1
  with open(tmp_path / 'cross_attention' / 'config.json') as f:
    assert json.load(f)['data']['name'] == dataset

  exp, params = generation.load_run(str(tmp_path / 'cross_attention'))
  answer = generation.answer(exp, params, w.tie_user, [QUESTION[dataset]], 6)
  assert len(answer) == 1 and isinstance(answer[0], str)
