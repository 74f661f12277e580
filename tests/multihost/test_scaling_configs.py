"""Gemma 3 1B / 4B configs (official checkpoints, FSDP, remat) and remat itself: the
loss under `config.train.remat` has the loss and grads of the plain one."""

from gemma import gm
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import movielens_pretrain
from configs import movielens_userllm
from configs import testing as test_configs
from user_llm import experiment
from user_llm import gemma_loader
from user_llm import sharding
from user_llm import testing
from user_llm import train
from user_llm import userllm
from user_llm.models import gemma as gemma_lib


@pytest.mark.parametrize('model,ckpt,params', [
    ('Gemma3_1B', gm.ckpts.CheckpointPath.GEMMA3_1B_IT, 1.00e9),
    ('Gemma3_4B', gm.ckpts.CheckpointPath.GEMMA3_4B_IT, 3.88e9)])  # Text decoder only.
def test_larger_gemma_configs(model, ckpt, params):
  c = movielens_userllm.get_config(f'model={model},strategy=lora')
  assert c.llm.model == model and c.llm.checkpoint == str(ckpt)
  params_dir, tokenizer = gemma_loader.resolve_paths(c.llm)  # gs:// kept whole.
  assert str(params_dir) == str(ckpt) and str(tokenizer) == gm.text.Gemma3Tokenizer.path
  assert dict(c.mesh) == {'data': 1, 'fsdp': -1, 'tensor': 1}
  assert hasattr(jax.checkpoint_policies, c.train.remat)
  shapes = jax.eval_shape(gemma_lib.GemmaDecoder(userllm.decoder_config(c.llm)).init,
                          jax.random.key(0), jnp.ones((1, 1), jnp.int32))
  n = sum(x.size for x in jax.tree.leaves(shapes))
  assert abs(n - params) / params < 0.02, n
  assert movielens_userllm.get_config().train.remat == ''  # 270M: no remat.


def test_remat_gives_the_same_loss_and_grads(tmp_path):
  stage1 = tmp_path / 'stage1'
  stage1.mkdir()  # config.json only: the encoder's architecture (random_encoder).
  (stage1 / 'config.json').write_text(
      movielens_pretrain.get_config('runlocal').to_json_best_effort())
  c = test_configs.tiny_userllm_config('strategy=full,random_encoder')
  c.data.path = str(testing.write_movielens(tmp_path / 'ml'))
  c.data.cache_dir, c.userllm.encoder_workdir = str(tmp_path / 'cache'), str(stage1)
  exp = experiment.build(c, sharding.make_mesh(c.mesh))
  params = jax.jit(exp.init_params)(jax.random.key(0))
  batch, rng = next(exp.train_dataset(0)), jax.random.key(1)
  out = [jax.jit(jax.value_and_grad(loss, has_aux=True))(params, batch, rng) for loss in (
      exp.loss_fn, train.remat_loss(exp.loss_fn, 'dots_with_no_batch_dims_saveable'))]
  (loss, _), grads = out[0]
  (remat_loss, _), remat_grads = out[1]
  assert abs(float(loss) - float(remat_loss)) <= 1e-6
  assert max(float(np.max(np.abs(a - b))) for a, b in
             zip(jax.tree.leaves(grads), jax.tree.leaves(remat_grads))) <= 1e-6
  with pytest.raises(ValueError, match='not a jax.checkpoint_policies name'):
    train.remat_loss(exp.loss_fn, 'nothing_at_all')
