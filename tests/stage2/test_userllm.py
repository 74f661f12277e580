"""Stage 2 end to end on a tiny Gemma and a tiny MovieLens: train, eval, resume, generate."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import testing
from user_llm import experiment
from user_llm import generation
from user_llm import optim
from user_llm import sharding
from user_llm import train


def _config(data, tmp_path, stage1, arg=''):
  cfg = testing.tiny_userllm_config(arg)
  cfg.data.path = str(data)
  cfg.data.cache_dir = str(tmp_path / 'cache')
  cfg.userllm.encoder_workdir = str(stage1)
  cfg.train.async_checkpoint = False
  return cfg


def _exp(cfg):
  return experiment.build(cfg, sharding.make_mesh(cfg.mesh))


def test_loads_stage1_encoder(tiny_movielens, tmp_path, stage1_workdir):
  from user_llm import checkpointing
  exp = _exp(_config(tiny_movielens, tmp_path, stage1_workdir))
  params = exp.load_pretrained(exp.init_params(jax.random.PRNGKey(0)))
  want = checkpointing.load_params(str(stage1_workdir), subtree='user_encoder')
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                                   params['user_encoder'], want))


def test_encoder_is_built_from_the_stage1_config(tiny_movielens, tmp_path, stage1_workdir):
  """Stage 2 copies no encoder config: the architecture is the stage-1 run's config.json,
  and a checkpoint that does not fit it, or too few positions, is named."""
  import json
  import shutil
  s1 = json.loads((stage1_workdir / 'config.json').read_text())
  exp = _exp(_config(tiny_movielens, tmp_path, stage1_workdir))
  assert exp.model.user_encoder.d_model == s1['model']['d_model']
  assert exp.model.user_encoder.max_len == s1['data']['history_len']
  # A stage-1 run from before the rename wrote `data.seq_len`: still read.
  old = tmp_path / 'old_stage1'
  shutil.copytree(stage1_workdir, old)
  old_s1 = json.loads(json.dumps(s1))
  old_s1['data']['seq_len'] = old_s1['data'].pop('history_len')
  (old / 'config.json').write_text(json.dumps(old_s1))
  assert _exp(_config(tiny_movielens, tmp_path, old)).model.user_encoder.max_len == (
      s1['data']['history_len'])
  edited = tmp_path / 'edited_stage1'
  shutil.copytree(stage1_workdir, edited)
  s1['model']['d_model'] = 24
  (edited / 'config.json').write_text(json.dumps(s1))
  exp = _exp(_config(tiny_movielens, tmp_path, edited))
  with pytest.raises(ValueError, match=r'first mismatch at user_encoder/'):
    exp.load_pretrained(exp.init_params(jax.random.PRNGKey(0)))
  cfg = _config(tiny_movielens, tmp_path, stage1_workdir)
  cfg.data.history_len = s1['data']['history_len'] + 1
  with pytest.raises(ValueError, match='has positions for'):
    _exp(cfg)
  cfg.userllm.encoder_workdir = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='no config.json'):
    _exp(cfg)


@pytest.mark.parametrize('strategy,trained', [
    ('enc', {'user_encoder', 'projection', 'cross_attention'}),
    ('proj', {'projection', 'cross_attention'}),
    ('lora', {'user_encoder', 'projection', 'cross_attention', 'decoder:lora'}),
    ('full', {'user_encoder', 'projection', 'cross_attention', 'decoder'}),
])
def test_strategies_freeze_by_path(tiny_movielens, tmp_path, stage1_workdir, strategy, trained):
  cfg = _config(tiny_movielens, tmp_path, stage1_workdir, f'strategy={strategy}')
  exp = _exp(cfg)
  params = jax.eval_shape(exp.init_params, jax.random.PRNGKey(0))
  labels = optim.labels(params, exp.freeze_rules)
  assert list(cfg.train.freeze) == []  # The rules are derived, never written back.
  got = set()
  for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]:
    p = sharding.path_str(path)
    if label == 'adamw':
      got.add('decoder:lora' if p.startswith('decoder') and 'lora' in p and strategy == 'lora'
              else p.split('/')[0])
  assert got == trained
  # Frozen params carry no optimizer state.
  tx = optim.make(cfg.train, params, exp.freeze_rules)
  n_state = sum(x.size for x in jax.tree.leaves(jax.eval_shape(tx.init, params)))
  n_trained = sum(x.size for x, l in zip(jax.tree.leaves(params), jax.tree.leaves(labels))
                  if l == 'adamw')
  assert n_state <= 2 * n_trained + 16


@pytest.mark.parametrize('arg', ['', 'mode=soft_prompt,latents=4', 'mode=text_prompt,strategy=lora'])
def test_train_eval_resume(tiny_movielens, tmp_path, stage1_workdir, arg):
  cfg = _config(tiny_movielens, tmp_path, stage1_workdir, arg)
  cfg.train.num_steps = 2
  metrics = train.train_and_evaluate(cfg, str(tmp_path / 'run'))
  for key in ('next_item/recall@1', 'next_item/recall@5', 'fav_genre/recall@1'):
    assert 0.0 <= metrics[key] <= 1.0
  assert metrics['next_item/examples'] > 0
  lo, hi = metrics['fav_genre/recall@1_lo'], metrics['fav_genre/recall@1_hi']
  assert lo <= metrics['fav_genre/recall@1'] <= hi  # 95% bootstrap CI over users.
  import json
  with open(tmp_path / 'run' / 'eval_examples.json') as f:
    examples = json.load(f)
  assert len(examples['next_item']['recall@5']) == metrics['next_item/examples']
  if 'mode=' not in arg:  # Cross-attention: every gate is logged with the train metrics.
    with open(tmp_path / 'run' / 'metrics.jsonl') as f:
      train_lines = [json.loads(l) for l in f if '"train"' in l]
    assert 'gate/layer_0/attn' in train_lines[-1] and 'gate/layer_0/ffw' in train_lines[-1]
  cfg.train.num_steps = 4  # Relaunch: resumes at step 2.
  train.train_and_evaluate(cfg, str(tmp_path / 'run'))
  with open(tmp_path / 'run' / 'results.json') as f:
    assert json.load(f)['resumed'] == 'resumed@2'


def test_generate_for_a_user_and_bad_inputs(tiny_movielens, tmp_path, stage1_workdir):
  cfg = _config(tiny_movielens, tmp_path, stage1_workdir)
  cfg.train.num_steps = 1
  workdir = tmp_path / 'gen'
  workdir.mkdir()
  (workdir / 'config.json').write_text(cfg.to_json_best_effort())
  train.train_and_evaluate(cfg, str(workdir))
  exp, params = generation.load_run(str(workdir))
  out = generation.answer(exp, params, '1', ['Which movie will this user watch next?'], 6)
  assert len(out) == 1 and isinstance(out[0], str)
  with pytest.raises(KeyError, match="User '999' is not in"):
    generation.answer(exp, params, '999', ['Which movie?'])
  with pytest.raises(ValueError, match='Empty prompt'):
    generation.answer(exp, params, '1', ['  '])


def test_review_generation_rouge(tiny_movielens, tmp_path, stage1_workdir):
  cfg = _config(tiny_movielens, tmp_path, stage1_workdir)
  cfg.tasks = ('review',)
  cfg.eval.tasks = ('review',)
  cfg.data.max_answer_tokens = 6
  cfg.train.num_steps = 1
  metrics = train.train_and_evaluate(cfg, str(tmp_path / 'review'))
  assert metrics['review/examples'] > 0
  assert 0.0 <= metrics['review/rougeLsum'] <= 1.0


@pytest.mark.parametrize('arg', ['', 'mode=soft_prompt,latents=4'])
def test_trimmed_batch_has_the_same_loss(tiny_movielens, tmp_path, stage1_workdir, arg):
  """Cutting padding and packing answer positions (trim_batch) changes no number."""
  cfg = _config(tiny_movielens, tmp_path, stage1_workdir, arg)
  cfg.data.max_prompt_tokens = 48  # Room to trim.
  exp = _exp(cfg)
  params = exp.load_pretrained(exp.init_params(jax.random.PRNGKey(0)))
  rng = jax.random.PRNGKey(1)
  for task in ('next_item', 'fav_genre'):
    kw = dict(batch_size=4, seed=0)
    full = next(iter(exp.dataset('train', task, trim_multiple=0, **kw)))
    cut = next(iter(exp.dataset('train', task, trim_multiple=8, **kw)))
    assert cut['tokens'].shape[1] < full['tokens'].shape[1]
    (l1, m1), (l2, m2) = exp.loss_fn(params, full, rng), exp.loss_fn(params, cut, rng)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    np.testing.assert_allclose(m1['token_accuracy'], m2['token_accuracy'])


def test_lora_adapters_are_evaluated_in_the_decoder_dtype(tiny_movielens, tmp_path, stage1_workdir):
  """float32 adapters would turn a bf16 Gemma's projections and KV cache float32."""
  from gemma import peft
  from user_llm.models import gemma as gemma_lib
  cfg = _config(tiny_movielens, tmp_path, stage1_workdir, 'mode=text_prompt,strategy=lora')
  cfg.llm.param_dtype = 'bfloat16'
  exp = _exp(cfg)
  params = exp.init_params(jax.random.PRNGKey(0))
  assert gemma_lib.compute_dtype(params['decoder']) == jnp.float32  # Training: promoted.
  got = exp.inference_params(params)
  base, lora = peft.split_params(got['decoder'])
  assert lora and {x.dtype for x in jax.tree.leaves(lora)} == {jnp.dtype(jnp.bfloat16)}
  assert gemma_lib.compute_dtype(got['decoder']) == jnp.bfloat16
  assert jax.tree.all(jax.tree.map(lambda a, b: a is b, base,
                                   peft.split_params(params['decoder']).original))
  exp.config.eval.lora_in_param_dtype = False
  assert exp.inference_params(params) is params


