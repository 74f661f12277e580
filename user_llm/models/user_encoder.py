"""User encoder of User-LLM stage 1: feature embeddings, fusion, causal Transformer.

Einsum letters: B batch, U user events (query positions), S key positions (same
events seen as keys), D model width, N heads, H head dim, F MLP width, V vocabulary.

Parameter tree of `UserEncoderLM` (names are an API, stage 2 loads `user_encoder/`):
  user_encoder/embed_{feature}/embedding            [V_f, E_f]
  user_encoder/fuse/kernel, bias                    (early fusion) [sum E_f, D]
  user_encoder/transformer/pos_embedding            [U_max, D]
  user_encoder/transformer/layer_{i}/{attn,mlp,...} (early fusion)
  user_encoder/tower_{feature}/...                  (late fusion: one projection +
                                                     transformer per feature)
  user_encoder/combine/kernel, bias                 (late fusion) [M * D, D]
  heads/{feature}/kernel, bias                      [D, V_f] next-event heads
  item_proj/kernel, bias; item_bias                 (tie_item_head) [D, E_item]; [V_item]
  seen_item_bias                                    (seen_item_bias) [] scalar
  item_side_{genres,year}/embedding                 (item_side) [V_genre | Y, E_item]

Incremental encoding (serving, user_llm/serving/incremental.py): a causal encoder's
output at event t depends on events <= t only, so with a per-layer KV cache
(`init_cache`, `UserEncoder.__call__(..., cache=)`) new events are appended without
re-running the history; the numbers equal a full call on a history whose first event
sits at position 0 (no left padding).
"""

from collections.abc import Mapping, Sequence
from typing import Any

from flax.core import FrozenDict
import flax.linen as nn
import jax
import jax.numpy as jnp

from data_pipelines import OOV_ID
from user_llm import metrics as metrics_lib
from user_llm.models import gemma as gemma_lib

Array = jax.Array


class MultiHeadAttention(nn.Module):
  """Multi-head self-attention with an explicit boolean mask."""

  num_heads: int
  head_dim: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, attn_mask: Array, cache: Mapping[str, Array] | None = None,
               index: Array | None = None):
    """Args: x [B, U, D]; attn_mask bool [B, U, S] (True = may attend). Returns [B, U, D].

    With `cache` ({'k', 'v'} [B, S, N, H]: the keys and values of earlier events) the U
    new keys/values are written at slots `index` int32[B] .. index + U - 1 (slots past S
    are dropped), the queries attend over all S slots, and the call returns
    ([B, U, D], the updated {'k', 'v'}).
    """
    d = x.shape[-1]
    init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    w_q = self.param('q', init, (d, self.num_heads, self.head_dim), self.param_dtype)
    w_k = self.param('k', init, (d, self.num_heads, self.head_dim), self.param_dtype)
    w_v = self.param('v', init, (d, self.num_heads, self.head_dim), self.param_dtype)
    w_o = self.param(
        'out', nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
        (self.num_heads, self.head_dim, d), self.param_dtype)
    x = x.astype(self.dtype)
    q = jnp.einsum('BUD,DNH->BUNH', x, w_q.astype(self.dtype))
    k = jnp.einsum('BSD,DNH->BSNH', x, w_k.astype(self.dtype))
    v = jnp.einsum('BSD,DNH->BSNH', x, w_v.astype(self.dtype))
    if cache is not None:
      k, v = write_slots(cache['k'], k, index), write_slots(cache['v'], v, index)
    logits = jnp.einsum('BUNH,BSNH->BNUS', q, k) / jnp.sqrt(self.head_dim).astype(self.dtype)
    logits = jnp.where(attn_mask[:, None], logits.astype(jnp.float32), gemma_lib.NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum('BNUS,BSNH->BUNH', probs, v)
    out = jnp.einsum('BUNH,NHD->BUD', out, w_o.astype(self.dtype))
    return out if cache is None else (out, {'k': k, 'v': v})


def write_slots(buf: Array, new: Array, index: Array) -> Array:
  """buf [B, S, ...] with new [B, U, ...] written at slots index[b] + u (past S: dropped).

  The one slot write of a cache: the encoder's K/V here, the per-user outputs and
  memory in user_llm/serving/incremental.py.
  """
  b, u = new.shape[:2]
  slots = index[:, None] + jnp.arange(u)[None]
  return buf.at[jnp.arange(b)[:, None], slots].set(new.astype(buf.dtype), mode='drop')


class Mlp(nn.Module):
  """Two-layer GELU MLP."""

  hidden_dim: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    h = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=self.param_dtype, name='wi')(x)
    return nn.Dense(d, dtype=self.dtype, param_dtype=self.param_dtype, name='wo')(nn.gelu(h))


