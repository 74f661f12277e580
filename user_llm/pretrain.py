"""Stage 1 experiment: user-encoder pretraining on next-event prediction, and baselines.

`config.model.name` picks the model trained in the same harness:
- 'ar': the User-LLM encoder (`UserEncoderLM`, causal, early or late fusion), one
  softmax head per feature, cross-entropy summed over features, every position t
  predicting event t+1;
- 'dual': Dual Encoder, in-batch softmax over the batch's target items;
- 'bert4rec': bidirectional encoder over item ids with [MASK]ed positions;
- 'popularity': one logit per item (maximum-likelihood unigram over train targets).

Evaluation (`evaluate`): on `config.eval.split` (default 'test': one window per
held-out target), score the whole item catalogue for the target event (position U,
after up to U history events) and report Recall@K, NDCG@K for each ranking of
`config.eval.rankings`: 'all' (every item but pad/OOV; keys `recall@10`, ...) and
'unseen' (also without every item of the user's past, not only the window; keys
`unseen/recall@10`, ...). A target that maps to OOV (never seen in training) counts
as a miss. The AR model also reports the next-event accuracy of every feature.
Headline metrics carry 95% bootstrap bounds over users (`recall@10_lo`, `_hi`), and
`eval_examples()` returns the per-target values behind them (user, target index,
the user's number of events, one value per metric) for paired comparisons and
protocol subsets.
"""

from collections.abc import Mapping
import functools

import grain
import jax
import jax.numpy as jnp
import numpy as np

from user_llm import metrics as metrics_lib
from user_llm import sharding
from user_llm import stats
from user_llm import train
from user_llm.models import baselines
from user_llm.models import user_encoder as ue

NUM_SPECIAL = 2  # Ids 0 (pad) and 1 (OOV) of every vocabulary.


# ---------------------------------------------------------------- synthetic data
def _synthetic_example(idx: int, seq_len: int, vocab: Mapping[str, int]) -> dict[str, np.ndarray]:
  """A learnable toy window: items walk with a user-specific stride, plus noise."""
  rng = np.random.default_rng(idx)
  n = vocab['item'] - NUM_SPECIAL
  start, stride = rng.integers(n), 1 + idx % 3
  item = (start + stride * np.arange(seq_len + 1)) % n
  noise = rng.random(seq_len + 1) < 0.1
  item = np.where(noise, rng.integers(n, size=seq_len + 1), item) + NUM_SPECIAL
  mask = np.ones(seq_len + 1, bool)
  if idx % 5 == 0:  # Some left-padded windows exercise the masks.
    mask[:seq_len // 4] = False
  feats = {'item': item,
           'genre': item % (vocab['genre'] - NUM_SPECIAL) + NUM_SPECIAL,
           'rating': item % (vocab['rating'] - NUM_SPECIAL) + NUM_SPECIAL}
  out = {f: np.where(mask, feats[f], 0).astype(np.int32) for f in vocab}
  seen = np.zeros(vocab['item'], bool)
  seen[out['item'][:-1]] = True
  out.update(timestamp=np.arange(seq_len + 1, dtype=np.int32), mask=mask,
             user=np.int32(idx), target_index=np.int32(seq_len),
             num_events=np.int32(seq_len + 1), seen=seen, example_mask=np.bool_(True))
  return out


def synthetic_dataset(data_cfg, split: str, batch_size: int, seed: int,
                      num_epochs: int | None) -> grain.IterDataset:
  """Grain pipeline of synthetic stage-1 batches in the contract format."""
  n = data_cfg.synthetic_examples if split == 'train' else data_cfg.synthetic_eval_examples
  offset = 0 if split == 'train' else 10_000_000  # Disjoint example seeds per split.
  vocab = dict(data_cfg.synthetic_vocab)
  ds = grain.MapDataset.range(n)
  if split == 'train':
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs).map(
      lambda i: _synthetic_example(int(i) + offset, data_cfg.seq_len, vocab))
  return ds.batch(batch_size, drop_remainder=split == 'train').to_iter_dataset()