def test_stage1_time_and_item_content_options_reach_stage2(tiny_movielens, tmp_path):
  """A stage-1 run with time features (and item content in its head) trains, and stage 2
  reads its encoder with the history's timestamps."""
  from configs import movielens_pretrain
  from user_llm import checkpointing
  from user_llm.models import user_encoder as ue
  s1cfg = movielens_pretrain.get_config('runlocal,time=gap+year,side=genres+year')
  s1cfg.data.path = str(tiny_movielens)
  s1cfg.data.cache_dir = str(tmp_path / 'cache1')
  s1cfg.train.async_checkpoint = False
  stage1 = tmp_path / 'stage1_time'
  metrics = train.train_and_evaluate(s1cfg, str(stage1))
  assert np.isfinite(metrics['recall@10'])
  s1params = checkpointing.load_params(str(stage1))
  assert {'item_side_genres', 'item_side_year'} <= set(s1params)
  assert {'embed_gap', 'embed_year'} <= set(s1params['user_encoder'])
  exp = _exp(_config(tiny_movielens, tmp_path, stage1))
  assert exp.encoder_inputs[-1] == 'timestamp'
  params = exp.load_pretrained(exp.init_params(jax.random.PRNGKey(0)))
  batch = next(iter(exp.dataset('train', 'next_item', batch_size=2, seed=0)))
  loss, _ = exp.loss_fn(params, batch, jax.random.PRNGKey(1))
  assert np.isfinite(loss)
  # Gates start at 0 (the loss is Gemma's alone): compare what cross-attention reads.
  memory = lambda b: exp.model.apply(
      {'params': params}, {f: b[f] for f in exp.encoder_inputs}, b['mask'],
      method='user_memory')[0]
  # The fixture's events are in 1970 (year bucket 2); 30 years on is bucket 7.
  later = dict(batch, timestamp=batch['timestamp'] + 30 * ue._SECONDS_PER_YEAR)
  assert not np.allclose(memory(batch), memory(later))


