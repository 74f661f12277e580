"""Stage 1 experiment: user-encoder pretraining on next-event prediction, and baselines.

`config.model.name` picks the model trained in the same harness:
- 'ar': the User-LLM encoder (`UserEncoderLM`, causal, early or late fusion), one
  softmax head per feature, cross-entropy summed over features, every position t
  predicting event t+1;
- 'dual': Dual Encoder, in-batch softmax over the batch's target items;
- 'bert4rec': bidirectional encoder over item ids with [MASK]ed positions;
- 'popularity': one logit per item (maximum-likelihood unigram over train targets).

Evaluation: `user_llm/evaluators/catalogue.py` ranks the whole item catalogue for
each held-out target (Recall@K, NDCG@K; 'all' and 'unseen' rankings) with 95%
bootstrap bounds over users (`recall@10_lo`, `_hi`); `eval_examples()` returns the
per-target values behind them (user, target index, the user's number of events, one
value per metric) for paired comparisons and protocol subsets.
"""

from collections.abc import Mapping, Sequence
import functools
import re
from typing import Any

import data_pipelines
import grain
import jax
import jax.numpy as jnp
import numpy as np

from user_llm import experiment as experiment_lib
from user_llm import metrics as metrics_lib
from user_llm.evaluators import catalogue
from user_llm.models import baselines
from user_llm.models import gemma as gemma_lib
from user_llm.models import user_encoder as ue

NUM_SPECIAL = data_pipelines.NUM_RESERVED  # Ids 0 (pad) and 1 (OOV) of every vocabulary.