class Block(nn.Module):
  """Transformer block: pre-LayerNorm (default) or post-LayerNorm (SASRec, BERT)."""

  num_heads: int
  head_dim: int
  mlp_dim: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  norm: str = 'pre'  # 'pre': x + f(LN(x)); 'post': LN(x + f(x)).

  @nn.compact
  def __call__(self, x: Array, attn_mask: Array, train: bool,
               cache: Mapping[str, Array] | None = None, index: Array | None = None):
    """x [B, U, D] -> [B, U, D]; with `cache`, also the updated cache (`MultiHeadAttention`)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.norm not in ('pre', 'post'):
      raise ValueError(f'Unknown norm {self.norm!r}, expected pre|post.')
    pre = self.norm == 'pre'
    h = nn.LayerNorm(name='pre_attention_norm', **kw)(x) if pre else x
    attn = MultiHeadAttention(self.num_heads, self.head_dim, name='attn', **kw)
    if cache is None:
      h = attn(h, attn_mask)
    else:
      h, cache = attn(h, attn_mask, cache, index)
    x = x + nn.Dropout(self.dropout)(h, deterministic=not train)
    if not pre:
      x = nn.LayerNorm(name='post_attention_norm', **kw)(x)
    h = nn.LayerNorm(name='pre_mlp_norm', **kw)(x) if pre else x
    h = Mlp(self.mlp_dim, name='mlp', **kw)(h)
    x = x + nn.Dropout(self.dropout)(h, deterministic=not train)
    if not pre:
      x = nn.LayerNorm(name='post_mlp_norm', **kw)(x)
    return x if cache is None else (x, cache)


class Transformer(nn.Module):
  """Stack of blocks with learned positions; causal (autoregressive) or bidirectional.

  norm='pre': blocks normalise their inputs, a final LayerNorm normalises the output.
  norm='post' (SASRec): the embeddings (+ positions) are normalised, each block
  normalises its residual sum, no final LayerNorm.
  """

  num_layers: int
  num_heads: int
  mlp_dim: int
  max_len: int
  causal: bool = True
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  norm: str = 'pre'

  @nn.compact
  def __call__(self, x: Array, mask: Array, train: bool = False,
               cache: Mapping[str, Array] | None = None):
    """Args: x [B, U, D]; mask bool [B, U] (True on real events). Returns [B, U, D].

    With `cache` (`init_cache`; causal only): x holds U *new* events, right-padded (mask
    True on the real ones), that follow the `cache['index']` int32[B] events already
    encoded at positions 0 .. index - 1. They take positions index .. index + U - 1 and
    attend to the cached events and to each other causally. Returns ([B, U, D], the
    cache with them appended): the full call's outputs at those positions, for a
    history whose first event sits at position 0.
    """
    _, u, d = x.shape
    pos = self.param('pos_embedding', nn.initializers.normal(0.02), (self.max_len, d),
                     self.param_dtype)
    blocks = [Block(self.num_heads, d // self.num_heads, self.mlp_dim, self.dropout,
                    self.dtype, self.param_dtype, self.norm, name=f'layer_{i}')
              for i in range(self.num_layers)]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.norm == 'post':
      first_norm, final_norm = nn.LayerNorm(name='embed_norm', **kw), lambda y: y
    else:
      first_norm, final_norm = lambda y: y, nn.LayerNorm(name='final_norm', **kw)
    if cache is not None:
      if not self.causal:
        raise ValueError('A KV cache extends a causal encoder only (causal=False here).')
      index = cache['index']
      slots = index[:, None] + jnp.arange(u)[None]  # [B, U] position of each new event.
      x = first_norm((x + jnp.take(pos, slots, axis=0, mode='clip')).astype(self.dtype))
      attn_mask = jnp.arange(self.max_len)[None, None, :] <= slots[:, :, None]  # [B, U, S]
      new_cache = {'index': index + mask.sum(-1, dtype=index.dtype)}
      for i, block in enumerate(blocks):
        x, new_cache[f'layer_{i}'] = block(x, attn_mask, False, cache[f'layer_{i}'], index)
      return final_norm(x), new_cache
    x = first_norm((x + pos[None, :u]).astype(self.dtype))
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    attn_mask = jnp.broadcast_to(mask[:, None, :], (x.shape[0], u, u))
    if self.causal:
      attn_mask = attn_mask & jnp.tril(jnp.ones((u, u), bool))[None]
    # Every query may see itself, so padded rows stay finite.
    attn_mask = attn_mask | jnp.eye(u, dtype=bool)[None]
    for block in blocks:
      x = block(x, attn_mask, train)
    return final_norm(x)


class UserEncoder(nn.Module):
  """Embeds an event sequence with M categorical features into [B, U, D].

  Early fusion: concatenate each event's feature embeddings, project to D, one
  Transformer. Late fusion: one projection + Transformer per feature, the M outputs
  concatenated per event and projected to D.
  """

  vocab_sizes: Mapping[str, int]  # feature -> vocabulary size (ids 0 pad, 1 OOV).
  embed_dims: Mapping[str, int]  # feature -> embedding width.
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 2
  mlp_dim: int = 256
  max_len: int = 64
  fusion: str = 'early'  # 'early' | 'late'
  causal: bool = True
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  norm: str = 'pre'  # 'pre' | 'post' LayerNorm (`Transformer`).
  # Event-time features read from `features['timestamp']` (int32 seconds), embedded
  # like the categorical ones (`embed_{name}`, width embed_dims[name]); early fusion
  # only. 'gap': log2 seconds since the window's previous event; 'year': calendar year
  # from `time_origin_year` (`time_ids`).
  time_features: tuple[str, ...] = ()
  time_origin_year: int = 1995

  def _transformer(self, name: str) -> Transformer:
    return Transformer(self.num_layers, self.num_heads, self.mlp_dim, self.max_len,
                       self.causal, self.dropout, self.dtype, self.param_dtype, self.norm,
                       name=name)

  @property
  def transformer_names(self) -> tuple[str, ...]:
    """Scopes of the Transformers (one KV cache each)."""
    if self.fusion == 'late':
      return tuple(f'tower_{f}' for f in sorted(self.vocab_sizes))
    return ('transformer',)

  def item_table(self) -> Array:
    """[V_item, E_item]: the item embedding table (what a tied item head scores
    against); the module must be bound, its params initialised."""
    return self.variables['params']['embed_item']['embedding']

  @nn.compact
  def __call__(self, features: Mapping[str, Array], mask: Array, train: bool = False,
               cache: Mapping[str, Mapping[str, Array]] | None = None):
    """Encodes events.

    Args:
      features: feature name -> int32 [B, U] ids; every name of `vocab_sizes`.
      mask: bool [B, U], True on real events.
      train: enables dropout (needs a 'dropout' rng).
      cache: optional, from `init_cache`: the U events are *appended* after the
        events it holds (right-padded, see `Transformer.__call__`); no dropout.

    Returns:
      [B, U, D] one embedding per event (output at t has seen events <= t if causal);
      with `cache`, ([B, U, D], the updated cache).
    """
    new_cache = {}

    def run(name: str, x: Array) -> Array:
      transformer = self._transformer(name)
      if cache is None:
        return transformer(x, mask, train)
      out, new_cache[name] = transformer(x, mask, cache=cache[name])
      return out

    names = sorted(self.vocab_sizes)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    embs, ids = {}, dict(features)
    previous = None
    if self.time_features:
      if self.fusion != 'early':
        raise ValueError(f'time_features need early fusion, got fusion={self.fusion!r}.')
      if cache is not None:  # The first new event's gap is to the last held one.
        held = cache['transformer']
        previous = (held['last_timestamp'], held['index'] > 0)
      ids.update(time_ids(features['timestamp'], mask, self.time_features,
                          self.time_origin_year, previous))
      names = sorted(names + list(self.time_features))
    for f in names:
      size = TIME_BUCKETS if f in self.time_features else self.vocab_sizes[f]
      table = nn.Embed(size, self.embed_dims[f], embedding_init=nn.initializers.normal(0.02),
                       name=f'embed_{f}', **kw)
      embs[f] = table(ids[f])
    if self.fusion == 'early':
      x = jnp.concatenate([embs[f] for f in names], axis=-1)
      x = nn.Dense(self.d_model, name='fuse', **kw)(x)
      h = run('transformer', x)
      if previous is not None:  # Carry the newest timestamp (new events right-padded).
        n = mask.sum(-1)
        last = jnp.take_along_axis(features['timestamp'], jnp.maximum(n - 1, 0)[:, None], 1)
        new_cache['transformer']['last_timestamp'] = jnp.where(n > 0, last[:, 0], previous[0])
    elif self.fusion == 'late':
      outs = []
      for f in names:
        x = nn.Dense(self.d_model, name=f'proj_{f}', **kw)(embs[f])
        outs.append(run(f'tower_{f}', x))
      h = nn.Dense(self.d_model, name='combine', **kw)(jnp.concatenate(outs, axis=-1))
    else:
      raise ValueError(f'Unknown fusion {self.fusion!r}, expected early|late.')
    return h if cache is None else (h, new_cache)


def input_names(features: Sequence[str], time_features: Sequence[str] = ()) -> tuple[str, ...]:
  """The batch arrays an encoder reads: its categorical features, plus 'timestamp'
  (int32 seconds) when it has time features. Stage 1 and stage 2 select inputs here."""
  return tuple(features) + (('timestamp',) if time_features else ())


TIME_BUCKETS = 32  # Ids of each time feature: 0 pad, 1 unknown, 2.. buckets (clipped).
_SECONDS_PER_YEAR = 31_556_952  # Mean Gregorian year.


def time_ids(timestamp: Array, mask: Array, names: Sequence[str], origin_year: int,
             previous: tuple[Array, Array] | None = None) -> dict[str, Array]:
  """Bucketed event-time ids int32 [B, U] in [0, TIME_BUCKETS), one per name.

  Args:
    timestamp: int32 [B, U] seconds since the epoch (0 on padding).
    mask: bool [B, U] real events (a run of them, left- or right-padded).
    names: 'gap' (2 + floor(log2(1 + seconds since the previous real event)); 1 for
      the window's first event, whose predecessor is outside it) and/or 'year'
      (2 + calendar year - origin_year, clipped).
    origin_year: the year of year bucket 2.
    previous: for events appended after held ones (KV-cached call, right-padded):
      (int32 [B] timestamp of the last held event, bool [B] whether there is one),
      the predecessor of position 0.
  """
  out = {}
  for name in names:
    if name == 'gap':
      prev = jnp.pad(timestamp[:, :-1], ((0, 0), (1, 0)))
      has_prev = jnp.pad(mask[:, :-1], ((0, 0), (1, 0)))
      if previous is not None:
        prev, has_prev = prev.at[:, 0].set(previous[0]), has_prev.at[:, 0].set(previous[1])
      # Difference in integers: float32 resolves only ~64 s at 1e9 seconds.
      delta = timestamp - prev
      gap = jnp.floor(jnp.log2(1.0 + jnp.maximum(delta, 0).astype(jnp.float32)))
      gap = gap.astype(jnp.int32)
      b = jnp.where(has_prev, 2 + jnp.minimum(gap, TIME_BUCKETS - 3), 1)
    elif name == 'year':
      year = timestamp // _SECONDS_PER_YEAR + 1970 - origin_year
      b = 2 + jnp.clip(year, 0, TIME_BUCKETS - 3)
    else:
      raise ValueError(f'Unknown time feature {name!r}, expected gap|year.')
    out[name] = jnp.where(mask, b, 0).astype(jnp.int32)
  return out


def init_cache(encoder: UserEncoder, batch: int) -> dict[str, dict[str, Array]]:
  """The empty KV cache of `UserEncoder.__call__(..., cache=)`, for `batch` users.

  Returns:
    {transformer scope: {'index': int32[B] zeros (events held), 'layer_{i}': {'k', 'v':
    [B, max_len, N, H]}}}: one entry per `encoder.transformer_names`; with time
    features also 'last_timestamp' int32[B] in 'transformer'.
  """
  shape = (batch, encoder.max_len, encoder.num_heads, encoder.d_model // encoder.num_heads)
  def one():
    layers = {f'layer_{i}': {'k': jnp.zeros(shape, encoder.dtype),
                             'v': jnp.zeros(shape, encoder.dtype)}
              for i in range(encoder.num_layers)}
    return {'index': jnp.zeros((batch,), jnp.int32), **layers}
  cache = {name: one() for name in encoder.transformer_names}
  if encoder.time_features:  # The newest held event's time (the next one's gap).
    cache['transformer']['last_timestamp'] = jnp.zeros((batch,), jnp.int32)
  return cache


def encoder_from_config(mc, vocab_sizes: Mapping[str, int], max_len: int, causal: bool = True,
                        dropout: float | None = None) -> UserEncoder:
  """A `UserEncoder` from a stage-1 `config.model` (configs/movielens_pretrain.py).

  The one place those fields become module arguments: stage 1 builds its encoder
  here, and stage 2 builds the same one from the stage-1 run's config.json.

  Args:
    mc: config.model (fusion, d_model, num_layers, num_heads, mlp_dim, embed_dims,
      dropout, dtype, norm; a run's config.json without `norm` is pre-LN).
    vocab_sizes: feature -> vocabulary size; the encoder embeds exactly these features.
    max_len: positions of the encoder (the stage-1 run's window length).
    causal: AR (True) or bidirectional (Bert4Rec).
    dropout: overrides mc.dropout (stage 2 reads the encoder without dropout).
  """
  time = tuple(mc.get('time_features', ()))
  return UserEncoder(
      FrozenDict(vocab_sizes), FrozenDict({f: mc.embed_dims[f] for f in (*vocab_sizes, *time)}),
      d_model=mc.d_model, num_layers=mc.num_layers, num_heads=mc.num_heads,
      mlp_dim=mc.mlp_dim, max_len=max_len, fusion=mc.fusion, causal=causal,
      dropout=mc.dropout if dropout is None else dropout,
      dtype=jnp.dtype(mc.get('dtype', 'float32')), norm=mc.get('norm', 'pre'),
      time_features=time, time_origin_year=mc.get('time_origin_year', 1995))


class NextEventHeads(nn.Module):
  """One linear softmax head per feature."""

  vocab_sizes: Mapping[str, int]
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h: Array) -> dict[str, Array]:
    """Args: h [B, U, D]. Returns feature -> logits float32 [B, U, V_f]."""
    return {f: nn.Dense(v, dtype=self.dtype, param_dtype=self.param_dtype, name=f)(h).astype(jnp.float32)
            for f, v in sorted(self.vocab_sizes.items())}


class UserEncoderLM(nn.Module):
  """Stage-1 model: `user_encoder` + next-event `heads` (autoregressive or masked)."""

  user_encoder: UserEncoder  # Adopted under the scope name `user_encoder`.
  head_features: Sequence[str] | None = None  # None: a head for every feature.
  # Score items against the input item embeddings (SASRec-style weight tying):
  # heads/item_proj maps D -> E_item, plus a per-item bias heads/item_bias.
  tie_item_head: bool = False
  # A learned scalar added to the item logit of every item already in the window at
  # or before the scored position (a "repeat" bias: MovieLens users rate an item once,
  # which the Transformer alone learned poorly: benchmarks/stage1_results.md). Causal
  # only: it reads the window's items, never a later one.
  seen_item_bias: bool = False
  # Training only: each real input item is replaced by the OOV id with this
  # probability (the encoder then reads its genre and rating only), as Bert4Rec's
  # [MASK] does; targets and the seen-item bias keep the true items.
  item_dropout: float = 0.0
  # Tied head only: item content added to each item's output embedding, so that items
  # with few ratings are still scored by what they are. name -> int32 table from
  # `pretrain.item_side_tables`: 'genres' [V_item, G] (all the item's genre ids, 0 =
  # pad; their embeddings are averaged), 'year' [V_item] (release-year bucket). Stage 1
  # only: the encoder and its outputs are unchanged.
  item_side: Mapping[str, Any] | None = None

  def setup(self):
    enc = self.user_encoder
    vocab = {f: v for f, v in enc.vocab_sizes.items()
             if (self.head_features is None or f in self.head_features)
             and not (self.tie_item_head and f == 'item')}
    self.heads = NextEventHeads(vocab, enc.dtype, enc.param_dtype)
    if self.tie_item_head:
      self.item_proj = nn.Dense(enc.embed_dims['item'], dtype=enc.dtype,
                                param_dtype=enc.param_dtype, name='item_proj')
      self.item_bias = self.param('item_bias', nn.initializers.zeros,
                                  (enc.vocab_sizes['item'],), enc.param_dtype)
    if self.item_side:
      if not self.tie_item_head:
        raise ValueError('item_side needs the tied item head (tie_item_head=True).')
      init, e = nn.initializers.normal(0.02), enc.embed_dims['item']
      sizes = {'genres': enc.vocab_sizes.get('genre', 0), 'year': YEAR_BUCKETS}
      unknown = set(self.item_side) - set(sizes)
      if unknown:
        raise ValueError(f'Unknown item_side tables {sorted(unknown)}; known: {sorted(sizes)}.')
      self.side_embed = {k: nn.Embed(sizes[k], e, embedding_init=init, dtype=enc.dtype,
                                     param_dtype=enc.param_dtype, name=f'item_side_{k}')
                         for k in sorted(self.item_side)}
    if self.seen_item_bias:
      if not enc.causal:
        raise ValueError('seen_item_bias needs a causal encoder (it reads past items only).')
      self.seen_bias = self.param('seen_item_bias', nn.initializers.zeros, (), enc.param_dtype)

  def __call__(self, features, mask, train: bool = False, last_k: int | None = None):
    """Returns (embeddings [B, U, D], feature -> logits [B, K, V_f]).

    `last_k` restricts the heads to the last K positions (K = U if None): the
    vocabulary-sized heads dominate the cost, so training may score fewer positions.
    """
    inputs = features
    if train and self.item_dropout > 0:
      drop = jax.random.bernoulli(self.make_rng('dropout'), self.item_dropout, mask.shape)
      inputs = dict(features, item=jnp.where(drop & (features['item'] > 1), OOV_ID,
                                              features['item']))
    h = self.user_encoder(inputs, mask, train)
    hk = h if last_k is None else h[:, -last_k:]
    logits = self.heads(hk)
    if self.tie_item_head:
      table = self.user_encoder.item_table()
      if self.item_side:
        table = table + self._side_table()
      logits['item'] = (jnp.einsum('BUE,VE->BUV', self.item_proj(hk), table.astype(hk.dtype))
                        + self.item_bias).astype(jnp.float32)
    if self.seen_item_bias and 'item' in logits:
      logits['item'] = logits['item'] + self.seen_bias * seen_items(
          features['item'], mask, logits['item'].shape[1], logits['item'].shape[-1])
    return h, logits


  def _side_table(self) -> Array:
    """[V_item, E_item]: each item's content embedding (mean of its genres + year)."""
    out = 0.0
    for k, emb in self.side_embed.items():
      ids = jnp.asarray(self.item_side[k])
      if k == 'genres':
        real = (ids > 0).astype(jnp.float32)[..., None]
        out = out + (emb(ids) * real).sum(1) / jnp.maximum(real.sum(1), 1.0)
      else:
        out = out + emb(ids)
    return out


YEAR_BUCKETS = 102  # Release years: 0 pad, 1 unknown, 2 + (year - 1920) clipped to 0..99.


def first_positions(items: Array, valid: Array, vocab: int) -> Array:
  """int32 [B, V]: the position of each item's first valid occurrence; U where it has none.

  Args: items int32 [B, U]; valid bool [B, U] (the positions that count); vocab V.
  One scatter of B x U updates; the [B, K, V] "seen" masks below are compares against
  it, which XLA can fuse into the logits (instead of a B x K x U scatter into a
  [B, K, V] buffer; the step-time gain was not measured on an idle machine).
  """
  b, u = items.shape
  pos = jnp.where(valid, jnp.arange(u, dtype=jnp.int32)[None], u)
  return jnp.full((b, vocab), u, jnp.int32).at[jnp.arange(b)[:, None], items].min(pos)


def seen_items(items: Array, mask: Array, k: int, vocab: int) -> Array:
  """float32 [B, K, V]: 1 where item v is in the window at or before each of the last K
  positions (ids 0 pad and 1 OOV never count).

  Args: items int32 [B, U]; mask bool [B, U] (True on real events); k <= U; vocab V.
  """
  u = items.shape[1]
  first = first_positions(items, mask & (items > 1), vocab)
  scored = jnp.arange(u - k, u, dtype=jnp.int32)  # [K] positions whose logits are scored.
  return (first[:, None, :] <= scored[None, :, None]).astype(jnp.float32)


def next_event_loss(logits: Mapping[str, Array], targets: Mapping[str, Array],
                    weights: Array) -> tuple[Array, dict[str, Array]]:
  """Summed-over-features softmax cross-entropy, averaged over weighted positions.

  Args:
    logits: feature -> [B, U, V_f]; targets: feature -> int32 [B, U]; weights [B, U].

  Returns:
    (loss scalar, metrics with per-feature loss and accuracy).
  """
  denom = jnp.maximum(weights.sum(), 1.0)
  total, metrics = 0.0, {}
  for f in sorted(logits):
    w = weights * (targets[f] > 0)  # id 0 is padding: not a target.
    ce, hit = metrics_lib.nll_and_top1(logits[f], targets[f])
    loss_f = (ce * w).sum() / denom
    total = total + loss_f
    metrics[f'loss_{f}'] = loss_f
    metrics[f'acc_{f}'] = metrics_lib.weighted_mean(hit, w)
  return total, metrics


def future_item_loss(item_logits: Array, items: Array, mask: Array, last_k: int,
                     horizon: int) -> Array:
  """Cross-entropy of the item logits at each scored position against the items 2..H
  events ahead (the next one is `next_event_loss`'s), averaged over real targets.

  MovieLens users rate many movies in one sitting, so the exact order inside a session
  is weak evidence; treating the next few items as extra targets of the same softmax
  (one logsumexp per position) is a multi-positive next-item loss
  (`config.model.future_targets`; ablation in benchmarks/stage1_results.md).

  Args:
    item_logits: [B, K, V] logits of the last K = `last_k` history positions.
    items: int32 [B, U + 1] the window's item ids (history + target); 0 = pad.
    mask: bool [B, U + 1] real events.
    last_k: K; horizon: H >= 2, the furthest event ahead that is a target.

  Returns:
    scalar mean cross-entropy over the (position, offset) pairs whose target exists.
  """
  b, u1 = items.shape
  pad = jnp.zeros((b, horizon), items.dtype)
  ids = jnp.concatenate([items * mask, pad], axis=1)  # Past the window: pad, not a target.
  # Position p of the history (0..U-1) predicts event p + j; keep the last K positions.
  tgt = jnp.stack([ids[:, j:j + u1 - 1][:, -last_k:] for j in range(2, horizon + 1)], -1)
  w = ((tgt > 0) & mask[:, :-1][:, -last_k:, None]).astype(jnp.float32)  # [B, K, H-1]
  logits = item_logits.astype(jnp.float32)
  # One logsumexp per position serves all H-1 targets (no [H-1, B, K, V] copy).
  nll = jax.nn.logsumexp(logits, -1)[..., None] - jnp.take_along_axis(logits, tgt, -1)
  return metrics_lib.weighted_mean(nll, w)