def test_shuffle_users_feeds_each_user_another_real_users_history(tiny_movielens, tmp_path,
                                                                  stage1_workdir):
  """config.eval.shuffle_users (benchmarks/stage2_shuffle.py): the prompt stays the
  user's own; the user side is that of the next real row; padding rows are kept."""
  from user_llm.evaluators import common
  cfg = _config(tiny_movielens, tmp_path, stage1_workdir)
  cfg.eval.batch_size = 4
  exp = _exp(cfg)
  params = exp.load_pretrained(exp.init_params(jax.random.PRNGKey(0)))
  batch = next(common.eval_batches(exp, 'next_item'))
  batch = {k: np.asarray(v) for k, v in batch.items()}
  batch['example_mask'][-1] = False  # A padding row, as in a last batch.
  real = np.flatnonzero(batch['example_mask'])
  assert len(real) >= 2
  prompts, own = common.llm_inputs(exp, params, batch)
  exp.config.eval.shuffle_users = 1
  prompts2, other = common.llm_inputs(exp, params, batch)
  np.testing.assert_array_equal(prompts, prompts2)
  rows = np.arange(len(batch['example_mask']))
  rows[real] = np.roll(real, -1)
  assert not np.array_equal(rows, np.arange(len(rows)))
  np.testing.assert_array_equal(other['memory_mask'], own['memory_mask'][rows])
  for a, b in zip(jax.tree.leaves(other['memory_kv']), jax.tree.leaves(own['memory_kv'])):
    np.testing.assert_allclose(a, np.asarray(b)[rows], rtol=1e-5, atol=1e-6)


