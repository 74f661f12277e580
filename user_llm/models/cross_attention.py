"""Gated cross-attention blocks and the Perceiver resampler of User-LLM.

A gated block (Flamingo; names after `gemma/research/t5gemma/modules.py`) is inserted
before chosen Gemma layers:
    x = x + tanh(attn_gate) * CrossAttn(pre_cross_attention_norm(x), memory)
    x = x + tanh(ffw_gate)  * FFN(pre_ffw_norm(x))
with both gates scalars initialised to 0, so at init the decoder is the unchanged Gemma.
Keys and values of the user memory are computed once per user (`memory_kv`) and kept
with the KV cache: decoding many tokens never re-projects the memory.

Params are created with `self.param` and plain `jnp.einsum` (not `gm.nn.Einsum`) on
purpose: `gm.nn.LoRA` intercepts every `gm.nn.Einsum` called inside the decoder, and
these always-trained blocks must not get LoRA adapters.

Letters: B batch, T queries, S memory length, R latents, D width, N heads, H head dim,
F FFN hidden width.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
from gemma import gm
import jax
import jax.numpy as jnp

from user_llm.models import gemma as gemma_lib

_init = nn.initializers.normal(0.02)

MemoryKV = dict[str, tuple[jax.Array, jax.Array]]


class MultiHeadCrossAttention(nn.Module):
  """Queries from `x`, keys/values from a memory; `gm` einsum layouts and names."""

  num_heads: int
  head_dim: int
  features: int  # D of the queries and of the output.
  memory_features: int  # D of the memory.

  def setup(self):
    n, h, d = self.num_heads, self.head_dim, self.features
    self.q_w = self.param('q_einsum', _init, (n, d, h))
    self.kv_w = self.param('kv_einsum', _init, (2, n, self.memory_features, h))
    self.out_w = self.param('attn_vec_einsum', _init, (n, h, d))
    self._query_norm = gm.nn.RMSNorm()
    self._key_norm = gm.nn.RMSNorm()

  def memory_kv(self, memory: jax.Array) -> tuple[jax.Array, jax.Array]:
    """float[B, S, Dm] -> keys, values float[B, S, N, H] (computed once per user)."""
    k, v = jnp.einsum('BSD,CNDH->CBSNH', memory, self.kv_w.astype(memory.dtype))
    return self._key_norm(k), v

  def __call__(self, x: jax.Array, kv: tuple[jax.Array, jax.Array],
               memory_mask: jax.Array) -> jax.Array:
    """x float[B, T, D], kv from `memory_kv`, memory_mask bool[B, S] -> float[B, T, D]."""
    k, v = kv
    q = self._query_norm(jnp.einsum('BTD,NDH->BTNH', x, self.q_w.astype(x.dtype)))
    logits = jnp.einsum('BTNH,BSNH->BTNS', q * self.head_dim**-0.5, k.astype(x.dtype))
    logits = jnp.where(memory_mask[:, None, None, :], logits, gemma_lib.NEG_INF)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
    # A row whose memory is all padding attends to nothing rather than uniformly.
    probs = probs * memory_mask.any(-1)[:, None, None, None]
    enc = jnp.einsum('BTNS,BSNH->BTNH', probs, v.astype(x.dtype))
    return jnp.einsum('BTNH,NHD->BTD', enc, self.out_w.astype(x.dtype))


class FeedForward(nn.Module):
  """Gemma's gated GELU FFN, params `gating_einsum` [2, F, D] and `linear` [F, D]."""

  features: int
  hidden_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gating = self.param('gating_einsum', _init, (2, self.hidden_dim, self.features))
    linear = self.param('linear', _init, (self.hidden_dim, self.features))
    gate = jnp.einsum('...D,CFD->...CF', x, gating.astype(x.dtype))
    return jnp.einsum('...F,FD->...D', nn.gelu(gate[..., 0, :]) * gate[..., 1, :],
                      linear.astype(x.dtype))


