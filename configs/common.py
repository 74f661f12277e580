"""Helpers shared by configs (big_vision `configs/common.py` style)."""

import ml_collections


def parse_arg(arg: str | None, lazy: bool = False, **spec) -> ml_collections.ConfigDict:
  """Parses 'runlocal,variant=late,steps=100' into a ConfigDict, typed by `spec`.

  Args:
    arg: the string after ':' in `--config configs/x.py:ARG` (None or '' = defaults).
    lazy: accept keys not in `spec` (kept as strings).
    **spec: known keys and their defaults; a bare word sets a bool key to True.

  Returns:
    ConfigDict of `spec` updated by `arg`.
  """
  out = ml_collections.ConfigDict(spec)
  for part in filter(None, (arg or '').split(',')):
    key, sep, value = part.partition('=')
    if key not in spec and not lazy:
      raise ValueError(f'Unknown config arg {key!r}; known: {sorted(spec)}')
    default = spec.get(key)
    if not sep:
      if default is not None and not isinstance(default, bool):
        raise ValueError(f'Config arg {key!r} needs a value ({key}=...).')
      out[key] = True
    elif isinstance(default, bool):
      out[key] = value.lower() in ('1', 'true', 'yes')
    elif default is not None:
      out[key] = type(default)(value)
    else:
      out[key] = value
  return out


# Config args naming the data files (`configs/x.py:reviews_file=FILE`), for every dataset.
DATA_FILE_ARGS = dict(path='', reviews_file='', meta_file='')


def set_data_files(data: ml_collections.ConfigDict, a: ml_collections.ConfigDict) -> None:
  """Copies the DATA_FILE_ARGS given in `a` into `data` (the config.data section)."""
  for key in DATA_FILE_ARGS:
    if a[key]:
      data[key] = a[key]


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1):
  """Mesh axes; -1 takes the remaining devices.

  A tuple, so that the command line can set it:
  `--config.mesh="(('data', 2), ('fsdp', 4), ('tensor', 1))"` (config_flags cannot
  override a list).
  """
  return (('data', data), ('fsdp', fsdp), ('tensor', tensor))


def encoder_sharding_rules():
  """(path regex, spec per dim) for user-encoder / baseline params; first match wins."""
  return [
      (r'.*embed_.*/embedding', ('fsdp', 'tensor')),  # [V, E]
      (r'.*attn/(q|k|v)', ('fsdp', 'tensor', None)),  # [D, N, H]
      (r'.*attn/out', ('tensor', None, 'fsdp')),  # [N, H, D]
      (r'.*mlp/wi/kernel', ('fsdp', 'tensor')),  # [D, F]
      (r'.*mlp/wo/kernel', ('tensor', 'fsdp')),  # [F, D]
      (r'.*heads/.*/kernel', ('fsdp', 'tensor')),  # [D, V]
      (r'.*', None),  # Everything else replicated.
  ]


def gemma_cache_dir() -> str:
  """Where the offline Gemma 3 270M is converted once ($USER_LLM_GEMMA_CACHE overrides)."""
  import os  # pylint: disable=g-import-not-at-top
  return os.environ.get('USER_LLM_GEMMA_CACHE', os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'user_llm', 'gemma3_270m'))


def gemma_sharding_rules():
  """(path regex, spec per dim) for the Gemma decoder and stage-2 blocks (gm layouts)."""
  return [
      (r'decoder/embedder/input_embedding', ('tensor', 'fsdp')),  # [V, D]
      (r'.*q_einsum(/w)?', ('tensor', 'fsdp', None)),  # [N, D, H]
      (r'.*kv_einsum(/w)?', (None, None, 'fsdp', None)),  # [2, K, D, H]
      (r'.*attn_vec_einsum(/w)?', ('tensor', None, 'fsdp')),  # [N, H, D]
      (r'.*gating_einsum', (None, 'tensor', 'fsdp')),  # [2, F, D]
      (r'.*mlp/linear', ('tensor', 'fsdp')),  # [F, D]
  ]
