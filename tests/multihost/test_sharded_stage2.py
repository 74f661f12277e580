"""Stage 2 (tiny Gemma + gated cross-attention) sharded fsdp x tensor on 8 simulated
CPU devices gives the unsharded loss and grads (<= 1e-5, float32)."""

import pathlib
import subprocess
import sys

from configs import movielens_pretrain
from user_llm import testing

HERE = pathlib.Path(__file__).resolve().parent


def stage1_config_only(workdir: pathlib.Path) -> pathlib.Path:
  """A stage-1 workdir holding only config.json: enough for `random_encoder` stage 2."""
  workdir.mkdir(parents=True, exist_ok=True)
  cfg = movielens_pretrain.get_config('runlocal')  # history_len 8 = the tiny stage 2's.
  (workdir / 'config.json').write_text(cfg.to_json_best_effort())
  return workdir


def test_fsdp_tensor_meshes_match_unsharded(tmp_path):
  data = testing.write_movielens(tmp_path / 'ml')
  stage1 = stage1_config_only(tmp_path / 'stage1')
  proc = subprocess.run(
      [sys.executable, str(HERE / 'sharded_stage2_worker.py'), str(data), str(stage1),
       str(tmp_path / 'cache')], cwd=testing.ROOT, capture_output=True, text=True, timeout=300,
      env=testing.launcher_env(XLA_FLAGS='--xla_force_host_platform_device_count=8'))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  assert proc.stdout.strip().endswith('OK'), proc.stdout
  print(proc.stdout)