def test_popularity_negatives_follow_training_counts(tiny_movielens, tmp_path, stage1_workdir):
  """config.eval.negatives='popularity' (benchmarks/stage2_negatives.py): negatives are
  drawn by `Prepared.item_counts`, never the target, never twice, never a 0-count item;
  'uniform' keeps the earlier draws (old results stay reproducible)."""
  from user_llm.evaluators import candidates
  cfg = _config(tiny_movielens, tmp_path, stage1_workdir)
  exp = _exp(cfg)
  prepared = exp.prepared
  counts = prepared.item_counts
  # Training events = every event before the user's first held-out target.
  first_held_out = {}
  for split in ('validation', 'test'):
    for user, target, _ in prepared.windows(split):
      first_held_out[user] = min(first_held_out.get(user, target), target)
  assert counts.sum() == sum(first_held_out.values())
  assert counts[:2].sum() == 0 and counts.shape == (prepared.vocabs['item'].size,)
  assert candidates.negative_weights(exp) is None  # The default: uniform.

  num_items, targets = len(counts), np.array([2, 3, 4] * 20)
  weights = np.zeros(num_items)
  weights[[2, 3, 4, 5, 6]] = [1000.0, 1.0, 1.0, 1.0, 1.0]
  neg = candidates.sample_negatives(np.random.default_rng(0), targets, num_items, 4, weights)
  assert neg.shape == (60, 3)
  assert not (neg == targets[:, None]).any()
  assert all(len(set(r)) == 3 for r in neg.tolist())
  assert set(neg.ravel().tolist()) <= {2, 3, 4, 5, 6}  # Weight 0: never drawn.
  assert (neg[targets != 2] == 2).any(axis=1).all()  # The heavy item: in every row it may be.
  uniform = candidates.sample_negatives(np.random.default_rng(0), targets[:3], num_items, 4)
  rng = np.random.default_rng(0)
  for t, row in zip(targets[:3], uniform):
    pool = np.setdiff1d(np.arange(2, num_items), [t])
    np.testing.assert_array_equal(row, rng.choice(pool, size=3, replace=False))

  exp.config.eval.negatives = 'popularity'
  np.testing.assert_array_equal(candidates.negative_weights(exp), counts)
  exp.config.eval.negatives = 'popular'
  with pytest.raises(ValueError, match=r"config.eval.negatives='popular'"):
    candidates.negative_weights(exp)


