"""Trainer side of the bad-input matrix: a corrupt checkpoint, a non-finite loss and a
full disk while checkpointing each stop with a clear error, and the checkpoints already
written stay (a relaunch resumes from them)."""

import errno
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import movielens_pretrain
from user_llm import checkpointing
from user_llm import experiment
from user_llm import pretrain
from user_llm import train


def _config(steps):
  """Stage 1 on synthetic data: checkpoints at steps 2, 4, ... (two kept)."""
  cfg = movielens_pretrain.get_config('runlocal,synthetic')
  cfg.train.num_steps, cfg.train.ckpt_every, cfg.train.keep_checkpoints = steps, 2, 2
  cfg.train.async_checkpoint = False
  cfg.eval.max_batches = 1
  return cfg


def _resumed(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)['resumed']


def test_corrupt_checkpoint_names_it_and_keeps_the_older_one(tmp_path):
  train.train_and_evaluate(_config(4), str(tmp_path))
  ck = tmp_path / 'checkpoints'
  assert sorted(os.listdir(ck)) == ['2', '4']
  for f in (ck / '4' / 'state').rglob('*'):  # Damaged array data (a bad disk, a bad copy).
    if f.is_file() and f.parent.name == 'd':
      f.write_bytes(b'\0garbage' * 8)
  with pytest.raises(checkpointing.CheckpointError, match=(
      rf'Checkpoint {ck}/4 cannot be restored \(.*\); move it away \(mv {ck}/4 {ck}/4.bad\) '
      r'to resume from step 2 \(kept\), or use a new --workdir if the config changed')):
    train.train_and_evaluate(_config(6), str(tmp_path))
  assert sorted(os.listdir(ck)) == ['2', '4']  # Nothing deleted.
  os.rename(ck / '4', ck / '4.bad')  # The fix the message gives.
  train.train_and_evaluate(_config(6), str(tmp_path))
  assert _resumed(tmp_path) == 'resumed@2'


class _NanFromStep3(pretrain.PretrainExperiment):
  """Stage 1 whose loss is NaN from the third step on (the step is only visible
  through the rng the trainer folds it into)."""

  def loss_fn(self, params, batch, rng):
    loss, metrics = super().loss_fn(params, batch, rng)
    train_rng = jax.random.split(jax.random.key(self.config.train.seed))[1]
    late = [jnp.all(jax.random.key_data(rng) ==
                    jax.random.key_data(jax.random.fold_in(train_rng, s))) for s in range(2, 8)]
    return jnp.where(jnp.any(jnp.stack(late)), jnp.nan, loss), metrics


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  monkeypatch.setattr(experiment, 'build', lambda c, m: _NanFromStep3(c, m).setup())
  with pytest.raises(FloatingPointError, match=(
      rf'Non-finite loss nan at step 3\. The last good checkpoint, step 2, is kept in '
      rf'{tmp_path}/checkpoints: a relaunch resumes from it')):
    train.train_and_evaluate(_config(6), str(tmp_path))
  assert os.listdir(tmp_path / 'checkpoints') == ['2']
  params = checkpointing.load_params(str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_full_disk_while_checkpointing(tmp_path, monkeypatch):
  real = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 4:  # Half written, then the disk is full.
      os.makedirs(os.path.join(self.directory, '4.orbax-checkpoint-tmp-1', 'state'))
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  with pytest.raises(checkpointing.CheckpointError, match=(
      rf'No space left on the device of {tmp_path}/checkpoints while saving a checkpoint '
      r'\(step 4\); the checkpoints already written are kept \(steps \[2\]\): free space '
      'and relaunch to resume from step 2')):
    train.train_and_evaluate(_config(4), str(tmp_path))
  monkeypatch.undo()  # Space freed.
  train.train_and_evaluate(_config(4), str(tmp_path))
  assert _resumed(tmp_path) == 'resumed@2'
  assert '4' in os.listdir(tmp_path / 'checkpoints')
