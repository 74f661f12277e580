"""One training step on 8 simulated CPU devices matches the 1-device step (1e-5)."""

import os
import pathlib
import subprocess
import sys
import tempfile

from user_llm import testing

ROOT = pathlib.Path(__file__).resolve().parents[2]


launcher_env = testing.launcher_env


SCRIPT = r'''
import jax, numpy as np
from jax.sharding import PartitionSpec as P
from configs import movielens_pretrain
from user_llm import experiment, sharding, train

assert jax.device_count() == 8, jax.devices()


def one_step(mesh_shape, devices, fusion):
  c = movielens_pretrain.get_config('runlocal,synthetic,fusion=' + fusion)
  c.train.batch_size = 8
  c.mesh = list(zip(('data', 'fsdp', 'tensor'), mesh_shape))
  mesh = sharding.make_mesh(c.mesh, devices)
  exp = experiment.build(c, mesh)
  init_rng, rng = jax.random.split(jax.random.key(0))
  setup = train.create_train_state(c, mesh, exp, init_rng)
  state = setup.from_scratch()
  batch = sharding.shard_batch(next(exp.train_dataset(0)), mesh)
  step = train.make_train_step(exp, setup.tx, setup.state_shardings,
                               {k: v.sharding for k, v in batch.items()}, mesh)
  state, metrics = step(state, batch, rng)
  return float(metrics['loss']), state['params']


for fusion in ('early',):  # Late fusion shares every sharded layer type.
  ref_loss, ref = one_step((1, 1, 1), jax.devices()[:1], fusion)
  ref = jax.device_get(ref)
  for shape in ((8, 1, 1), (2, 4, 1), (2, 2, 2)):
    loss, params = one_step(shape, jax.devices(), fusion)
    if shape == (2, 2, 2) and fusion == 'early':  # The rules really shard.
      q = params['user_encoder']['transformer']['layer_0']['attn']['q']
      assert q.sharding.spec == P('fsdp', 'tensor', None), q.sharding
    diff = max(float(np.max(np.abs(np.asarray(a) - b))) for a, b in
               zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref)))
    print(fusion, shape, 'loss', loss, ref_loss, 'max param diff', diff)
    assert abs(loss - ref_loss) < 1e-5, (shape, loss, ref_loss)
    assert diff < 1e-5, (shape, diff)
print('OK')
'''


def test_meshes_match_single_device():
  proc = subprocess.run(
      [sys.executable, '-c', SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=launcher_env(XLA_FLAGS='--xla_force_host_platform_device_count=8'))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  assert proc.stdout.strip().endswith('OK'), proc.stdout
