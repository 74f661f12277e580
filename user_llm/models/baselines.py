"""Next-item baselines run in the same harness as the AR user encoder.

Einsum letters: B batch, U user events, D width, V item vocabulary, C candidates.

- `DualEncoder`: user tower (causal mean of fused event embeddings + MLP) vs item
  tower (item embedding + MLP), dot-product scores, trained with in-batch softmax.
- `Bert4Rec`: bidirectional Transformer over the events, random item positions
  replaced by a learned [MASK] embedding and predicted; at test time the target
  position is [MASK]ed (Sun et al. 2019).
- `Popularity`: one logit per item fitted by softmax cross-entropy on the training
  targets, i.e. the maximum-likelihood unigram model: at convergence its ranking is
  the item frequency in the training windows.
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from user_llm.models import user_encoder as ue

Array = jax.Array


class DualEncoder(nn.Module):
  """Two towers: `user_tower` and `item_tower`, both ending in a D-dim embedding."""

  vocab_sizes: Mapping[str, int]
  embed_dims: Mapping[str, int]
  d_model: int = 128
  mlp_dim: int = 256
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed = {f: nn.Embed(v, self.embed_dims[f], embedding_init=nn.initializers.normal(0.02),
                              name=f'embed_{f}', **kw) for f, v in sorted(self.vocab_sizes.items())}
    self.user_mlp = ue.Mlp(self.mlp_dim, name='user_mlp', **kw)
    self.user_in = nn.Dense(self.d_model, name='user_in', **kw)
    self.item_in = nn.Dense(self.d_model, name='item_in', **kw)
    self.item_mlp = ue.Mlp(self.mlp_dim, name='item_mlp', **kw)

  def user(self, features: Mapping[str, Array], mask: Array) -> Array:
    """Args: feature -> [B, U] ids, mask [B, U]. Returns [B, U, D]: the user after event t."""
    x = jnp.concatenate([self.embed[f](features[f]) for f in sorted(self.vocab_sizes)], -1)
    x = self.user_in(x) * mask[..., None]
    count = jnp.maximum(jnp.cumsum(mask, axis=1), 1)[..., None]
    x = jnp.cumsum(x, axis=1) / count  # Causal mean pooling.
    return x + self.user_mlp(x)

  def items(self, ids: Array) -> Array:
    """Args: item ids [...]. Returns item embeddings [..., D]."""
    x = self.item_in(self.embed['item'](ids))
    return x + self.item_mlp(x)

  def __call__(self, features, mask):
    return self.user(features, mask), self.items(features['item'])


class Bert4Rec(nn.Module):
  """Bidirectional `user_encoder` whose item table has one extra row, the [MASK] id.

  `user_encoder.vocab_sizes['item']` is the item vocabulary + 1; id `mask_id`
  (= the last row) stands for a hidden item. The head predicts the real vocabulary.
  """

  user_encoder: ue.UserEncoder
  # As `UserEncoderLM.seen_item_bias`: one learned scalar added to the logits of the
  # items the model reads in its input (the window's real, un-[MASK]ed events; with a
  # bidirectional encoder that is every position, before or after the scored one).
  seen_item_bias: bool = False

  @property
  def mask_id(self) -> int:
    return self.user_encoder.vocab_sizes['item'] - 1

  def setup(self):
    enc = self.user_encoder
    self.heads = ue.NextEventHeads({'item': self.mask_id}, enc.dtype, enc.param_dtype)
    if self.seen_item_bias:
      self.seen_bias = self.param('seen_item_bias', nn.initializers.zeros, (), enc.param_dtype)

  def __call__(self, features, mask, masked: Array, positions: Array, train: bool = False):
    """Item logits at chosen positions.

    Args:
      features: feature -> int32 [B, U]; mask, masked: bool [B, U].
      positions: int32 [B, K] positions to score (the vocabulary head is costly).

    Returns:
      float32 [B, K, V].
    """
    items = features['item']
    features = dict(features, item=jnp.where(masked, self.mask_id, items))
    h = self.user_encoder(features, mask, train)
    h = jnp.take_along_axis(h, positions[..., None], axis=1)
    logits = self.heads(h)['item']
    if self.seen_item_bias:
      read = ue.first_positions(items, mask & ~masked & (items > 1), self.mask_id)
      logits = logits + self.seen_bias * (read < items.shape[1])[:, None, :].astype(jnp.float32)
    return logits


class Popularity(nn.Module):
  """A learned logit per item, independent of the user."""

  num_items: int
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, batch_shape: tuple[int, ...]) -> Array:
    """Returns logits [*batch_shape, V]."""
    logits = self.param('item_logits', nn.initializers.zeros, (self.num_items,), self.param_dtype)
    return jnp.broadcast_to(logits.astype(jnp.float32), tuple(batch_shape) + (self.num_items,))
