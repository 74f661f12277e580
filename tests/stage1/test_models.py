"""Layer numerics and model shapes of the stage-1 user encoder and baselines."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from user_llm import metrics, optim, pretrain, sharding
from user_llm.models import baselines
from user_llm.models import user_encoder as ue

VOCAB = {'item': 30, 'genre': 6, 'rating': 5}
DIMS = {'item': 8, 'genre': 4, 'rating': 4}


def _feats(b=2, u=6, seed=0):
  rng = np.random.default_rng(seed)
  return {f: jnp.asarray(rng.integers(2, v, (b, u)), jnp.int32) for f, v in VOCAB.items()}


def _encoder(**kw):
  return ue.UserEncoder(VOCAB, DIMS, d_model=16, num_layers=2, num_heads=2, mlp_dim=32,
                        max_len=8, **kw)


@pytest.mark.parametrize('fusion,norm', [('early', 'pre'), ('late', 'pre'), ('early', 'post')])
def test_causal_output_ignores_future_events(fusion, norm):
  model = _encoder(fusion=fusion, norm=norm)
  feats, mask = _feats(), jnp.ones((2, 6), bool)
  params = model.init(jax.random.key(0), feats, mask)
  out = model.apply(params, feats, mask)
  changed = {f: x.at[:, 4:].set(3) for f, x in feats.items()}
  out2 = model.apply(params, changed, mask)
  np.testing.assert_allclose(out[:, :4], out2[:, :4], atol=1e-6)
  assert not np.allclose(out[:, 4:], out2[:, 4:])


def test_bidirectional_sees_future():
  model = _encoder(causal=False)
  feats, mask = _feats(), jnp.ones((2, 6), bool)
  params = model.init(jax.random.key(0), feats, mask)
  changed = {f: x.at[:, 5].set(3) for f, x in feats.items()}
  assert not np.allclose(model.apply(params, feats, mask)[:, 0],
                         model.apply(params, changed, mask)[:, 0])


def test_padding_is_ignored_and_finite():
  model = _encoder()
  feats = _feats()
  mask = jnp.ones((2, 6), bool).at[:, :2].set(False)
  params = model.init(jax.random.key(0), feats, mask)
  out = model.apply(params, feats, mask)
  padded = {f: x.at[:, :2].set(0) for f, x in feats.items()}
  np.testing.assert_allclose(out[:, 2:], model.apply(params, padded, mask)[:, 2:], atol=1e-6)
  assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize('fusion', ['early', 'late'])
def test_shapes_and_param_tree(fusion):
  model = ue.UserEncoderLM(_encoder(fusion=fusion))
  feats, mask = _feats(4, 8), jnp.ones((4, 8), bool)
  variables = jax.eval_shape(model.init, jax.random.key(0), feats, mask)
  h, logits = jax.eval_shape(lambda v: model.apply(v, feats, mask, last_k=3), variables)
  assert h.shape == (4, 8, 16)
  assert {f: l.shape for f, l in logits.items()} == {f: (4, 3, v) for f, v in VOCAB.items()}
  p = variables['params']
  assert set(p) == {'user_encoder', 'heads'}
  if fusion == 'early':
    assert p['user_encoder']['fuse']['kernel'].shape == (16, 16)  # sum of DIMS -> D.
    assert p['user_encoder']['transformer']['layer_0']['attn']['q'].shape == (16, 2, 8)
  else:
    assert {'tower_item', 'tower_genre', 'tower_rating', 'combine'} <= set(p['user_encoder'])


def test_post_norm_param_tree():
  """norm='post' (SASRec): embeddings and every residual sum normalised, no final norm."""
  model = _encoder(norm='post')
  feats, mask = _feats(), jnp.ones((2, 6), bool)
  p = jax.eval_shape(model.init, jax.random.key(0), feats, mask)['params']['transformer']
  assert set(p) == {'pos_embedding', 'embed_norm', 'layer_0', 'layer_1'}
  assert set(p['layer_0']) == {'attn', 'post_attention_norm', 'mlp', 'post_mlp_norm'}
  with pytest.raises(ValueError, match='Unknown norm'):
    _encoder(norm='sandwich').init(jax.random.key(0), feats, mask)


def test_baseline_shapes():
  feats, mask = _feats(3, 5), jnp.ones((3, 5), bool)
  de = baselines.DualEncoder(VOCAB, DIMS, d_model=16, mlp_dim=32)
  v = jax.eval_shape(de.init, jax.random.key(0), feats, mask)
  user = jax.eval_shape(lambda v: de.apply(v, feats, mask, method='user'), v)
  items = jax.eval_shape(lambda v: de.apply(v, jnp.arange(30), method='items'), v)
  assert user.shape == (3, 5, 16) and items.shape == (30, 16)
  enc = ue.UserEncoder({'item': 31}, {'item': 8}, d_model=16, num_heads=2, mlp_dim=32,
                       max_len=8, causal=False)
  b4r = baselines.Bert4Rec(enc)
  pos = jnp.zeros((3, 2), jnp.int32)
  v = jax.eval_shape(b4r.init, jax.random.key(0), {'item': feats['item']}, mask, mask, pos)
  out = jax.eval_shape(lambda v: b4r.apply(v, {'item': feats['item']}, mask, mask, pos), v)
  assert out.shape == (3, 2, 30)
  pop = baselines.Popularity(30)
  assert pop.apply(pop.init(jax.random.key(0), (2,)), (2,)).shape == (2, 30)


def test_next_event_loss_exact():
  logits = {'item': jnp.log(jnp.asarray([[[0.5, 0.25, 0.25]]]))}
  loss, m = ue.next_event_loss(logits, {'item': jnp.asarray([[1]])}, jnp.ones((1, 1)))
  np.testing.assert_allclose(loss, np.log(4.0), rtol=1e-6)
  assert float(m['acc_item']) == 0.0


def test_future_item_loss_matches_a_loop():
  """Position p of the last K predicts events p+2..p+H that exist and are real."""
  b, u, v, k, h = 2, 6, 11, 3, 3
  rng = np.random.default_rng(0)
  items = jnp.asarray(rng.integers(2, v, (b, u + 1)), jnp.int32)
  mask = jnp.ones((b, u + 1), bool).at[1, 5].set(False)  # A pad target is skipped.
  logits = jnp.asarray(rng.normal(size=(b, k, v)), jnp.float32)
  logp = np.asarray(jax.nn.log_softmax(logits))
  nll = [-logp[i, q, items[i, p + j]] for i in range(b) for q, p in enumerate(range(u - k, u))
         for j in range(2, h + 1) if p + j <= u and mask[i, p + j]]
  assert len(nll) == 5  # Row 0: 3 pairs inside the window; row 1: one of them is pad.
  np.testing.assert_allclose(ue.future_item_loss(logits, items, mask, k, h), np.mean(nll),
                             rtol=1e-6)


def test_rank_metrics_exact():
  scores = jnp.asarray([[0., 0., 5., 4., 3., 9.],
                        [0., 0., 1., 2., 3., 4.]])
  target = jnp.asarray([3, 2])
  seen = jnp.zeros((2, 6), bool).at[0, 5].set(True).at[1, 4].set(True)
  excl = metrics.exclusion_mask(seen, 2, 6)
  m = metrics.rank_metrics(scores, target, excl, ks=(1, 2), ndcg_k=3)
  # Row 0: item 5 (seen) excluded, target 3 ranks second after item 2.
  # Row 1: item 4 excluded; items 5 and 3 outrank target 2: rank 2 (0-based).
  np.testing.assert_allclose(m['recall@1'], [0, 0])
  np.testing.assert_allclose(m['recall@2'], [1, 0])
  np.testing.assert_allclose(m['ndcg@3'], [1 / np.log2(3), 1 / np.log2(4)], rtol=1e-6)
  m2 = metrics.rank_metrics(scores, target,
                            metrics.exclusion_mask(None, 2, 6),
                            ks=(1,), ndcg_k=3)
  np.testing.assert_allclose(m2['ndcg@3'], [0.5, 0.0])


def test_freeze_rules_leave_no_optimizer_state():
  params = {'decoder': {'w': jnp.ones((4, 4))}, 'user_encoder': {'w': jnp.ones((4, 4))}}
  cfg = dict(lr=0.1, warmup=0, num_steps=10)
  from ml_collections import ConfigDict
  for freeze in (['decoder/.*'], [('decoder/.*', None), ('.*', 'adamw')]):
    tx = optim.make(ConfigDict(dict(cfg, freeze=freeze)), params)
    state = tx.init(params)
    shapes = [x.shape for x in jax.tree_util.tree_leaves(state) if np.ndim(x)]
    assert shapes == [(4, 4), (4, 4)]  # mu and nu of user_encoder/w only.
    updates, _ = tx.update(params, state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new['decoder']['w'], params['decoder']['w'])
    assert not np.allclose(new['user_encoder']['w'], params['user_encoder']['w'])


def test_sharding_rules():
  mesh = sharding.make_mesh([('data', -1), ('fsdp', 1), ('tensor', 1)])
  rules = [('.*attn/q', ('fsdp', 'tensor', None)), ('.*', None)]
  spec = sharding.spec_for('user_encoder/transformer/layer_0/attn/q', (16, 2, 8), rules, mesh)
  assert tuple(spec) == ('fsdp', 'tensor', None)
  # Optimizer states match by suffix; rank mismatch falls back to replication.
  assert tuple(sharding.spec_for('0/mu/x/attn/q', (16, 2, 8), rules, mesh))[0] == 'fsdp'
  assert tuple(sharding.spec_for('x/attn/q', (16,), rules, mesh)) == ()


def test_lr_scale_multiplies_the_step_of_matching_params():
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dict(lr=1e-3, warmup=0, num_steps=10, min_lr_ratio=1.0,
                                       lr_scale=[(r'.*_gate', 10.0)], freeze=['enc/.*']))
  params = {'xattn': {'attn_gate': jnp.zeros(()), 'w': jnp.ones((2, 2))},
            'enc': {'w': jnp.ones((2, 2))}}
  tx = optim.make(cfg, params)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  # Adam's first step moves every trainable parameter by lr (x10 for the gate).
  np.testing.assert_allclose(updates['xattn']['attn_gate'], -1e-2, rtol=1e-3)
  np.testing.assert_allclose(updates['xattn']['w'], -1e-3, rtol=1e-3)
  np.testing.assert_array_equal(updates['enc']['w'], 0.0)


def test_encoder_lr_factor_of_the_stage2_config_reaches_encoder_params_only():
  from configs import movielens_userllm  # pylint: disable=g-import-not-at-top
  cfg = movielens_userllm.get_config('enc_lr=0.1').train
  cfg.warmup, cfg.min_lr_ratio = 0, 1.0  # The first step at the peak lr.
  params = {'user_encoder': {'layer_0': {'w': jnp.ones((2, 2))}},
            'item_projection': {'kernel': jnp.ones((2, 2))},
            'xattn_0': {'attn_gate': jnp.zeros(())}, 'decoder': {'w': jnp.ones((2, 2))}}
  tx = optim.make(cfg, params, freeze=[r'decoder/.*'])
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  lr = cfg.lr
  np.testing.assert_allclose(updates['user_encoder']['layer_0']['w'], -0.1 * lr, rtol=1e-3)
  np.testing.assert_allclose(updates['item_projection']['kernel'], -lr, rtol=1e-3)
  np.testing.assert_allclose(updates['xattn_0']['attn_gate'], -10 * lr, rtol=1e-3)
  np.testing.assert_array_equal(updates['decoder']['w'], 0.0)


def test_seen_items_marks_past_window_items_only():
  items = jnp.array([[0, 5, 7, 1, 5, 9]])  # pad, 5, 7, OOV, 5 again, 9.
  mask = jnp.array([[False, True, True, True, True, True]])
  seen = ue.seen_items(items, mask, k=3, vocab=12)
  assert seen.shape == (1, 3, 12)
  # Positions 3, 4, 5: the items at or before each; never pad (0) or OOV (1).
  assert [set(np.flatnonzero(seen[0, j])) for j in range(3)] == [{5, 7}, {5, 7}, {5, 7, 9}]


def test_seen_item_bias_shifts_seen_logits_only():
  model = ue.UserEncoderLM(_encoder(), tie_item_head=True, seen_item_bias=True)
  feats, mask = _feats(), jnp.ones((2, 6), bool)
  params = model.init(jax.random.key(0), feats, mask)['params']
  assert params['seen_item_bias'].shape == ()
  _, base = model.apply({'params': params}, feats, mask, last_k=1)
  shifted = dict(params, seen_item_bias=jnp.float32(-5.0))
  _, logits = model.apply({'params': shifted}, feats, mask, last_k=1)
  diff = np.asarray(logits['item'] - base['item'])[:, 0]
  for b in range(2):
    past = set(np.asarray(feats['item'][b]).tolist())
    np.testing.assert_allclose(diff[b, sorted(past)], -5.0, atol=1e-5)
    assert np.abs(np.delete(diff[b], sorted(past))).max() < 1e-5
  with pytest.raises(ValueError, match='causal'):
    ue.UserEncoderLM(_encoder(causal=False), seen_item_bias=True).init(
        jax.random.key(0), feats, mask)


def test_bert4rec_seen_item_bias_shifts_the_items_it_reads():
  enc = ue.UserEncoder({'item': 31}, {'item': 8}, d_model=16, num_heads=2, mlp_dim=32,
                       max_len=8, causal=False)
  model = baselines.Bert4Rec(enc, seen_item_bias=True)
  items = jnp.array([[0, 4, 9, 12, 20, 7]])  # pad, then 5 real events.
  mask = items > 0
  masked = jnp.array([[False, False, True, False, False, True]])  # 9 and 7 hidden.
  pos = jnp.array([[2, 5]])
  params = model.init(jax.random.key(0), {'item': items}, mask, masked, pos)['params']
  base = model.apply({'params': params}, {'item': items}, mask, masked, pos)
  shifted = model.apply({'params': dict(params, seen_item_bias=jnp.float32(-3.0))},
                        {'item': items}, mask, masked, pos)
  diff = np.asarray(shifted - base)
  # Both scored positions: the unmasked real items 4, 12, 20 (before and after), only.
  for k in range(2):
    assert set(np.flatnonzero(np.abs(diff[0, k]) > 1e-6)) == {4, 12, 20}
    np.testing.assert_allclose(diff[0, k, [4, 12, 20]], -3.0, atol=1e-5)


def test_next_event_loss_matches_log_softmax():
  rng = np.random.default_rng(0)
  logits = {'item': jnp.asarray(rng.normal(size=(2, 3, 7)) * 5, jnp.float32)}
  tgt = {'item': jnp.asarray(rng.integers(1, 7, (2, 3)), jnp.int32)}
  w = jnp.asarray([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
  loss, _ = ue.next_event_loss(logits, tgt, w)
  ce = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits['item'])),
                           np.asarray(tgt['item'])[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, (ce * np.asarray(w)).sum() / 4.0, rtol=1e-5)


def test_item_dropout_hides_input_items_in_training_only():
  model = ue.UserEncoderLM(_encoder(), tie_item_head=True, seen_item_bias=True, item_dropout=0.5)
  feats, mask = _feats(), jnp.ones((2, 6), bool)
  params = model.init(jax.random.key(0), feats, mask)
  h, _ = model.apply(params, feats, mask)
  h2, _ = model.apply(params, feats, mask)
  np.testing.assert_array_equal(h, h2)  # Evaluation reads every item.
  plain = ue.UserEncoderLM(_encoder(), tie_item_head=True, seen_item_bias=True)
  rngs = {'dropout': jax.random.key(3)}
  # The encoder's own dropout is 0 here: any difference is the item dropout.
  ht, _ = model.apply(params, feats, mask, train=True, rngs=rngs)
  hp, _ = plain.apply(params, feats, mask, train=True, rngs=rngs)
  assert not np.allclose(ht, hp)


def test_future_targets_add_their_weighted_loss(tiny_config):
  """config.model.future_targets = 3 adds future_weight x the 2..3-ahead loss."""
  from user_llm import experiment  # pylint: disable=g-import-not-at-top
  tiny_config.model.future_targets = 3
  exp = experiment.build(tiny_config, None)
  params = exp.init_params(jax.random.key(0))
  batch = next(exp.train_dataset(0))
  loss, m = exp.loss_fn(params, batch, jax.random.key(1))
  tiny_config.model.future_targets = 1
  base, m1 = experiment.build(tiny_config, None).loss_fn(params, batch, jax.random.key(1))
  assert 'loss_future_item' not in m1 and float(m['loss_future_item']) > 0
  np.testing.assert_allclose(loss, base + tiny_config.model.future_weight * m['loss_future_item'],
                             rtol=1e-5)


def test_time_ids_buckets_gaps_and_years():
  day, year = 86_400, ue._SECONDS_PER_YEAR
  t0 = (2000 - 1970) * year + 10 * day  # Inside calendar year 2000.
  ts = jnp.asarray([[0, 0, t0, t0, t0 + 7, t0 + 3 * day]], jnp.int32)
  mask = jnp.asarray([[False, False, True, True, True, True]])
  ids = ue.time_ids(ts, mask, ('gap', 'year'), origin_year=1995)
  # pad 0; the window's first event 1 (its predecessor is outside); then
  # 2 + floor(log2(1 + gap)): 0 s -> 2, 7 s -> 5, ~3 days -> 2 + 17.
  np.testing.assert_array_equal(ids['gap'], [[0, 0, 1, 2, 5, 2 + 17]])
  np.testing.assert_array_equal(ids['year'], [[0, 0, 7, 7, 7, 7]])  # 2 + 2000 - 1995.
  far = ue.time_ids(jnp.asarray([[1, 2 ** 31 - 1]], jnp.int32), jnp.ones((1, 2), bool),
                    ('year',), origin_year=1995)['year']
  np.testing.assert_array_equal(far, [[2, ue.TIME_BUCKETS - 1]])  # Clipped both ways.


def test_time_features_are_embedded_causally():
  dims = dict(DIMS, gap=4, year=4)
  model = ue.UserEncoder(VOCAB, dims, d_model=16, num_layers=1, num_heads=2, mlp_dim=32,
                         max_len=8, time_features=('gap', 'year'))
  feats, mask = _feats(), jnp.ones((2, 6), bool)
  feats['timestamp'] = jnp.cumsum(jnp.full((2, 6), 1000, jnp.int32), axis=1) + 10 ** 9
  params = model.init(jax.random.key(0), feats, mask)
  assert params['params']['embed_gap']['embedding'].shape == (ue.TIME_BUCKETS, 4)
  assert params['params']['embed_year']['embedding'].shape == (ue.TIME_BUCKETS, 4)
  later = dict(feats, timestamp=feats['timestamp'].at[:, 4:].add(10 ** 6))
  out, out2 = model.apply(params, feats, mask), model.apply(params, later, mask)
  np.testing.assert_allclose(out[:, :4], out2[:, :4], atol=1e-6)
  assert not np.allclose(out[:, 4], out2[:, 4])  # Event 4 reads its own (new) gap.
  with pytest.raises(ValueError, match='early fusion'):
    ue.UserEncoder(VOCAB, dims, d_model=16, max_len=8, fusion='late',
                   time_features=('gap',)).init(jax.random.key(0), feats, mask)


def test_item_side_tables_and_head():
  names = ['<pad>', '<oov>', 'Toy Story (1995)', 'Metropolis (1927) ', 'No Year', 'Old (1900)']
  genres = [(), (), (2, 3), (4,), (2,), ()]
  t = pretrain.item_side_tables(names, genres, ('genres', 'year'))
  np.testing.assert_array_equal(t['genres'], [[0, 0], [0, 0], [2, 3], [4, 0], [2, 0], [0, 0]])
  np.testing.assert_array_equal(t['year'], [0, 0, 2 + 75, 2 + 7, 1, 2])
  vocab = {'item': 6, 'genre': 6, 'rating': 5}
  enc = ue.UserEncoder(vocab, DIMS, d_model=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=8)
  lm = ue.UserEncoderLM(enc, tie_item_head=True, item_side=t)
  feats = {f: jnp.full((1, 3), 2, jnp.int32) for f in vocab}
  params = lm.init(jax.random.key(0), feats, jnp.ones((1, 3), bool))['params']
  assert params['item_side_genres']['embedding'].shape == (6, DIMS['item'])
  assert params['item_side_year']['embedding'].shape == (ue.YEAR_BUCKETS, DIMS['item'])
  # Items 2 and 4 share genre 2 only: moving genre 3's embedding moves item 2's logit alone.
  h, logits = lm.apply({'params': params}, feats, jnp.ones((1, 3), bool))
  bumped = jax.tree.map(lambda x: x, params)
  bumped['item_side_genres']['embedding'] = params['item_side_genres']['embedding'].at[3].add(1.0)
  _, logits2 = lm.apply({'params': bumped}, feats, jnp.ones((1, 3), bool))
  moved = np.abs(np.asarray(logits2['item'] - logits['item']))[0, -1] > 1e-6
  np.testing.assert_array_equal(moved, [False, False, True, False, False, False])
  with pytest.raises(ValueError, match='tied item head'):
    ue.UserEncoderLM(enc, item_side=t).init(jax.random.key(0), feats, jnp.ones((1, 3), bool))
