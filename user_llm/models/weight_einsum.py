"""Activation x weight products that XLA:CPU runs without copying the weight.

Why this module exists (benchmarks/decode_speed.md): `gm`'s einsums, e.g.
'BTD,NDH->BTNH' for `q_einsum` or '...F,NHF->...NH' for `gating_einsum`, lower to dots
that XLA:CPU's layout assignment feeds with a transposed *copy* of the weight, made
after loop-invariant code motion: every decode step copied ~300 MB of Gemma 3 270M's
401 MB of layer weights before reading them, and one step ran at ~2 GB/s. Here the
weight keeps its stored layout: its leading free axes (G) become a batch dimension and
the rest is one [C, F] or [F, C] matrix, which XLA's dot reads in place; only the
activation (a few KB per token) is transposed. `intercept_gm_einsums` routes every
`gm.nn.Einsum` of a decoder call through `weight_einsum`; `GemmaDecoder` does so for
calls with a KV cache (prefill and decode), training is untouched.

The same product takes an `Int8Weight` (`quantize_int8`): int8 values with one scale
per output channel, multiplied with the activation quantised to int8 per block of
`ACT_BLOCK` channels (W8A8, int32 accumulation), which XLA:CPU runs as an int8 GEMM
reading a quarter of the f32 bytes. Opt-in: it changes the logits (benchmarks/decode_speed.md measures by how much).

Letters: G weight axes used as a batch, M activation rows, C contracted, F output.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import flax
import flax.linen as nn
from flax.core import meta
from gemma.gm.nn import _layers
import jax
import jax.numpy as jnp
import numpy as np

# Channels per int8 scale of an activation (W8A8). One scale per token let Gemma 3
# 270M's outlier channels wash out the rest: teacher-forced KL to float32 0.036 nats;
# blocks of 128 channels: 0.009 (64: 0.008), at K = C / 128 GEMM rows per token.
ACT_BLOCK = 128

class Int8Weight(flax.struct.PyTreeNode, meta.AxisMetadata):
  """A weight stored as int8 with a float32 scale per output channel.

  A Flax `AxisMetadata` box: wherever a module reads it with `self.param`, Flax unboxes
  it into the dequantised array (`values * scale` in `dtype`), so any code path stays
  correct; `weight_einsum` and `GemmaDecoder.embed` read the box itself and never
  materialise the float weight.
  """

  values: jax.Array  # int8, the weight's shape.
  scale: jax.Array  # float32, the weight's shape with size 1 on the contracted axes.
  dtype: Any = flax.struct.field(pytree_node=False, default=jnp.float32)

  @property
  def shape(self) -> tuple[int, ...]:
    return self.values.shape

  def unbox(self) -> jax.Array:
    return (self.values.astype(jnp.float32) * self.scale).astype(self.dtype)

  def replace_boxed(self, val: jax.Array) -> Int8Weight:
    raise NotImplementedError('Int8Weight is read-only: quantise the new weight instead.')

  def add_axis(self, index: int, params: dict[Any, Any]) -> Int8Weight:
    raise NotImplementedError('Int8Weight does not support nn.scan / nn.vmap.')

  def remove_axis(self, index: int, params: dict[Any, Any]) -> Int8Weight:
    raise NotImplementedError('Int8Weight does not support nn.scan / nn.vmap.')


def quantize(w: jax.Array, contracted: tuple[int, ...]) -> Int8Weight:
  """Symmetric int8 with one scale per slice over the `contracted` axes (absmax / 127)."""
  w32 = jnp.asarray(w, jnp.float32)
  scale = jnp.max(jnp.abs(w32), axis=contracted, keepdims=True) / 127.0
  scale = jnp.where(scale > 0, scale, 1.0)
  values = jnp.clip(jnp.round(w32 / scale), -127, 127).astype(jnp.int8)
  return Int8Weight(values=values, scale=scale, dtype=jnp.dtype(w.dtype))


def _letters(eqn: str, x_ndim: int) -> tuple[str, str, str]:
  """(x, w, out) letters of 'x,w->out', '...' spelt out with lowercase letters."""
  ins, out = eqn.replace(' ', '').split('->')
  x, w = ins.split(',')
  if '...' in x:
    fill = 'abcdefghijklmnopqrstuvwxyz'[:x_ndim - (len(x) - 3)]
    x, out = x.replace('...', fill), out.replace('...', fill)
  return x, w, out


def _plan(x: str, w: str, out: str) -> tuple[str, str, str] | None:
  """(G, C, F) with w == G + C + F or G + F + C (C in any order), G as short as can be.

  None when the product is not "activation x weight" in that sense (a letter shared by
  x, w and out, or a weight axis summed alone): those fall back to `jnp.einsum`.
  """
  contracted = {c for c in w if c in x and c not in out}
  if not contracted or any(c in x and c in out for c in w) or any(
      c not in x and c not in out for c in w):
    return None
  k = len(contracted)
  for g in range(len(w) - k):
    batch, rest = w[:g], w[g:]
    if contracted & set(batch):
      return None
    if set(rest[:k]) == contracted:
      return batch, rest[:k], rest[k:]
    if set(rest[-k:]) == contracted:
      return batch, rest[-k:], rest[:-k]
  return None


def _quantize_blocks(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """float[M, C] -> (int8[M * K, C], float32[M, K, 1]): absmax int8 per block of
  ACT_BLOCK channels (K = C / ACT_BLOCK blocks, or one), one row per block.

  Row (m, k) holds row m's block k and zeros elsewhere, so one int8 GEMM gives every
  block's partial product; its K partial sums are scaled and added afterwards.
  """
  m, c = x.shape
  k = c // ACT_BLOCK if c % ACT_BLOCK == 0 else 1
  blocks = x.astype(jnp.float32).reshape(m, k, 1, c // k)
  scale = jnp.max(jnp.abs(blocks), axis=-1, keepdims=True) / 127.0
  scale = jnp.where(scale > 0, scale, 1.0)
  q = jnp.clip(jnp.round(blocks / scale), -127, 127).astype(jnp.int8)
  rows = jnp.where(jnp.eye(k, dtype=bool)[None, :, :, None], q, jnp.int8(0))
  return rows.reshape(m * k, c), scale.reshape(m, k, 1)


def weight_einsum(eqn: str, x: jax.Array, w: jax.Array | Int8Weight) -> jax.Array:
  """`jnp.einsum(eqn, x, w)` for an activation `x` and a weight `w`, reading `w` in place.

  Args:
    eqn: an einsum 'x,w->out' ('...' allowed in x and out), e.g. gm's 'BTD,NDH->BTNH'.
    x: the activation.
    w: the weight, an array or an `Int8Weight` (then W8A8, in `x.dtype`).

  Returns:
    The product, laid out as `out`.
  """
  xl, wl, outl = _letters(eqn, x.ndim)
  plan = _plan(xl, wl, outl)
  if plan is None:
    return jnp.einsum(eqn, x, meta.unbox(w))
  batch, contracted, free = plan
  size = dict(zip(xl, x.shape)) | dict(zip(wl, w.shape))
  rows = ''.join(c for c in xl if c not in contracted)
  g, c, f, m = (math.prod(size[l] for l in ls) for ls in (batch, contracted, free, rows))
  x2 = jnp.einsum(f'{xl}->{rows}{contracted}', x).reshape(m, c)
  quantized = isinstance(w, Int8Weight)
  dtype = jnp.int8 if quantized else jnp.result_type(x, w)  # jnp.einsum's promotion.
  if quantized:
    x2, x_scale = _quantize_blocks(x2)  # [M * K, C]
  # XLA:CPU sends a one-row int8 or bf16 product through a path that first converts the
  # whole weight to float32 (8x slower, measured); two rows go to an int8/bf16 GEMM.
  n = x2.shape[0]
  if n == 1 and dtype != jnp.float32:
    x2 = jnp.pad(x2, ((0, 1), (0, 0)))
  x2 = x2.astype(dtype)
  # The weight as a [C, F] or an [F, C] matrix (per G): a dot reads either in place.
  w_c = 0 if wl[len(batch):].startswith(contracted) else 1
  mat = (c, f) if w_c == 0 else (f, c)
  w_mat = (w.values if quantized else w.astype(dtype)).reshape((g, *mat) if batch else mat)
  acc = jnp.int32 if quantized else None
  if batch:  # [G, M, C] x [G, (C, F)] -> [G, M, F]
    y = jax.lax.dot_general(jnp.broadcast_to(x2, (g, *x2.shape)), w_mat,
                            (((2,), (w_c + 1,)), ((0,), (0,))), preferred_element_type=acc)
  else:  # [M, C] x [(C, F)] -> [M, F]
    y = jax.lax.dot_general(x2, w_mat, (((1,), (w_c,)), ((), ())), preferred_element_type=acc)
  y = y[..., :n, :]
  if quantized:  # Sum of the K blocks' partial products, each times its scales.
    y = y.astype(jnp.float32).reshape(*y.shape[:-2], m, -1, f)
    w_scale = w.scale.reshape((g, 1, f) if batch else (1, f))
    y = (jnp.sum(y * x_scale, axis=-2) * w_scale).astype(x.dtype)
  y = y.reshape([size[l] for l in batch + rows + free])
  return jnp.einsum(f'{batch}{rows}{free}->{outl}', y)


def _gm_einsum_interceptor(next_fun, args, kwargs, context):
  """Runs `gm.nn.Einsum.__call__(eqn, x)` as `weight_einsum`; all else unchanged."""
  module = context.module
  if not (isinstance(module, _layers.Einsum) and context.method_name == '__call__'):
    return next_fun(*args, **kwargs)
  eqn, x = args
  module.param(module.weight_name, module.initializer, module.shape, module.dtype)  # Checks it.
  return weight_einsum(eqn, x, module.get_variable('params', module.weight_name))


@contextlib.contextmanager
def intercept_gm_einsums() -> Iterator[None]:
  """Inside, `gm.nn.Einsum` layers compute with `weight_einsum` (same params, names).

  Enter it inside a `gm.nn.LoRA` wrapper (as `GemmaDecoder.__call__` does): Flax runs
  the interceptor entered last closest to the method, so LoRA's replacement of the
  Einsum by its adapter-adding wrapper happens first, and the wrapped product comes here.
  """
  with nn.intercept_methods(_gm_einsum_interceptor):
    yield


def quantize_int8(model: nn.Module, params: Any, min_size: int = 1 << 16) -> Any:
  """`params` with every weight of >= `min_size` elements read by a `gm.nn.Einsum`
  inside `model`, and the embedding table, as `Int8Weight` (same tree paths and names).

  The contracted axes of each weight come from the einsum equation `model` calls it
  with (traced once, abstractly), so the scales are per output channel whatever the
  layout: the embedding table, also the unembedding, gets one scale per token.

  Args:
    model: a module taking `GemmaDecoder`'s call keywords (`GemmaDecoder`, `UserLLM`).
    params: its params (float32 or bfloat16).
    min_size: smaller weights (norm scales, tiny test models' ones) stay as they are.

  Returns:
    The params tree to pass to `user_llm.decoding` (training expects float params).
  """
  contracted: dict[tuple[str, ...], tuple[int, ...]] = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, _layers.Einsum) and context.method_name == '__call__':
      xl, wl, outl = _letters(args[0], args[1].ndim)
      contracted[module.scope.path + (module.weight_name,)] = tuple(
          i for i, l in enumerate(wl) if l in xl and l not in outl)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda p: model.apply({'params': p}, jnp.ones((1, 2), jnp.int32)), params)

  def convert(path, leaf):
    keys = tuple(getattr(k, 'key', str(k)) for k in path)
    if keys[-1] == 'input_embedding':
      return quantize(leaf, (1,))  # [V, D]: the unembedding contracts D.
    axes = contracted.get(keys)
    if axes is None or np.size(leaf) < min_size:
      return leaf
    return quantize(leaf, axes)

  return jax.tree_util.tree_map_with_path(convert, params)

