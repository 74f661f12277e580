"""Bad inputs to the Gemma conversion and loading stop with the path and the key."""

from gemma import gm
import jax
import jax.numpy as jnp
import pytest

from user_llm import gemma_gguf
from user_llm import gemma_loader
from user_llm.models import gemma as gemma_lib
from configs import testing


def test_missing_gguf_names_path(tmp_path):
  missing = tmp_path / 'nope.gguf'
  with pytest.raises(FileNotFoundError, match=str(missing)):
    gemma_gguf.convert(missing, tmp_path / 'out')


def test_corrupt_gguf_names_path(tmp_path):
  bad = tmp_path / 'bad.gguf'
  bad.write_bytes(b'GGUF' + b'\x00' * 64)
  with pytest.raises(ValueError, match=str(bad)):
    gemma_gguf.convert(bad, tmp_path / 'out')


def test_missing_checkpoint_names_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'none')):
    gemma_loader.load_params(tmp_path / 'none', testing.tiny_gemma_config(), 'float32')


def test_corrupt_checkpoint_names_path(tmp_path):
  junk = tmp_path / 'junk'
  junk.mkdir()
  (junk / '_METADATA').write_text('{not json')
  with pytest.raises(ValueError, match=str(junk)):
    gemma_loader.load_params(junk, testing.tiny_gemma_config(), 'float32')


def _save_tiny(path, cfg):
  params = gemma_lib.GemmaDecoder(cfg).init(jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32))
  gm.ckpts.save_params(params['params'], path, wait_until_finished=True)


def test_tree_mismatch_names_first_key(tmp_path):
  _save_tiny(tmp_path / 'ckpt', testing.tiny_gemma_config(num_layers=2))
  with pytest.raises(ValueError, match=r'ckpt.*first mismatch at layer_2 \(missing'):
    gemma_loader.load_params(tmp_path / 'ckpt', testing.tiny_gemma_config(num_layers=4), 'float32')


def test_shape_mismatch_names_key(tmp_path):
  _save_tiny(tmp_path / 'ckpt', testing.tiny_gemma_config(vocab=64))
  with pytest.raises(ValueError, match=r'embedder/input_embedding \(shape \(64, 32\)'):
    gemma_loader.load_params(tmp_path / 'ckpt', testing.tiny_gemma_config(vocab=80), 'float32')


def test_round_trip_loads_same_params(tmp_path):
  cfg = testing.tiny_gemma_config()
  params = gemma_lib.GemmaDecoder(cfg).init(jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32))
  gm.ckpts.save_params(params['params'], tmp_path / 'ckpt', wait_until_finished=True)
  got = gemma_loader.load_params(tmp_path / 'ckpt', cfg, 'float32')
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params['params'], got))


def test_unknown_model_name():
  with pytest.raises(ValueError, match='Gemma3_999M'):
    gemma_lib.gemma_config('Gemma3_999M')
