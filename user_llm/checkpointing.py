"""Orbax checkpoints of the train state together with the Grain iterator state.

Layout (one run):
  workdir/checkpoints/<step>/state/...      train state {step, params, opt_state}
  workdir/checkpoints/<step>/data_iter/...  Grain iterator state (JSON per process)

Resume order (`restore_or_init`): 1. the latest checkpoint of this workdir (an
existing run, e.g. after preemption or kill -9); 2. an explicit init checkpoint
(`config.train.init_checkpoint`, loaded params only, optimizer from scratch);
3. scratch, with the experiment's `load_pretrained` hook.
"""

from collections.abc import Callable, Iterator
import contextlib
import errno
import os
from typing import Any

from absl import logging
import grain
import jax
import orbax.checkpoint as ocp

STATE, DATA_ITER = 'state', 'data_iter'


class CheckpointError(RuntimeError):
  """A checkpoint or workdir that cannot be used; the message names it and the fix."""


def make_workdir(workdir: str) -> None:
  """Creates the run directory; a path that is a file, or one that cannot be created,
  is a CheckpointError naming it."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise CheckpointError(f'--workdir {workdir} is a file; give a folder (a new one, or an '
                          'earlier run to resume).')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise CheckpointError(f'Cannot create --workdir {workdir} ({e.strerror}); give a '
                          'writable folder.') from None


class Checkpointer:
  """CheckpointManager over `workdir/checkpoints` with items `state` and `data_iter`."""

  def __init__(self, workdir: str, max_to_keep: int = 2, use_async: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=use_async),
        item_names=(STATE, DATA_ITER))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  @contextlib.contextmanager
  def _disk_full_is_an_error(self, step: int | None) -> Iterator[None]:
    """A full disk while saving (now, or in the async save's thread) becomes a
    CheckpointError naming the checkpoints kept; orbax writes into a temporary folder
    and renames it when done, so the earlier checkpoints are untouched."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      cause = e
      while cause is not None and getattr(cause, 'errno', None) != errno.ENOSPC:
        cause = cause.__cause__ or cause.__context__
      if cause is None:
        raise
      kept = sorted(s for s in self.manager.all_steps() if s != step)
      resume = f'resume from step {kept[-1]}' if kept else 'start again'
      raise CheckpointError(
          f'No space left on the device of {self.directory} while saving a checkpoint'
          f'{"" if step is None else f" (step {step})"}; the checkpoints already written '
          f'are kept (steps {kept}): free space and relaunch to {resume}.') from None

  def save(self, step: int, state: Any, data_iter: grain.DatasetIterator | None) -> None:
    """Saves state and (if given) iterator state at `step`; async unless configured."""
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    with self._disk_full_is_an_error(step):
      self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract_state: Any, data_iter=None) -> Any:
    """Restores the state (onto the shardings of `abstract_state`) and the iterator in place.

    Raises:
      CheckpointError: the checkpoint cannot be read (damaged files, a partial copy);
        the message names it and the older checkpoint a relaunch would use.
    """
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**items))[STATE]
    except Exception as e:  # pylint: disable=broad-except
      where = os.path.join(self.directory, str(step))
      older = [s for s in self.manager.all_steps() if s < step]
      then = (f'to resume from step {max(older)} (kept)' if older else 'to start again')
      detail = (str(e).strip().splitlines() or [''])[0][:200]
      raise CheckpointError(
          f'Checkpoint {where} cannot be restored ({type(e).__name__}: {detail}); move it '
          f'away (mv {where} {where}.bad) {then}, or use a new --workdir if the config '
          'changed since it was written.') from e

  def wait(self) -> None:
    with self._disk_full_is_an_error(None):
      self.manager.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.manager.close()


def _state_dir(path: str, step: int | None = None) -> str:
  """Finds `<step>/state` from a workdir, a checkpoints dir, a step dir or a state dir."""
  path = os.path.abspath(path)
  if os.path.basename(path) == STATE:
    return path
  if os.path.isdir(os.path.join(path, STATE)):
    return os.path.join(path, STATE)
  ckpt_dir = os.path.join(path, 'checkpoints') if os.path.isdir(os.path.join(path, 'checkpoints')) else path
  # A read-only manager finds the finished steps (unfinished tmp dirs are skipped).
  manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    steps = manager.all_steps()
    step = manager.latest_step() if step is None else step
  finally:
    manager.close()
  if not steps:
    raise FileNotFoundError(f'No checkpoint under {path}')
  if step not in steps:
    raise FileNotFoundError(f'No checkpoint of step {step} under {path}; have {sorted(steps)}')
  return os.path.join(ckpt_dir, str(step), STATE)


def load_params(path: str, subtree: str | None = None, target: Any = None,
                step: int | None = None) -> Any:
  """Loads the params (or their `<subtree>`, '/'-separated) a checkpoint evaluates with.

  A run that keeps an exponential moving average (`config.train.ema_decay`) evaluates
  and exports `ema_params`; it is loaded in place of `params` then.

  Args:
    path: another run's workdir, its `checkpoints/` dir, a step dir or a `state` dir.
    subtree: e.g. 'user_encoder'; None loads all params.
    target: optional tree of jax.ShapeDtypeStruct (with shardings) for the subtree;
      without it arrays are restored replicated on the local devices.
    step: checkpoint step; None = latest.

  Returns:
    The parameter (sub)tree.
  """
  state_dir = _state_dir(path, step)
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(state_dir).item_metadata.tree
  keys = ['ema_params' if 'ema_params' in meta else 'params'] + (
      subtree.split('/') if subtree else [])
  for k in keys:
    meta = meta[k]
  if target is None:
    sh = jax.sharding.NamedSharding(
        jax.sharding.Mesh(jax.devices(), ('d',)), jax.sharding.PartitionSpec())
    target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sh), meta)
  for k in reversed(keys):
    target = {k: target}
  restored = ckptr.restore(
      state_dir, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
  for k in keys:
    restored = restored[k]
  return restored


def restore_or_init(ckpt: Checkpointer, abstract_state: Any, data_iter,
                    init_from_scratch: Callable[[], Any],
                    init_checkpoint: str | None = None,
                    init_state_from_params: Callable[[Any], Any] | None = None) -> tuple[Any, str]:
  """Resume order, written out: existing run -> init checkpoint -> scratch.

  Args:
    ckpt: this run's checkpointer.
    abstract_state: train state of ShapeDtypeStructs with shardings.
    data_iter: the Grain iterator, restored in place on resume.
    init_from_scratch: () -> state (sharded), including pretrained-part loading.
    init_checkpoint: optional path of another run whose params start this one.
    init_state_from_params: params -> fresh state (step 0, new optimizer state).

  Returns:
    (state, how) with how in {'resumed@<step>', 'init_checkpoint', 'scratch'}.
  """
  step = ckpt.latest_step()
  if step is not None:
    logging.info('Resuming existing run from step %d in %s', step, ckpt.directory)
    return ckpt.restore(step, abstract_state, data_iter), f'resumed@{step}'
  if init_checkpoint:
    logging.info('Initialising params from %s', init_checkpoint)
    params = load_params(init_checkpoint, target=abstract_state['params'])
    return init_state_from_params(params), 'init_checkpoint'
  logging.info('Starting from scratch.')
  return init_from_scratch(), 'scratch'
