"""End to end: training steps, checkpoints, resume order, kill -9 bit-exact resume."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from user_llm import testing
from user_llm import checkpointing, experiment, pretrain, train

ROOT = pathlib.Path(__file__).resolve().parents[2]


launcher_env = testing.launcher_env


def _tree_equal(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_train_checkpoint_resume_and_init(tiny_config, tmp_path):
  c = tiny_config
  c.train.num_steps = 4
  run = str(tmp_path / 'run')
  metrics = train.train_and_evaluate(c, run)
  assert {'recall@1', 'recall@5', 'recall@10', 'ndcg@10', 'acc_item', 'unseen/recall@10',
          'recall@10_lo', 'recall@10_hi', 'users'} <= set(metrics)
  assert metrics['recall@10_lo'] <= metrics['recall@10'] <= metrics['recall@10_hi']
  # Excluding the user's past can only move the target up.
  assert metrics['unseen/recall@10'] >= metrics['recall@10']
  with open(os.path.join(run, 'eval_examples.json')) as f:
    examples = json.load(f)
  assert len(examples['user']) == len(examples['recall@10']) == metrics['examples']
  assert np.mean(examples['recall@10']) == pytest.approx(metrics['recall@10'])
  assert sorted(os.listdir(os.path.join(run, 'checkpoints')))[-1] == '4'
  assert any(f.startswith('events') for f in os.listdir(os.path.join(run, 'tb')))
  encoder = checkpointing.load_params(run, 'user_encoder')
  assert 'transformer' in encoder and 'embed_item' in encoder
  # An existing run resumes.
  c.train.num_steps = 6
  train.train_and_evaluate(c, run)
  with open(os.path.join(run, 'results.json')) as f:
    assert json.load(f)['resumed'] == 'resumed@4'
  # A new run starts from the init checkpoint's params; a FLOP budget (XLA cost
  # analysis of each step) smaller than two steps ends it after one.
  c.train.init_checkpoint = run
  c.train.num_steps = 5
  c.train.flop_budget = 1.0
  train.train_and_evaluate(c, str(tmp_path / 'from_init'))
  with open(tmp_path / 'from_init' / 'results.json') as f:
    res = json.load(f)
  assert res['resumed'] == 'init_checkpoint'
  assert res['step'] == 1 and res['train_gflop'] > 0 and res['compiled_shapes'] == 1


def test_non_finite_loss_names_the_step(tiny_config, tmp_path, monkeypatch):

  class NanExperiment(pretrain.PretrainExperiment):

    def loss_fn(self, params, batch, rng):
      loss, m = super().loss_fn(params, batch, rng)
      return loss * np.nan, m

  monkeypatch.setattr(experiment, 'build', lambda c, m: NanExperiment(c, m).setup())
  with pytest.raises(FloatingPointError, match='at step 1'):
    train.train_and_evaluate(tiny_config, str(tmp_path))


def _launch(workdir, steps):
  return subprocess.Popen(
      [sys.executable, '-m', 'launch.main',
       '--config=configs/movielens_pretrain.py:runlocal,synthetic',
       f'--config.train.num_steps={steps}', '--config.train.ckpt_every=20',
       '--config.train.log_every=50', '--config.eval.max_batches=1', f'--workdir={workdir}'],
      cwd=ROOT, env=launcher_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_kill9_resume_is_bit_exact(tmp_path):
  steps = 400
  killed, clean = tmp_path / 'killed', tmp_path / 'clean'
  proc = _launch(killed, steps)
  ckpts = killed / 'checkpoints'
  deadline = time.time() + 240
  while not (ckpts.is_dir() and any(d.isdigit() for d in os.listdir(ckpts))):
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    assert time.time() < deadline
    time.sleep(0.02)
  os.kill(proc.pid, signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  first = min(int(d) for d in os.listdir(ckpts) if d.isdigit())
  assert first < steps
  for p in (_launch(killed, steps), _launch(clean, steps)):
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-3000:]
  with open(killed / 'results.json') as f:
    assert json.load(f)['resumed'].startswith('resumed@')
  a = checkpointing.load_params(str(killed))
  b = checkpointing.load_params(str(clean))
  assert _tree_equal(a, b)


def test_ema_update_numerics():
  ema, params = {'w': np.zeros(3, np.float32)}, {'w': np.ones(3, np.float32)}
  # Warm-up: d = min(decay, (1 + step) / (10 + step)) = 0.1 at step 0.
  out = train.ema_update(ema, params, jax.numpy.asarray(0), 0.999)
  np.testing.assert_allclose(out['w'], 0.9)
  # Late in training d = decay.
  out = train.ema_update(ema, params, jax.numpy.asarray(10**6), 0.99)
  np.testing.assert_allclose(out['w'], 0.01, rtol=1e-5)


def test_ema_is_what_a_run_evaluates_and_exports(tiny_config, tmp_path):
  c = tiny_config
  c.train.num_steps = 4
  c.train.ema_decay = 0.9
  run = str(tmp_path / 'run')
  train.train_and_evaluate(c, run)
  state_dir = os.path.join(run, 'checkpoints', '4', 'state')
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  state = ocp.PyTreeCheckpointer().restore(state_dir)
  exported = checkpointing.load_params(run)
  assert _tree_equal(exported, state['ema_params'])
  assert not _tree_equal(exported, state['params'])
  # Resuming keeps the average (a checkpointed part of the state).
  c.train.num_steps = 5
  train.train_and_evaluate(c, run)
  with open(os.path.join(run, 'results.json')) as f:
    assert json.load(f)['resumed'] == 'resumed@4'
