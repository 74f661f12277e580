"""AdamW with warmup + cosine decay, and freezing by parameter-path regex.

`config.train.freeze` accepts either a list of regexes (matching parameters are
frozen, the rest use 'adamw') or big_vision-style `[(regex, name), ...]` where name
is 'adamw' or None (frozen); the first matching rule wins, unmatched parameters are
trained. Frozen parameters go through `optax.set_to_zero()` inside
`optax.multi_transform`, so they carry no optimizer state at all.
"""

import re
from typing import Any

import optax
import jax

from user_llm import sharding

FROZEN = 'frozen'


def schedule(cfg) -> optax.Schedule:
  """Linear warmup from 0 to `cfg.lr` over `cfg.warmup` steps, then cosine to lr*min_lr_ratio."""
  total = max(int(cfg.num_steps), int(cfg.warmup) + 1)
  return optax.warmup_cosine_decay_schedule(
      0.0, cfg.lr, int(cfg.warmup), total, end_value=cfg.lr * cfg.get('min_lr_ratio', 0.0))


def normalise_rules(freeze) -> list[tuple[str, str]]:
  """Both accepted freeze formats -> [(regex, 'adamw' | 'frozen')] ending in a catch-all."""
  rules = []
  for r in freeze or ():
    if isinstance(r, str):
      rules.append((r, FROZEN))
    else:
      pattern, name = r
      rules.append((pattern, FROZEN if name is None else str(name)))
  return rules + [('.*', 'adamw')]


def labels(params: Any, freeze) -> Any:
  """Tree of labels ('adamw' | 'frozen'), one per parameter."""
  rules = normalise_rules(freeze)

  def label(path, _):
    p = sharding.path_str(path)
    return next(name for pattern, name in rules if re.fullmatch(pattern, p))
  return jax.tree_util.tree_map_with_path(label, params)


def _decay_mask(params):
  # No weight decay on biases, norm scales and other vectors.
  return jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)


def _scaled_schedule(cfg, factor: float) -> optax.Schedule:
  base = schedule(cfg)
  return base if factor == 1.0 else (lambda step: factor * base(step))


def make(cfg, params: Any, freeze=None) -> optax.GradientTransformation:
  """The optimizer for `params` (arrays or ShapeDtypeStructs) from `config.train`.

  `freeze`: the experiment's freeze rules (`Experiment.freeze_rules`); None reads
  `cfg.freeze`.

  `cfg.lr_scale` (optional) is [(regex, factor)]: matching trainable parameters use
  lr * factor (e.g. the stage-2 gates, scalars that plain AdamW moves by ~lr a step).
  """
  def adamw(factor):
    return optax.chain(
        optax.clip_by_global_norm(cfg.get('grad_clip', 1.0)),
        optax.adamw(_scaled_schedule(cfg, factor), b1=cfg.get('b1', 0.9),
                    b2=cfg.get('b2', 0.999), weight_decay=cfg.get('weight_decay', 0.0),
                    mask=_decay_mask))
  lab = labels(params, cfg.get('freeze', None) if freeze is None else freeze)
  scales = [(str(r), float(f)) for r, f in (cfg.get('lr_scale', None) or ())]

  def scaled(path, label):
    if label != 'adamw':
      return label
    p = sharding.path_str(path)
    f = next((f for r, f in scales if re.fullmatch(r, p)), 1.0)
    return 'adamw' if f == 1.0 else f'adamw_x{f:g}'
  lab = jax.tree_util.tree_map_with_path(scaled, lab)
  used = set(jax.tree_util.tree_leaves(lab))
  unknown = {u for u in used if u != FROZEN and not u.startswith('adamw')}
  if unknown:
    raise ValueError(f'Unknown optimizer names in config.train.freeze: {unknown}')
  transforms = {FROZEN: optax.set_to_zero(), 'adamw': adamw(1.0)}
  for _, f in scales:
    transforms[f'adamw_x{f:g}'] = adamw(f)
  return optax.multi_transform(transforms, lab)
