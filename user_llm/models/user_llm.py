"""User-LLM: a user encoder contextualising a pretrained Gemma decoder.

Param tree (sibling scopes, so loading and freezing are path regexes):
  user_encoder/    the stage-1 encoder (`UserEncoder`), loaded from a stage-1 workdir
  projection/      Dense from encoder width to Gemma width
  item_proj/       (item_readout) stage 1's tied item head, encoder width -> E_item
  item_projection/ (item_readout) Dense from E_item to Gemma width
  resampler/       optional Perceiver (R latents)
  cross_attention/ gated blocks `layer_{i}` run before decoder layer i
  decoder/         exactly `gm.nn.Gemma3_*`'s tree (+ `lora` leaves with LoRA)

Modes (`mode`):
  'cross_attention': user memory reaches the decoder through gated cross-attention;
  'soft_prompt':     user memory is prepended as prefix embeddings (prefix-LM mask);
  'text_prompt':     the baseline: no user side, the history is text in the prompt.

The user side is computed once per user (`user_memory` then `memory_kv`) and passed to
every decoder call, so generation and repeated prompts never re-run the encoder or the
cross-attention K/V projections.

Letters: B batch, U user events, S memory length (U, or R with the Perceiver), L
tokens, D Gemma width, E encoder width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
from gemma import gm
import jax
import jax.numpy as jnp

from user_llm.models import cross_attention as xattn_lib
from user_llm.models import gemma as gemma_lib
from user_llm.models import user_encoder as ue

MODES = ('cross_attention', 'soft_prompt', 'text_prompt')


class UserLLM(nn.Module):
  """See the module docstring.

  Attributes:
    decoder_config: the Gemma `TransformerConfig`.
    user_encoder: a `UserEncoder` (adopted under the scope `user_encoder`; None in
      'text_prompt' mode).
    mode: one of MODES.
    xattn_layers: decoder layers preceded by a gated cross-attention block.
    num_latents: Perceiver latents R; 0 = no Perceiver.
    perceiver_depth: Perceiver layers.
    lora_rank: >0 wraps the decoder in `gm.nn.LoRA` (strategy LoRA).
    remat_blocks: every decoder layer under `nn.remat` (`GemmaDecoder.remat_blocks`).
    item_readout: each event's memory also gets item_projection(item_proj(h)): stage
      1's tied item head maps h to the item-embedding space where it scores the next
      items, and `item_memory` puts a catalogue item's own embedding through the same
      item_projection, so item alignment (`config.train.item_alignment`) can teach
      Gemma to name the item a vector points at (see `item_memory`).
  """

  decoder_config: gm.nn.config.TransformerConfig
  user_encoder: ue.UserEncoder | None
  mode: str = 'cross_attention'
  xattn_layers: Sequence[int] = ()
  num_latents: int = 0
  perceiver_depth: int = 2
  lora_rank: int = 0
  remat_blocks: bool = False
  item_readout: bool = False

  def setup(self):
    if self.mode not in MODES:
      raise ValueError(f'Unknown User-LLM mode {self.mode!r}; expected one of {MODES}')
    cfg = self.decoder_config
    decoder = gemma_lib.GemmaDecoder(cfg, remat_blocks=self.remat_blocks)
    if self.lora_rank:
      decoder = gm.nn.LoRA(rank=self.lora_rank, model=decoder, dtype=jnp.float32)
    self.decoder = decoder
    if self.mode == 'text_prompt':
      return
    self.projection = nn.Dense(cfg.embed_dim, name='projection')
    if self.item_readout:
      # Named as in the stage-1 tree (UserEncoderLM), so its weights load as they are.
      self.item_proj = nn.Dense(self.user_encoder.embed_dims['item'], name='item_proj')
      self.item_projection = nn.Dense(cfg.embed_dim, name='item_projection')
    if self.num_latents:
      self.resampler = xattn_lib.PerceiverResampler(
          num_latents=self.num_latents, depth=self.perceiver_depth,
          num_heads=cfg.num_heads, head_dim=cfg.head_dim, hidden_dim=cfg.hidden_dim)
    if self.mode == 'cross_attention':
      if not self.xattn_layers:
        raise ValueError('mode=cross_attention needs at least one layer in xattn_layers')
      bad = [i for i in self.xattn_layers if not 0 <= i < cfg.num_layers]
      if bad:
        raise ValueError(f'xattn_layers {bad} outside the decoder\'s {cfg.num_layers} layers')
      self.cross_attention = xattn_lib.CrossAttentionStack(
          layers=tuple(self.xattn_layers), decoder_config=cfg)

  @property
  def config(self):  # What `decoding.prefill` reads to size the KV cache.
    return self.decoder_config

  def user_memory(self, features: Mapping[str, jax.Array], mask: jax.Array):
    """Encoder -> projection -> [Perceiver].

    Args:
      features: int[B, U] per feature.
      mask: bool[B, U], True on real events.

    Returns:
      memory float[B, S, D], memory_mask bool[B, S].
    """
    return self.memory_from_embeddings(self.user_encoder(features, mask), mask)

  def memory_from_embeddings(self, h: jax.Array, mask: jax.Array):
    """Projection -> [Perceiver] of encoder outputs h float[B, U, E] (mask bool[B, U]).

    Without the Perceiver it acts on each event alone (serving appends the memory of
    new events only); the Perceiver's latents read all of them.
    """
    memory = self.projection(h)
    if self.item_readout:
      memory = memory + self.item_projection(self.item_proj(h))
    return self._resample(memory, mask)

  def item_memory(self, items: jax.Array):
    """The memory of single catalogue items (item alignment; needs item_readout).

    Args:
      items: int[B] item ids.

    Returns:
      memory float[B, S, D] (S = 1, or R with the Perceiver): item_projection of each
      item's input embedding (the table stage 1's tied head scores against), and
      memory_mask bool[B, S].
    """
    table = self.user_encoder.item_table()
    memory = self.item_projection(jnp.take(table, items, axis=0))[:, None]
    return self._resample(memory, jnp.ones(memory.shape[:2], bool))

  def _resample(self, memory, mask):
    """The Perceiver's latents over the memory, when there is one."""
    if self.num_latents:
      memory = self.resampler(memory, mask)
      mask = jnp.ones(memory.shape[:2], bool)
    return memory, mask

  def memory_kv(self, memory: jax.Array) -> xattn_lib.MemoryKV:
    """Per-user K/V of every cross-attention block (cached with the KV cache)."""
    return self.cross_attention.memory_kv(memory)

  def __call__(self, tokens: jax.Array, *, memory_kv: xattn_lib.MemoryKV | None = None,
               memory_mask: jax.Array | None = None,
               **decoder_kwargs: Any) -> gemma_lib.DecoderOutput:
    """The decoder with the user side plugged in (see `GemmaDecoder.__call__`).

    Args:
      tokens: int[B, L].
      memory_kv: from `memory_kv` (mode 'cross_attention').
      memory_mask: bool[B, S].
      **decoder_kwargs: `GemmaDecoder` keywords: input_mask, positions,
        attention_mask, cache, last_only, and for mode 'soft_prompt' the memory as
        prefix float[B, S, D] / prefix_mask bool[B, S].
    """
    hook = None
    if memory_kv is not None:
      def hook(i, x):
        return self.cross_attention(i, x, memory_kv, memory_mask)
    return self.decoder(tokens, layer_hook=hook,
                        hook_layers=tuple(self.xattn_layers) if hook else (), **decoder_kwargs)

  def forward(self, features, mask, tokens, input_mask=None, logits_at=None, logits_rows=None):
    """Training/eval forward: user side then decoder.

    Args:
      features, mask: the user's history (ignored by 'text_prompt').
      tokens: int[B, L]; input_mask: bool[B, L] (default tokens != 0).
      logits_at: int[B, A] token positions whose logits to return (the soft
        prompt's prefix is accounted for here); None = every position, prefix
        included.
      logits_rows: int[B, A] batch row of each `logits_at` (default: its own).
    """
    if self.mode == 'text_prompt':
      return self(tokens, input_mask=input_mask, logits_at=logits_at, logits_rows=logits_rows)
    memory, memory_mask = self.user_memory(features, mask)
    return self.decode_with_memory(memory, memory_mask, tokens, input_mask, logits_at,
                                   logits_rows)

  def decode_with_memory(self, memory, memory_mask, tokens, input_mask=None, logits_at=None,
                         logits_rows=None):
    """The decoder reading a given user side (`user_memory`'s memory float[B, S, D],
    memory_mask bool[B, S]); other arguments as `forward`. The user-contrastive loss
    calls it twice on one memory: the batch's own and its rows rolled."""
    at = dict(logits_at=logits_at, logits_rows=logits_rows)
    if self.mode == 'soft_prompt':
      if logits_at is not None:
        at['logits_at'] = logits_at + memory.shape[1]
      return self(tokens, prefix=memory, prefix_mask=memory_mask, input_mask=input_mask, **at)
    return self(tokens, memory_kv=self.memory_kv(memory), memory_mask=memory_mask,
                input_mask=input_mask, **at)

  def init_all(self, features, mask, tokens):
    """Touches every submodule (for `init`)."""
    return self.forward(features, mask, tokens)