@pytest.mark.parametrize('arg', ['contrast=1.0', 'contrast=1.0,mode=soft_prompt'])
def test_user_contrast_scores_each_answer_with_another_users_history(tiny_movielens, tmp_path,
                                                                    stage1_workdir, arg):
  """config.train.user_contrast: the second pass is the decoder with row b - 1's user
  side; with the gates closed (cross-attention at init) the user side changes nothing,
  so the margin is 0 and the term log 2; once they open it is not."""
  cfg = _config(tiny_movielens, tmp_path, stage1_workdir, arg)
  assert cfg.train.user_contrast == 1.0
  exp = _exp(cfg)
  params = exp.load_pretrained(exp.init_params(jax.random.PRNGKey(0)))
  batch = next(iter(exp.dataset('train', 'next_item', batch_size=4, seed=0)))
  assert len(set(batch['user'].tolist())) > 1
  feats = {f: batch[f] for f in exp.encoder_inputs}
  apply = lambda *a, **k: exp.model.apply({'params': params}, *a, **k)
  memory = apply(feats, batch['mask'], method='user_memory')
  rolled = {f: np.roll(v, 1, axis=0) for f, v in feats.items()}
  np.testing.assert_allclose(
      apply(*(jnp.roll(x, 1, axis=0) for x in memory), batch['tokens'],
            method='decode_with_memory').logits,
      apply(rolled, np.roll(batch['mask'], 1, axis=0), batch['tokens'], method='forward').logits,
      rtol=1e-5, atol=1e-5)
  lm_cfg = exp.config.train.user_contrast
  loss, aux = exp.loss_fn(params, batch, jax.random.PRNGKey(1))
  if 'soft_prompt' not in arg:  # Closed gates: Gemma alone.
    assert float(aux['user_margin']) == 0.0
    np.testing.assert_allclose(aux['user_contrast'], np.log(2.0), rtol=1e-6)
  exp.config.train.user_contrast = 0.0
  lm_loss, lm_aux = exp.loss_fn(params, batch, jax.random.PRNGKey(1))
  assert 'user_contrast' not in lm_aux
  np.testing.assert_allclose(loss, lm_loss + lm_cfg * aux['user_contrast'], rtol=1e-6)
  exp.config.train.user_contrast = lm_cfg
  opened = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.5 if 'gate' in sharding.path_str(path) else x, params)
  _, aux = exp.loss_fn(opened, batch, jax.random.PRNGKey(1))
  assert float(aux['user_margin']) != 0.0
  assert np.isfinite(float(aux['user_contrast']))

  text = _exp(_config(tiny_movielens, tmp_path, stage1_workdir,
                      'contrast=1.0,mode=text_prompt,strategy=lora'))
  text_params = text.init_params(jax.random.PRNGKey(0))
  text_batch = next(iter(text.dataset('train', 'next_item', batch_size=2, seed=0)))
  with pytest.raises(ValueError, match='user_contrast needs a user side'):
    text.loss_fn(text_params, text_batch, jax.random.PRNGKey(1))


