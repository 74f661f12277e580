"""What a stage plugs into the trainer, and how a config names it.

`config.experiment` is data: the import path of an `Experiment` subclass,
`'package.module:Class'` (e.g. `'user_llm.pretrain:PretrainExperiment'`). The trainer
(`user_llm/train.py`) knows no stage; a new stage is a new class and a config naming it.

Lifecycle (docs/contracts.md, "Experiments"):
  exp = build(config, mesh)   # cheap: stores the config, builds nothing
  exp.setup()                 # data preparation, tokenizer, model (I/O happens here)
  exp.init_params / loss_fn / train_dataset / evaluate   # used by the trainer
"""

import abc
from collections.abc import Mapping
import importlib
import json
from typing import Any

import grain
import jax
import ml_collections

PyTree = Any

# Short names written by earlier versions into workdirs' config.json.
_ALIASES = {
    'pretrain': 'user_llm.pretrain:PretrainExperiment',
    'userllm': 'user_llm.userllm:UserLLMExperiment',
}


class Experiment(abc.ABC):
  """A stage. Every method the trainer traces (`init_params`, `loss_fn`) must be pure."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None):
    self.config = config
    self.mesh = mesh

  def setup(self) -> 'Experiment':
    """Prepares data and builds the model (the I/O of a run); returns self."""
    return self

  @abc.abstractmethod
  def init_params(self, rng: jax.Array) -> PyTree:
    """Fresh params from a PRNG key (pure: eval_shape'd and jitted with out_shardings)."""

  @abc.abstractmethod
  def loss_fn(self, params: PyTree, batch: Mapping[str, jax.Array],
              rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(scalar loss, scalar metrics) for one global batch; rng is already step-folded."""

  @abc.abstractmethod
  def train_dataset(self, seed: int) -> grain.DatasetIterator:
    """This host's infinite iterator of numpy train batches (checkpointable state)."""

  @abc.abstractmethod
  def evaluate(self, params: PyTree, step: int) -> dict[str, float]:
    """Evaluation metrics of `params` (run on the host, may loop over a test split)."""

  def eval_examples(self) -> dict[str, list] | None:
    """Per-example values behind the last `evaluate` (JSON-able), or None.

    The trainer writes them to WORKDIR/eval_examples.json, so benchmarks can pair
    models target by target and bootstrap over users.
    """
    return None

  def load_pretrained(self, params: PyTree) -> PyTree:
    """Hook to replace parts of fresh params by pretrained ones (only from scratch)."""
    return params

  @property
  def freeze_rules(self) -> list:
    """`optim` freeze rules (param-path regexes, or (regex, None|'adamw') pairs)."""
    return list(self.config.train.get('freeze', ()))

  @property
  def sharding_rules(self) -> list[tuple[str, tuple | None]]:
    """[(path regex, PartitionSpec-like tuple)], see user_llm/sharding.py."""
    return [tuple(r) for r in self.config.get('sharding_rules', ())]


def experiment_class(name: str) -> type[Experiment]:
  """The class named by `config.experiment` ('module:Class', or an old short name)."""
  path = _ALIASES.get(name, name)
  module, sep, cls = path.partition(':')
  if not sep:
    raise ValueError(f"config.experiment {name!r} is not 'package.module:Class'.")
  try:
    found = getattr(importlib.import_module(module), cls)
  except (ImportError, AttributeError) as e:
    raise ValueError(f'config.experiment {name!r} cannot be imported: {e}') from e
  if not (isinstance(found, type) and issubclass(found, Experiment)):
    raise ValueError(f'config.experiment {name!r} is not an Experiment subclass.')
  return found


def read_config(path: str) -> ml_collections.ConfigDict:
  """A run's config.json (`user_llm/train.py` writes it), in today's field names.

  Runs from before the rename call `config.data.history_len` (history events U before
  a target) `seq_len`: either is read, and the config comes back with `history_len`.
  """
  with open(path) as f:
    raw = json.load(f)
  data = raw.get('data')
  if isinstance(data, dict) and 'seq_len' in data:
    data.setdefault('history_len', data.pop('seq_len'))
  return ml_collections.ConfigDict(raw)


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None,
          setup: bool = True) -> Experiment:
  """`config.experiment`'s class around `config` (and set up, unless `setup=False`)."""
  exp = experiment_class(config.experiment)(config, mesh)
  return exp.setup() if setup else exp