class GatedCrossAttentionBlock(nn.Module):
  """x += tanh(attn_gate) * xattn(norm(x)); x += tanh(ffw_gate) * ffn(norm(x))."""

  embed_dim: int
  memory_dim: int
  num_heads: int
  head_dim: int
  hidden_dim: int

  def setup(self):
    self.pre_cross_attention_norm = gm.nn.RMSNorm()
    self.cross_attn = MultiHeadCrossAttention(
        self.num_heads, self.head_dim, self.embed_dim, self.memory_dim)
    self.pre_ffw_norm = gm.nn.RMSNorm()
    self.mlp = FeedForward(self.embed_dim, self.hidden_dim)
    self.attn_gate = self.param('attn_gate', nn.initializers.zeros, ())
    self.ffw_gate = self.param('ffw_gate', nn.initializers.zeros, ())

  def memory_kv(self, memory):
    return self.cross_attn.memory_kv(memory)

  def __call__(self, x, kv, memory_mask):
    """x float[B, T, D] -> float[B, T, D], in x's dtype (the decoder's KV cache dtype)."""
    dtype = x.dtype  # Our float32 norm scales would otherwise promote a bf16 stream.
    attn = self.cross_attn(self.pre_cross_attention_norm(x), kv, memory_mask)
    x = (x + jnp.tanh(self.attn_gate) * attn).astype(dtype)
    ffw = self.mlp(self.pre_ffw_norm(x))
    return (x + jnp.tanh(self.ffw_gate) * ffw).astype(dtype)


class CrossAttentionStack(nn.Module):
  """One gated block per decoder layer index in `layers`, params `layer_{i}/...`.

  `layer_{i}` runs *before* decoder layer i (see `GemmaDecoder.layer_hook`).
  """

  layers: Sequence[int]
  # The decoder's config: blocks take its width, heads and MLP width, and read a
  # memory already projected to its width.
  decoder_config: gm.nn.config.TransformerConfig

  def setup(self):
    c = self.decoder_config
    self.blocks = {
        f'layer_{i}': GatedCrossAttentionBlock(
            c.embed_dim, c.embed_dim, c.num_heads, c.head_dim, c.hidden_dim,
            name=f'layer_{i}')
        for i in self.layers
    }

  def memory_kv(self, memory: jax.Array) -> MemoryKV:
    """{'layer_i': (k, v)} float[B, S, N, H]: the per-user cache of every block."""
    return {name: block.memory_kv(memory) for name, block in self.blocks.items()}

  def __call__(self, i: int, x, memory_kv: MemoryKV, memory_mask):
    return self.blocks[f'layer_{i}'](x, memory_kv[f'layer_{i}'], memory_mask)


class PerceiverResampler(nn.Module):
  """R learned latents summarise U user embeddings (Flamingo's Perceiver resampler).

  Each layer: latents attend to [user embeddings; latents], then an FFN, both residual
  and pre-normed. Output float[B, R, D], all positions valid.
  """

  num_latents: int
  depth: int
  num_heads: int
  head_dim: int
  hidden_dim: int

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """x float[B, U, D], mask bool[B, U] -> latents float[B, R, D]."""
    b, _, d = x.shape
    lat = self.param('latents', _init, (self.num_latents, d)).astype(x.dtype)
    lat = jnp.broadcast_to(lat, (b, self.num_latents, d))
    kv_mask = jnp.concatenate([mask, jnp.ones((b, self.num_latents), bool)], axis=1)
    for j in range(self.depth):
      attn = MultiHeadCrossAttention(self.num_heads, self.head_dim, d, d, name=f'layer_{j}_attn')
      normed_lat = gm.nn.RMSNorm(name=f'layer_{j}_latent_norm')(lat)
      memory = jnp.concatenate([gm.nn.RMSNorm(name=f'layer_{j}_input_norm')(x), normed_lat], 1)
      lat = lat + attn(normed_lat, attn.memory_kv(memory), kv_mask)
      lat = lat + FeedForward(d, self.hidden_dim, name=f'layer_{j}_mlp')(
          gm.nn.RMSNorm(name=f'layer_{j}_ffw_norm')(lat))
    return gm.nn.RMSNorm(name='final_norm')(lat)
