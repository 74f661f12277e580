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


_CONVERT_CHILD = '''
import json, pathlib, sys, time
from user_llm import gemma_gguf, gemma_loader
log = pathlib.Path(sys.argv[2])
def slow(name):
  def step(*args, **kwargs):
    with log.open('a') as f:
      f.write(json.dumps([name, 'in', time.time()]) + chr(10))
    time.sleep(0.5)
    with log.open('a') as f:
      f.write(json.dumps([name, 'out', time.time()]) + chr(10))
    return pathlib.Path(sys.argv[1]) / name
  return step
gemma_gguf.packaged_gguf_path = slow('gguf')
gemma_gguf.convert = slow('convert')
gemma_loader.converted_paths(sys.argv[1])
'''


def test_processes_converting_at_once_take_turns(tmp_path):
  """Two benchmark rows started together once wrote the same GGUF at once (the second
  read a half-written file); assembly and conversion now run under a file lock."""
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from user_llm import testing as ul_testing  # pylint: disable=g-import-not-at-top
  log = tmp_path / 'log.jsonl'
  procs = [subprocess.Popen([sys.executable, '-c', _CONVERT_CHILD, str(tmp_path / 'cache'),
                             str(log)], env=ul_testing.launcher_env()) for _ in range(2)]
  assert [p.wait(timeout=300) for p in procs] == [0, 0]
  events = sorted((json.loads(l) for l in log.read_text().splitlines()), key=lambda e: e[2])
  # Each process's gguf-in .. convert-out section ends before the other's begins.
  assert [e[:2] for e in events] == [['gguf', 'in'], ['gguf', 'out'], ['convert', 'in'],
                                     ['convert', 'out']] * 2