def test_item_alignment_names_items_from_their_embedding(tiny_movielens, tmp_path,
                                                         stage1_workdir):
  """align=W: the memory adds stage 1's item read-out (its tied head, loaded with the
  encoder); each step also scores the next-item answer of catalogue items whose memory
  is their own embedding, drawn by the step's rng among items seen in training."""
  import data_pipelines
  from user_llm import checkpointing
  cfg = _config(tiny_movielens, tmp_path, stage1_workdir, 'align=1.0')
  assert cfg.userllm.item_readout and cfg.train.item_alignment == 1.0
  exp = _exp(cfg)
  params = exp.load_pretrained(exp.init_params(jax.random.PRNGKey(0)))
  want = checkpointing.load_params(str(stage1_workdir), subtree='item_proj')
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params['item_proj'], want))
  apply = lambda *a, **k: exp.model.apply({'params': params}, *a, **k)

  # The table: [BOS] next-item question, the item's name, EOS; pad/OOV rows empty.
  table = exp._alignment
  names = exp.prepared.catalogue.names
  x = int(np.argmax(table['p']))
  assert table['p'][:data_pipelines.NUM_RESERVED].sum() == 0
  assert np.all(table['p'][exp.prepared.item_counts == 0] == 0)
  answer = table['tokens'][x][table['answer_pos'][x][table['answer_mask'][x]]]
  assert exp.tokenizer.decode(answer[:-1].tolist()) == names[x]
  assert answer[-1] == exp.tokenizer.eos_id

  # Memory: projection(h) + item_projection(item_proj(h)); an item's: its embedding.
  batch = next(iter(exp.dataset('train', 'next_item', batch_size=4, seed=0)))
  feats = {f: batch[f] for f in exp.encoder_inputs}
  memory, _ = apply(feats, batch['mask'], method='user_memory')
  h = apply(feats, batch['mask'], method=lambda m, f, k: m.user_encoder(f, k))
  dense = lambda p, v: v @ p['kernel'] + p['bias']
  np.testing.assert_allclose(
      memory, dense(params['projection'], h)
      + dense(params['item_projection'], dense(params['item_proj'], h)), rtol=1e-4, atol=1e-5)
  item_mem, item_mask = apply(jnp.array([x, 2]), method='item_memory')
  assert item_mem.shape == (2, 1, exp.decoder_config.embed_dim) and item_mask.all()
  emb = params['user_encoder']['embed_item']['embedding'][x]
  np.testing.assert_allclose(item_mem[0, 0], dense(params['item_projection'], emb), rtol=1e-5)

  # The loss: LM loss + weight * alignment, deterministic given the step's rng.
  loss, aux = exp.loss_fn(params, batch, jax.random.PRNGKey(1))
  again, _ = exp.loss_fn(params, batch, jax.random.PRNGKey(1))
  assert float(loss) == float(again) and np.isfinite(float(aux['item_alignment']))
  align, exp._alignment = exp._alignment, None
  lm_loss, lm_aux = exp.loss_fn(params, batch, jax.random.PRNGKey(1))
  exp._alignment = align
  assert 'item_alignment' not in lm_aux
  np.testing.assert_allclose(loss, lm_loss + aux['item_alignment'], rtol=1e-6)

  # The draws of a run replay: the trainer's rng (key(seed) split, folded with the step).
  draws = exp.alignment_draws(3)
  k = cfg.train.item_alignment_batch
  assert draws.sum() == 3 * k and np.all(table['p'][draws > 0] > 0)
  train_rng = jax.random.split(jax.random.key(cfg.train.seed))[1]
  want = np.concatenate([np.asarray(exp._alignment_items(jax.random.fold_in(train_rng, s)))
                         for s in range(3)])
  np.testing.assert_array_equal(draws, np.bincount(want, minlength=len(table['p'])))

  # Diagnostic evaluation: the memory is the true next item's own embedding.
  from user_llm.evaluators import common
  exp.config.eval.target_item_memory = True
  test = next(common.eval_batches(exp, 'next_item'))
  _, user = common.llm_inputs(exp, params, test)
  assert user['memory_mask'].shape == (len(test['target']), 1)
  want = apply(apply(jnp.asarray(test['target']), method='item_memory')[0], method='memory_kv')
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.allclose(a, b)), user['memory_kv'], want))
  from user_llm.evaluators import candidates
  with pytest.raises(ValueError, match='evaluate next_item only'):
    candidates.CandidateRanking(exp, 'fav_genre')  # Its targets are genre ids.
  exp.config.eval.target_item_memory = False

  # Strategy Proj freezes stage 1's head with the encoder; alignment needs the read-out.
  assert any(re.fullmatch(r, 'item_proj/kernel') for r in exp.freeze_rules) is False
  from user_llm import userllm
  assert any(re.fullmatch(r, 'item_proj/kernel') for r in userllm.freeze_rules('proj'))
  cfg.userllm.item_readout = False
  with pytest.raises(ValueError, match='item_alignment needs config.userllm.item_readout'):
    _exp(cfg)