def user_inputs(model: UserLLM, params, features, mask) -> dict[str, Any]:
  """The per-user inputs of every later decoder call, computed once.

  Returns the keyword arguments for `UserLLM.__call__` (and the `user` of
  `user_llm.decoding`): {} for text_prompt, {'prefix', 'prefix_mask'} for
  soft_prompt, {'memory_kv', 'memory_mask'} for cross_attention.
  """
  if model.mode == 'text_prompt':
    return {}
  memory, memory_mask = model.apply({'params': params}, features, mask, method='user_memory')
  return inputs_from_memory(model, params, memory, memory_mask)


def user_inputs_from_embeddings(model: UserLLM, params, h, mask) -> dict[str, Any]:
  """`user_inputs` from encoder outputs h float[B, U, E], mask bool[B, U] (serving
  keeps h cached per user, user_llm/serving/incremental.py)."""
  if model.mode == 'text_prompt':
    return {}
  memory, memory_mask = model.apply({'params': params}, h, mask,
                                    method='memory_from_embeddings')
  return inputs_from_memory(model, params, memory, memory_mask)


def inputs_from_memory(model: UserLLM, params, memory, memory_mask) -> dict[str, Any]:
  """`user_inputs` from the memory float[B, S, D] (after projection and Perceiver)."""
  if model.mode == 'soft_prompt':
    return {'prefix': memory, 'prefix_mask': memory_mask}
  kv = model.apply({'params': params}, memory, method='memory_kv')
  return {'memory_kv': kv, 'memory_mask': memory_mask}
