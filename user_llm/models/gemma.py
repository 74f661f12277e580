"""The Gemma 3 decoder of User-LLM, built from `gm`'s own modules.

The parameter tree is exactly the one of `gm.nn.Gemma3_*` (`embedder/input_embedding`,
`layer_{i}/attn/q_einsum/w`, ..., `final_norm/scale`), so `gm.ckpts.load_params`
output drops in unchanged. On top of `gm.nn.Transformer` it adds the two ways User-LLM
feeds a user to the LLM:
  * a `layer_hook(i, x) -> x` called before decoder layer i for every i in
    `hook_layers`: the gated cross-attention blocks plug in here (their params live
    outside this module, in the sibling `cross_attention/` scope);
  * a `prefix` of soft-prompt embeddings prepended to the token embeddings, with a
    prefix-LM mask (full attention inside the prefix, causal after it).
Generation uses `gm`'s KV cache (`gm.nn.Attention` cache dicts, one per layer). Calls
with a cache (prefill, decode) run gm's einsums and the unembedding as
`weight_einsum`s, which read the weights in place instead of a transposed copy per
call and accept `Int8Weight` params (`weight_einsum.quantize_int8`), and gm's attention
as `cached_attention`, which updates the cache without copying it; training calls run
gm's own layers.

Letters: B batch, L tokens, P prefix length, S cache length, D width, V vocab.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import contextlib

import flax
import flax.linen as nn
from gemma import gm
import jax
import jax.numpy as jnp

from user_llm import sharding
from user_llm.models import cached_attention
from user_llm.models import weight_einsum as we

LayerHook = Callable[[int, jax.Array], jax.Array]
Cache = dict[str, dict[str, jax.Array]]

# The one "minus infinity" of the project: gm's attention mask value (`K_MASK`, private
# in gemma/gm/nn/_modules.py; tests/models/test_gemma.py checks they agree). Finite in
# float32 and bfloat16 (max ~3.39e38), so a fully masked softmax row stays uniform
# instead of NaN, and masked scores never win a ranking.
NEG_INF = -2.3819763e38


def gemma_config(name: str) -> gm.nn.config.TransformerConfig:
  """The `TransformerConfig` of a `gm.nn` model class, e.g. 'Gemma3_270M'."""
  cls = getattr(gm.nn, name, None)
  if cls is None or not hasattr(cls, 'config'):
    raise ValueError(f'Unknown Gemma model {name!r}: expected a gm.nn class name')
  return cls.config


def prefix_lm_mask(input_mask: jax.Array, prefix_len: int) -> jax.Array:
  """Causal mask over valid tokens, bidirectional inside the first `prefix_len`.

  Args:
    input_mask: bool[B, L], True on real (non-padding) positions.
    prefix_len: number of leading positions that see each other fully.

  Returns:
    bool[B, L, L]: mask[b, q, k] = k is valid and (k <= q or both < prefix_len).
  """
  length = input_mask.shape[-1]
  idx = jnp.arange(length)
  causal = idx[None, :] <= idx[:, None]
  in_prefix = idx < prefix_len
  allowed = causal | (in_prefix[:, None] & in_prefix[None, :])
  return allowed[None] & input_mask[:, None, :]


def positions_from_mask(input_mask: jax.Array) -> jax.Array:
  """int32[B, L] RoPE positions counting only valid tokens (pads do not shift)."""
  # Same rule as gm's private `build_positions_from_mask`: leading pads get 0.
  positions = jnp.cumsum(input_mask, axis=-1)
  return (positions - (positions >= 1)).astype(jnp.int32)


@flax.struct.dataclass
class DecoderOutput:
  """What `GemmaDecoder.__call__` returns."""

  logits: jax.Array  # float[B, L, V] (or float[B, V] with `last_only`)
  hidden: jax.Array  # float[B, L, D] after the final norm
  cache: Cache | None


class GemmaDecoder(nn.Module):
  """A Gemma 3 decoder whose params match `gm.nn.Gemma3_*` one to one.

  Attributes:
    config: the `gm` TransformerConfig (any Gemma 3 size, or a tiny one in tests).
    gm_layers: run gm's einsums, gm's attention and the `jnp.einsum` unembedding with a
      cache too: the path before `weight_einsum` and `cached_attention`, kept as the
      reference benchmarks and tests compare against (slower per decode step on XLA:CPU).
    remat_blocks: each layer under `nn.remat`: the backward pass keeps only the layer
      inputs and recomputes the rest one layer at a time. Needed to train on long text
      prompts: a 200-event prompt (~4.9k tokens) at batch 2 asked XLA:CPU for 51 GB
      without it, attention probabilities [B, N, L, L] of every layer held at once.
      Same params, same values; costs one more forward of the decoder.
  """

  config: gm.nn.config.TransformerConfig
  gm_layers: bool = False
  remat_blocks: bool = False

  def setup(self):
    cfg = self.config
    self.embedder = gm.nn.Embedder(vocab_size=cfg.num_embed, embed_dim=cfg.embed_dim)
    block_cls = nn.remat(gm.nn.Block) if self.remat_blocks else gm.nn.Block
    self.blocks = [
        block_cls(
            name=f'layer_{i}',
            num_heads=cfg.num_heads,
            num_kv_heads=cfg.num_kv_heads,
            embed_dim=cfg.embed_dim,
            head_dim=cfg.head_dim,
            hidden_dim=cfg.hidden_dim,
            sliding_window_size=cfg.sliding_window_size,
            use_post_attn_norm=cfg.use_post_attn_norm,
            use_post_ffw_norm=cfg.use_post_ffw_norm,
            attn_logits_soft_cap=cfg.attn_logits_soft_cap,
            attn_type=attn_type,
            query_pre_attn_scalar=cfg.query_pre_attn_scalar(),
            transpose_gating_einsum=cfg.transpose_gating_einsum,
            use_qk_norm=cfg.use_qk_norm,
            rope_base_frequency=cfg.local_base_frequency
            if attn_type == gm.nn.AttentionType.LOCAL_SLIDING
            else cfg.global_base_frequency,
            rope_scale_factor=cfg.local_scale_factor
            if attn_type == gm.nn.AttentionType.LOCAL_SLIDING
            else cfg.global_scale_factor,
        )
        for i, attn_type in enumerate(cfg.attention_types)
    ]
    self.final_norm = gm.nn.RMSNorm()

  def _table(self) -> jax.Array | we.Int8Weight:
    """The embedding table [V, D] as stored: an array or an `Int8Weight` box."""
    table = self.embedder.input_embedding_table  # Creates it at init; checks its shape.
    raw = self.embedder.get_variable('params', 'input_embedding')
    return raw if isinstance(raw, we.Int8Weight) else table

  def embed(self, tokens: jax.Array) -> jax.Array:
    """int[B, L] -> float[B, L, D], scaled by sqrt(D) as in Gemma."""
    table = self._table()
    if not isinstance(table, we.Int8Weight):
      return self.embedder.encode(tokens)
    # Dequantise the gathered rows only, never the 262k-row table.
    x = (table.values[tokens].astype(jnp.float32) * table.scale[tokens]).astype(table.dtype)
    return x * jnp.sqrt(self.config.embed_dim).astype(x.dtype)  # As `Embedder.encode`.

  def unembed(self, x: jax.Array) -> jax.Array:
    """float[..., D] -> float[..., V] (the table's dtype): `Embedder.decode` as an einsum.

    Why not `gm.nn.Embedder.decode` (`jnp.dot(x, table.T)`): alone on XLA:CPU, a bf16
    [192, 640] x [262144, 640] contraction ran at 86 GFLOP/s written that way and
    207 GFLOP/s as this einsum (no transposed operand). Inside the whole training
    step the two were within run-to-run noise; the throughput table uses this one.
    `weight_einsum` is the same product for a float table (and a two-row one for a
    single bf16 row, see there), and takes an `Int8Weight`.
    """
    if self.gm_layers:
      table = self.embedder.input_embedding_table
      return jnp.einsum('...D,VD->...V', x.astype(table.dtype), table)
    table = self._table()
    return we.weight_einsum('...D,VD->...V', x.astype(table.dtype), table)

  def __call__(
      self,
      tokens: jax.Array,
      *,
      input_mask: jax.Array | None = None,
      prefix: jax.Array | None = None,
      prefix_mask: jax.Array | None = None,
      positions: jax.Array | None = None,
      attention_mask: jax.Array | None = None,
      cache: Cache | None = None,
      layer_hook: LayerHook | None = None,
      hook_layers: Sequence[int] = (),
      last_only: bool = False,
      logits_at: jax.Array | None = None,
      logits_rows: jax.Array | None = None,
  ) -> DecoderOutput:
    """Runs the decoder.

    Args:
      tokens: int[B, L]; 0 is padding.
      input_mask: bool[B, L], True on real tokens (default: tokens != 0).
      prefix: float[B, P, D] soft-prompt embeddings placed before the tokens.
      prefix_mask: bool[B, P], True on real prefix positions (default: all).
      positions: int[B, P+L] RoPE positions (default: from the masks).
      attention_mask: bool[B, P+L, S] (default: prefix-LM mask; S = P+L
        without cache). Required with a cache.
      cache: `gm` KV cache from `init_cache`, updated in place (functionally).
      layer_hook: called as `x = layer_hook(i, x)` before layer i, i in
        `hook_layers` (cross-attention blocks).
      hook_layers: decoder layer indices the hook runs before.
      last_only: return only the logits of the last position (decoding).
      logits_at: int[B, A] positions (in prefix + tokens) whose logits to
        return, float[B, A, V]: training needs only the answer positions, and
        the 262k-way unembedding dominates the cost of the others.
      logits_rows: int[B, A] the batch row of each `logits_at` position
        (default: its own row), so the answer positions of a whole batch can be
        packed densely (data_pipelines.trim_batch).
    Returns:
      DecoderOutput with logits over the prefix and tokens positions.
    """
    if input_mask is None:
      input_mask = tokens != 0
    x = self.embed(tokens)
    if prefix is not None:
      if prefix_mask is None:
        prefix_mask = jnp.ones(prefix.shape[:2], dtype=bool)
      x = jnp.concatenate([prefix.astype(x.dtype), x], axis=1)
      input_mask = jnp.concatenate([prefix_mask, input_mask], axis=1)
    prefix_len = 0 if prefix is None else prefix.shape[1]
    if positions is None:
      positions = positions_from_mask(input_mask)
    if attention_mask is None:
      if cache is not None:
        raise ValueError('An explicit attention_mask is required with a cache.')
      attention_mask = prefix_lm_mask(input_mask, prefix_len)

    hook_layers = frozenset(hook_layers)
    new_cache = {} if cache is not None else None
    with contextlib.ExitStack() as stack:
      if cache is not None and not self.gm_layers:
        # Entered inside a `gm.nn.LoRA` wrapper: LoRA's interceptor runs first (see there).
        stack.enter_context(we.intercept_gm_einsums())
        stack.enter_context(cached_attention.intercept_cached_attention())
      for i, block in enumerate(self.blocks):
        if layer_hook is not None and i in hook_layers:
          x = layer_hook(i, x)
        name = f'layer_{i}'
        layer_cache, x = block(
            sharding.constrain_batch(x), positions, None if cache is None else cache[name],
            attention_mask
        )
        if new_cache is not None:
          new_cache[name] = layer_cache
    x = self.final_norm(x)
    if last_only:
      x = x[:, -1]
    elif logits_at is not None and logits_rows is not None:
      x = x[logits_rows, logits_at]
    elif logits_at is not None:
      x = jnp.take_along_axis(x, logits_at[..., None], axis=1)
    # Each device unembeds its own rows (all-gathering the table), not the global batch.
    logits = self.unembed(sharding.constrain_batch(x))
    if self.config.final_logit_softcap is not None:
      cap = self.config.final_logit_softcap
      logits = jnp.tanh(logits / cap) * cap
    return DecoderOutput(logits=logits, hidden=x, cache=new_cache)


def compute_dtype(params) -> jnp.dtype:
  """The dtype a decoder computes (and caches K/V) in.

  Its embedding table's, promoted by LoRA adapters if any (float32 adapters on a bf16
  Gemma turn every projection, hence the K/V, into float32).
  """
  leaves = jax.tree_util.tree_flatten_with_path(  # An Int8Weight counts as its float dtype.
      params, is_leaf=lambda x: isinstance(x, we.Int8Weight))[0]
  dtypes = [leaf.dtype for path, leaf in leaves
            if any(k in jax.tree_util.keystr(path) for k in ('input_embedding', 'lora'))]
  if not dtypes:
    raise ValueError('No embedder/input_embedding in the params')
  return jnp.result_type(*dtypes)


def init_cache(
    config: gm.nn.config.TransformerConfig,
    batch_size: int,
    cache_length: int,
    dtype: jnp.dtype = jnp.float32,
) -> Cache:
  """An empty `gm` KV cache: per layer k/v float[B, S, K, H], positions, end_index."""
  return config.init_cache(batch_size=batch_size, dtype=dtype, cache_length=cache_length)
