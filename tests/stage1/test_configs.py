"""Every configs/*.py builds in runlocal form; a misspelt --config key fails loudly."""

import importlib.util
import os
import pathlib
import subprocess
import sys
import tempfile

import ml_collections
import pytest


from user_llm import testing

ROOT = pathlib.Path(__file__).resolve().parents[2]


launcher_env = testing.launcher_env


CONFIG_FILES = sorted(p for p in (ROOT / 'configs').glob('*.py')
                      if 'def get_config' in p.read_text())


@pytest.mark.parametrize('path', CONFIG_FILES, ids=lambda p: p.name)
def test_config_builds_runlocal(path):
  spec = importlib.util.spec_from_file_location(f'_cfg_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('runlocal')
  assert isinstance(config, ml_collections.ConfigDict)
  assert 'experiment' in config and 'train' in config and 'mesh' in config
  config.lock()  # What config_flags does: must not fail.


def test_pretrain_variants_build():
  from configs import movielens_pretrain  # pylint: disable=g-import-not-at-top
  for arg in ('model=ar,fusion=late', 'model=dual', 'model=bert4rec', 'model=popularity',
              'runlocal,synthetic,steps=3', 'protocol=multi_target', 'protocol=full_window',
              'protocol=selection', 'future=5'):
    movielens_pretrain.get_config(arg)
  assert movielens_pretrain.get_config('protocol=multi_target').data.test_events == 5
  # Selection with 5 targets per user reads none of (b)'s test targets (hence none of (a)'s).
  sel = movielens_pretrain.get_config('protocol=selection_multi').data
  assert sel.drop_last_events == movielens_pretrain.PROTOCOLS['multi_target']['test_events']
  assert sel.test_events == 5 and sel.protocol == 'selection_multi'
  assert movielens_pretrain.get_config('future=5').model.future_targets == 5
  with pytest.raises(ValueError, match='protocol'):
    movielens_pretrain.get_config('protocol=loo')
  with pytest.raises(ValueError, match='modle'):
    movielens_pretrain.get_config('modle=ar')


def test_userllm_variants_build():
  from configs import movielens_userllm  # pylint: disable=g-import-not-at-top
  for mode in ('cross_attention', 'soft_prompt', 'text_prompt'):
    for strategy in ('full', 'lora', 'enc', 'proj'):
      config = movielens_userllm.get_config(f'mode={mode},strategy={strategy},latents=16')
      assert config.userllm.mode == mode and config.userllm.strategy == strategy
  # The stage-1 encoder's max_len is its history_len: 200 events load the 200-event run.
  assert movielens_userllm.get_config('').userllm.encoder_workdir.endswith(
      'stage1/standard/ar_early_s0')
  long = movielens_userllm.get_config('history_len=200,mode=text_prompt')
  assert long.userllm.encoder_workdir.endswith('stage1_ar_early_L200')
  assert long.data.max_prompt_tokens >= 22 * 200  # ~22 Gemma tokens per event.
  other = movielens_userllm.get_config('encoder=/runs/stage1_seen,history_len=200')
  assert other.userllm.encoder_workdir == '/runs/stage1_seen'  # encoder= wins.
  # k test targets per user (the stage-2 multi-target rows); one by default.
  assert movielens_userllm.get_config('').data.test_events == 1
  assert movielens_userllm.get_config('test_events=5').data.test_events == 5
  # The model-selection split (last 5 events dropped) and the encoder's lr factor.
  sel = movielens_userllm.get_config('drop_last=5,test_events=5,enc_lr=0.1')
  assert sel.data.drop_last_events == 5
  assert sel.train.lr_scale == [('.*_gate', 10.0), ('user_encoder/.*', 0.1)]
  assert movielens_userllm.get_config('').data.drop_last_events == 0
  with pytest.raises(ValueError, match='strategy'):
    movielens_userllm.get_config('strategy=enc,stratgy=full')


def test_misspelt_override_names_the_key(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'launch.main',
       '--config=configs/movielens_pretrain.py:runlocal,synthetic',
       '--config.train.num_stepz=3', f'--workdir={tmp_path}'],
      cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=300)  # Slow on a busy CPU.
  assert proc.returncode != 0
  assert 'num_stepz' in proc.stderr
  assert not (tmp_path / 'checkpoints').exists()