# ---------------------------------------------------------------- synthetic data
def _synthetic_example(idx: int, history_len: int,
                       vocab: Mapping[str, int]) -> dict[str, np.ndarray]:
  """A learnable toy window (history_len events + the target): items walk with a
  user-specific stride, plus noise."""
  rng = np.random.default_rng(idx)
  n = vocab['item'] - NUM_SPECIAL
  window_len = history_len + 1
  start, stride = rng.integers(n), 1 + idx % 3
  item = (start + stride * np.arange(window_len)) % n
  noise = rng.random(window_len) < 0.1
  item = np.where(noise, rng.integers(n, size=window_len), item) + NUM_SPECIAL
  mask = np.ones(window_len, bool)
  if idx % 5 == 0:  # Some left-padded windows exercise the masks.
    mask[:history_len // 4] = False
  feats = {'item': item,
           'genre': item % (vocab['genre'] - NUM_SPECIAL) + NUM_SPECIAL,
           'rating': item % (vocab['rating'] - NUM_SPECIAL) + NUM_SPECIAL}
  out = {f: np.where(mask, feats[f], 0).astype(np.int32) for f in vocab}
  seen = np.zeros(vocab['item'], bool)
  seen[out['item'][:-1]] = True
  out.update(timestamp=np.arange(window_len, dtype=np.int32), mask=mask,
             user=np.int32(idx), target_index=np.int32(history_len),
             num_events=np.int32(window_len), seen=seen, example_mask=np.bool_(True))
  return out


def synthetic_dataset(data_cfg, split: str, batch_size: int, seed: int,
                      num_epochs: int | None, process_index: int = 0,
                      process_count: int = 1) -> grain.IterDataset:
  """Grain pipeline of synthetic stage-1 batches in the contract format; `batch_size` is
  the global batch, of which this process gets its rows (`data_pipelines.process_rows`)."""
  n = data_cfg.synthetic_examples if split == 'train' else data_cfg.synthetic_eval_examples
  offset = 0 if split == 'train' else 10_000_000  # Disjoint example seeds per split.
  vocab = dict(data_cfg.synthetic_vocab)
  ds = grain.MapDataset.range(n)
  if split == 'train':
    ds = ds.shuffle(seed=seed)
  ds = data_pipelines.process_rows(ds.repeat(num_epochs), batch_size, process_index,
                                   process_count)
  ds = ds.map(lambda i: _synthetic_example(int(i) + offset, data_cfg.history_len, vocab))
  return ds.batch(batch_size // process_count,
                  drop_remainder=split == 'train').to_iter_dataset()


# ------------------------------------------------------------------ experiment
class PretrainExperiment(experiment_lib.Experiment):
  """Stage 1 (see module docstring)."""

  def setup(self):
    """Prepares the data (or the synthetic vocabularies) and builds the model."""
    config = self.config
    self.data_cfg = config.data
    self.prepared = None
    if config.data.name == 'synthetic':
      self.vocab_sizes = dict(config.data.synthetic_vocab)
    else:
      self.prepared = data_pipelines.prepare(config.data)
      self.vocab_sizes = {f: self.prepared.vocabs[f].size for f in config.data.features}
    self.features = tuple(sorted(self.vocab_sizes))
    self.num_items = self.vocab_sizes['item']
    self.model_name = config.model.name
    time = tuple(config.model.get('time_features', ()))
    if time and config.model.name != 'ar':
      raise ValueError(f'config.model.time_features={time} needs model=ar, not '
                       f'{config.model.name!r}.')
    self.input_names = ue.input_names(self.features, time)
    self.model = self._build_model(config.model, config.data.history_len)
    self.evaluator = catalogue.CatalogueRanking(config.eval, self._scores, self.dataset,
                                                self.mesh)
    self._eval_examples: dict[str, list] | None = None
    return self

  # -- model
  def _build_model(self, mc, history_len):
    dtype = jnp.dtype(mc.get('dtype', 'float32'))
    if self.model_name == 'ar':
      # AR reads the window's first history_len events, each predicting the next one.
      return ue.UserEncoderLM(ue.encoder_from_config(mc, self.vocab_sizes, max_len=history_len),
                              head_features=mc.get('head_features') or None,
                              tie_item_head=mc.get('tie_item_head', False),
                              seen_item_bias=mc.get('seen_item_bias', False),
                              item_dropout=mc.get('item_dropout', 0.0),
                              item_side=self._item_side(mc.get('item_side', ())))
    embed_dims = {f: mc.embed_dims[f] for f in self.features}
    if self.model_name == 'bert4rec':
      # Items only (as in Bert4Rec): other features of the [MASK]ed target would leak it.
      # It reads the whole window (history + the [MASK]ed target): window_len positions.
      window_len = history_len + 1
      enc = ue.encoder_from_config(mc, {'item': self.num_items + 1}, max_len=window_len,
                                   causal=False)
      return baselines.Bert4Rec(enc, seen_item_bias=mc.get('seen_item_bias', False))
    if self.model_name == 'dual':
      return baselines.DualEncoder(self.vocab_sizes, embed_dims, mc.d_model, mc.mlp_dim, dtype)
    if self.model_name == 'popularity':
      return baselines.Popularity(self.num_items)
    raise ValueError(f'Unknown config.model.name {self.model_name!r}')

  def _item_side(self, kinds):
    """`UserEncoderLM.item_side` from the catalogue (config.model.item_side), or None."""
    if not kinds:
      return None
    if self.prepared is None:
      raise ValueError('config.model.item_side needs a real dataset (its catalogue), not '
                       'synthetic data.')
    cat = self.prepared.catalogue
    return item_side_tables(cat.names, cat.genre_ids, tuple(kinds))

  def _dummy(self, b: int = 1, u: int = 2):
    return ({f: jnp.full((b, u), NUM_SPECIAL, jnp.int32) for f in self.input_names},
            jnp.ones((b, u), bool))

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
  def inputs(self, batch):
    """The batch arrays the model reads (`input_names`)."""
    return {f: batch[f] for f in self.input_names}

  def loss_fn(self, params, batch, rng):
    feats = self.inputs(batch)
    mask = batch['mask'] & batch['example_mask'][:, None]
    hist = {f: x[:, :-1] for f, x in feats.items()}
    tgt = {f: x[:, 1:] for f, x in feats.items()}
    w = (mask[:, :-1] & mask[:, 1:]).astype(jnp.float32)
    if self.model_name == 'ar':
      k = self.config.model.loss_last_k or w.shape[1]
      _, logits = self.model.apply({'params': params}, hist, mask[:, :-1], train=True,
                                   last_k=k, rngs={'dropout': rng})
      loss, metrics = ue.next_event_loss(logits, {f: t[:, -k:] for f, t in tgt.items()},
                                         w[:, -k:])
      horizon = self.config.model.get('future_targets', 1)
      if horizon > 1:
        aux = ue.future_item_loss(logits['item'], feats['item'], mask, k, horizon)
        loss = loss + self.config.model.get('future_weight', 0.5) * aux
        metrics['loss_future_item'] = aux
      return loss, metrics
    if self.model_name == 'popularity':
      # Same as next_event_loss on broadcast logits, without the [B, U, V] tensor.
      logits = self.model.apply({'params': params}, ())
      w = w * (tgt['item'] > 0)
      ce = jax.nn.logsumexp(logits) - logits[tgt['item']]
      loss = metrics_lib.weighted_mean(ce, w)
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
    logits = jnp.where(same | (wf[None, :] == 0), gemma_lib.NEG_INF, logits)
    ce = -jnp.diagonal(jax.nn.log_softmax(logits, axis=-1))
    loss = metrics_lib.weighted_mean(ce, wf)
    acc = metrics_lib.weighted_mean(logits.argmax(-1) == jnp.arange(ids.shape[0]), wf)
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
  def dataset(self, split, batch_size, seed, num_epochs, **overrides):
    """This process's slice of global batches of `split`."""
    if self.prepared is None:
      return synthetic_dataset(self.data_cfg, split, batch_size, seed, num_epochs,
                               jax.process_index(), jax.process_count())
    return data_pipelines.make_dataset(
        self.prepared, split, 'next_event', batch_size=batch_size, seed=seed,
        shuffle=split == 'train', num_epochs=num_epochs,
        process_index=jax.process_index(), process_count=jax.process_count(), **overrides)

  def train_dataset(self, seed):
    return iter(self.dataset('train', self.config.train.batch_size, seed, None))

  # -- eval
  def _scores(self, params, batch):
    """Returns (item scores [B, V], feature -> logits [B, V_f] for the target event)."""
    feats = self.inputs(batch)
    mask = batch['mask']
    hist = {f: x[:, :-1] for f, x in feats.items()}
    if self.model_name == 'ar':
      _, logits = self.model.apply({'params': params}, hist, mask[:, :-1], last_k=1)
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

  def evaluate(self, params, step):
    metrics, examples = self.evaluator.run(params)
    self._eval_examples = {k: v.tolist() for k, v in examples.items()}
    return metrics

  def eval_examples(self) -> dict[str, list] | None:
    return self._eval_examples


def item_side_tables(names: Sequence[str], genre_ids: Sequence[Sequence[int]],
                     kinds: Sequence[str]) -> dict[str, Any]:
  """The `ue.UserEncoderLM.item_side` tables of a catalogue (ids = item vocabulary ids).

  Args:
    names: item title per id ('Toy Story (1995)': MovieLens titles end in the release
      year; a title without one gets bucket 1, unknown).
    genre_ids: the genre ids of each item (all of them, not only the first).
    kinds: the tables to build, 'genres' and/or 'year'.
  """
  out = {}
  if 'genres' in kinds:
    width = max(1, max((len(g) for g in genre_ids), default=1))
    table = np.zeros((len(genre_ids), width), np.int32)
    for i, g in enumerate(genre_ids):
      table[i, :len(g)] = g
    out['genres'] = table
  if 'year' in kinds:
    year = np.ones(len(names), np.int32)
    for i, name in enumerate(names):
      m = re.search(r'\((\d{4})\)\s*$', name or '')
      if m:
        year[i] = 2 + min(max(int(m.group(1)) - 1920, 0), ue.YEAR_BUCKETS - 3)
    year[:2] = 0  # pad, OOV
    out['year'] = year
  return out


def _l2(x):
  # rsqrt(|x|^2 + eps) keeps the gradient finite at x = 0 (padded positions).
  return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)