# ------------------------------------------------------------------ experiment
class PretrainExperiment(train.Experiment):
  """Stage 1 (see module docstring)."""

  def __init__(self, config, mesh):
    super().__init__(config, mesh)
    self.data_cfg = config.data
    self.prepared = None
    if config.data.name == 'synthetic':
      self.vocab_sizes = dict(config.data.synthetic_vocab)
    else:
      import data_pipelines  # pylint: disable=g-import-not-at-top
      self.prepared = data_pipelines.prepare(config.data)
      self.vocab_sizes = {f: self.prepared.vocabs[f].size for f in config.data.features}
    self.features = tuple(sorted(self.vocab_sizes))
    self.num_items = self.vocab_sizes['item']
    self.model_name = config.model.name
    self.model = self._build_model(config.model, config.data.seq_len)
    self._eval_step = jax.jit(self._eval_per_example)
    self._eval_examples: dict[str, list] | None = None

  # -- model
  def _build_model(self, mc, seq_len):
    dtype = jnp.dtype(mc.get('dtype', 'float32'))
    kw = dict(d_model=mc.d_model, num_layers=mc.num_layers, num_heads=mc.num_heads,
              mlp_dim=mc.mlp_dim, fusion=mc.fusion, dropout=mc.dropout, dtype=dtype)
    embed_dims = {f: mc.embed_dims[f] for f in self.features}
    if self.model_name == 'ar':
      return ue.UserEncoderLM(ue.UserEncoder(self.vocab_sizes, embed_dims, max_len=seq_len,
                                             causal=True, **kw),
                              head_features=mc.get('head_features') or None,
                              tie_item_head=mc.get('tie_item_head', False))
    if self.model_name == 'bert4rec':
      # Items only (as in Bert4Rec): other features of the [MASK]ed target would leak it.
      enc = ue.UserEncoder({'item': self.num_items + 1}, {'item': embed_dims['item']},
                           max_len=seq_len + 1, causal=False, **kw)
      return baselines.Bert4Rec(enc)
    if self.model_name == 'dual':
      return baselines.DualEncoder(self.vocab_sizes, embed_dims, mc.d_model, mc.mlp_dim, dtype)
    if self.model_name == 'popularity':
      return baselines.Popularity(self.num_items)
    raise ValueError(f'Unknown config.model.name {self.model_name!r}')

  def _dummy(self, b: int = 1, u: int = 2):
    return {f: jnp.full((b, u), NUM_SPECIAL, jnp.int32) for f in self.features}, jnp.ones((b, u), bool)

  def init_params(self, rng):
    feats, mask = self._dummy()
    if self.model_name == 'ar':
      v = self.model.init(rng, feats, mask)
    elif self.model_name == 'bert4rec':
      v = self.model.init(rng, {'item': feats['item']}, mask, mask, jnp.zeros((1, 1), jnp.int32))
    elif self.model_name == 'dual':
      v = self.model.init(rng, feats, mask)
    else:
      v = self.model.init(rng, (1,))
    return v['params']

  # -- loss
  def loss_fn(self, params, batch, rng):
    feats = {f: batch[f] for f in self.features}
    mask = batch['mask'] & batch['example_mask'][:, None]
    hist = {f: x[:, :-1] for f, x in feats.items()}
    tgt = {f: x[:, 1:] for f, x in feats.items()}
    w = (mask[:, :-1] & mask[:, 1:]).astype(jnp.float32)
    if self.model_name == 'ar':
      k = self.config.model.loss_last_k or w.shape[1]
      _, logits = self.model.apply({'params': params}, hist, mask[:, :-1], train=True,
                                   last_k=k, rngs={'dropout': rng})
      return ue.next_event_loss(logits, {f: t[:, -k:] for f, t in tgt.items()}, w[:, -k:])
    if self.model_name == 'popularity':
      # Same as next_event_loss on broadcast logits, without the [B, U, V] tensor.
      logits = self.model.apply({'params': params}, ())
      w = w * (tgt['item'] > 0)
      ce = jax.nn.logsumexp(logits) - logits[tgt['item']]
      loss = (ce * w).sum() / jnp.maximum(w.sum(), 1.0)
      return loss, {'loss_item': loss}
    if self.model_name == 'dual':
      k = self.config.model.loss_last_k or w.shape[1]
      return self._dual_loss(params, hist, mask[:, :-1], tgt['item'], w, k)
    return self._bert4rec_loss(params, feats['item'], mask, rng)

  def _dual_loss(self, params, hist, hist_mask, tgt_item, w, k):
    """In-batch softmax: each (user, position) of the last k vs all those targets."""
    temp = self.config.model.temperature
    user = self.model.apply({'params': params}, hist, hist_mask, method='user')[:, -k:]
    tgt_item, w = tgt_item[:, -k:], w[:, -k:]
    items = self.model.apply({'params': params}, tgt_item, method='items')
    d = user.shape[-1]
    u = _l2(user.reshape(-1, d))
    v = _l2(items.reshape(-1, d))
    ids, wf = tgt_item.reshape(-1), w.reshape(-1) * (tgt_item.reshape(-1) > 0)
    logits = jnp.einsum('BD,CD->BC', u, v).astype(jnp.float32) / temp
    # Other copies of the positive item, and padding columns, are not negatives.
    same = (ids[:, None] == ids[None, :]) & ~jnp.eye(ids.shape[0], dtype=bool)
    logits = jnp.where(same | (wf[None, :] == 0), -1e9, logits)
    ce = -jnp.diagonal(jax.nn.log_softmax(logits, axis=-1))
    loss = (ce * wf).sum() / jnp.maximum(wf.sum(), 1.0)
    acc = ((logits.argmax(-1) == jnp.arange(ids.shape[0])) * wf).sum() / jnp.maximum(wf.sum(), 1.0)
    return loss, {'loss_item': loss, 'inbatch_acc': acc}

  def _bert4rec_loss(self, params, item, mask, rng):
    """Hides K = round(mask_prob * (U+1)) random real events per row and predicts them."""
    mc = self.config.model
    r1, r2, r3 = jax.random.split(rng, 3)
    b, u = item.shape
    k = max(1, round(mc.mask_prob * u))
    # Random real positions (padding sorts last); some rows hide only the last event,
    # the test-time pattern.
    noise = jax.random.uniform(r1, (b, u)) + mask
    last_only = jax.random.uniform(r2, (b, 1)) < mc.last_mask_prob
    noise = jnp.where(last_only & (jnp.arange(u) == u - 1), 3.0, noise)
    _, pos = jax.lax.top_k(noise, k)
    w = jnp.take_along_axis(mask, pos, axis=1)
    w = jnp.where(last_only, pos == u - 1, w)
    masked = jnp.zeros((b, u), bool).at[jnp.arange(b)[:, None], pos].set(w)
    logits = self.model.apply({'params': params}, {'item': item}, mask, masked, pos,
                              train=True, rngs={'dropout': r3})
    tgt = jnp.take_along_axis(item, pos, axis=1)
    return ue.next_event_loss({'item': logits}, {'item': tgt}, w.astype(jnp.float32))

  # -- data
  def _dataset(self, split, batch_size, seed, num_epochs, **overrides):
    """This process's slice of global batches of `split`."""
    if self.prepared is None:
      return synthetic_dataset(self.data_cfg, split, batch_size // jax.process_count(), seed,
                               num_epochs)
    import data_pipelines  # pylint: disable=g-import-not-at-top
    return data_pipelines.make_dataset(
        self.prepared, split, 'next_event', batch_size=batch_size, seed=seed,
        shuffle=split == 'train', num_epochs=num_epochs,
        process_index=jax.process_index(), process_count=jax.process_count(), **overrides)

  def train_dataset(self, seed):
    return iter(self._dataset('train', self.config.train.batch_size, seed, None))

  # -- eval
  def _scores(self, params, batch):
    """Returns (item scores [B, V], feature -> logits [B, V_f] for the target event)."""
    feats = {f: batch[f] for f in self.features}
    mask = batch['mask']
    hist = {f: x[:, :-1] for f, x in feats.items()}
    if self.model_name == 'ar':
      _, logits = self.model.apply({'params': params}, hist, mask[:, :-1])
      last = {f: l[:, -1] for f, l in logits.items()}
      return last['item'], last
    if self.model_name == 'popularity':
      return self.model.apply({'params': params}, mask.shape[:1]), {}
    if self.model_name == 'dual':
      user = self.model.apply({'params': params}, hist, mask[:, :-1], method='user')[:, -1]
      cat = self.model.apply({'params': params}, jnp.arange(self.num_items), method='items')
      return jnp.einsum('BD,VD->BV', _l2(user), _l2(cat)), {}
    masked = jnp.zeros(mask.shape, bool).at[:, -1].set(True)
    last = jnp.full((mask.shape[0], 1), mask.shape[1] - 1, jnp.int32)
    logits = self.model.apply({'params': params}, {'item': feats['item']}, mask, masked, last)
    return logits[:, -1], {}

  def _eval_per_example(self, params, batch):
    """Per-example metrics [B] of every ranking, and per-feature accuracies."""
    ec = self.config.eval
    scores, last = self._scores(params, batch)
    target = batch['item'][:, -1]
    known = target >= NUM_SPECIAL  # OOV targets cannot be ranked: misses.
    out = {}
    for ranking in ec.rankings:
      if ranking not in ('all', 'unseen'):
        raise ValueError(f'Unknown config.eval.rankings entry {ranking!r}; expected all|unseen.')
      seen = batch['seen'] if ranking == 'unseen' else None
      excl = metrics_lib.exclusion_mask(seen, *scores.shape, NUM_SPECIAL)
      per = metrics_lib.rank_metrics(scores, target, excl, tuple(ec.ks), ec.ndcg_k)
      prefix = '' if ranking == 'all' else 'unseen/'
      out.update({prefix + k: v * known for k, v in per.items()})
    for f, l in last.items():
      out[f'acc_{f}'] = metrics_lib.accuracy(l, batch[f][:, -1])
    return out

  def evaluate(self, params, step):
    ec = self.config.eval
    ds = self._dataset(ec.split, ec.batch_size, 0, 1,
                       seen_items='unseen' in ec.rankings)
    cols: dict[str, list[np.ndarray]] = {}
    for i, batch in enumerate(ds):
      if 0 <= ec.max_batches <= i:
        break
      per = jax.device_get(self._eval_step(params, sharding.shard_batch(batch, self.mesh)))
      valid = batch['example_mask'] & batch['mask'][:, -1] & (batch['item'][:, -1] > 0)
      for k in ('user', 'target_index', 'num_events'):
        cols.setdefault(k, []).append(batch[k][valid])
      for k, v in per.items():
        cols.setdefault(k, []).append(np.asarray(v)[valid])
    if not cols:
      raise ValueError(f'No {ec.split} examples to evaluate.')
    ex = {k: np.concatenate(v) for k, v in cols.items()}
    self._eval_examples = {k: v.tolist() for k, v in ex.items()}
    out = {k: float(v.mean()) for k, v in sorted(ex.items())
           if k not in ('user', 'target_index', 'num_events')}
    for k in ec.ci_metrics:
      if k in ex:
        est = stats.bootstrap(ex[k], ex['user'])
        out[f'{k}_lo'], out[f'{k}_hi'] = est.lo, est.hi
    out['num_examples'] = float(len(ex['user']))
    out['num_users'] = float(len(np.unique(ex['user'])))
    return out

  def eval_examples(self) -> dict[str, list] | None:
    return self._eval_examples


def _l2(x):
  # rsqrt(|x|^2 + eps) keeps the gradient finite at x = 0 (padded positions).
  return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)
