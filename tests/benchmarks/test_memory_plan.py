"""The memory plan's arithmetic and its resumable cell file (the compiles themselves
run in `python -m benchmarks.memory_plan`, minutes per cell)."""

import json

import pytest

from benchmarks import memory_plan as mp


def test_bilinear_is_exact_on_bilinear_memory():
  def m(layers, batch):
    return 100.0 + 7.0 * layers + 3.0 * batch + 0.5 * layers * batch
  points = {(l, b): m(l, b) for l in mp.LAYERS for b in mp.PER_DEVICE}
  for layers, batch in ((18, 0), (26, 1), (48, 200)):
    assert mp._bilinear(points, layers, batch) == pytest.approx(m(layers, batch))


def _row(**kw):
  return {'model': 'Gemma3_270M', 'strategy': 'enc', 'slice': 'v5e-8', 'layers': 18,
          'state_gib': 0.1, 'gib_at_min': 1.5, 'per_example_mib': 100.0,
          'max_global_batch': 800, 'compile_s': 60.0, 'step_s': 0.03,
          'examples_per_s': 26000.0, **kw}


def test_cells_resume_and_bad_lines_name_the_file_and_line(tmp_path):
  cells = tmp_path / 'cells.jsonl'
  assert not mp._load_cells(str(cells))
  cells.write_text(json.dumps(_row()) + '\n' + json.dumps(_row(strategy='lora')) + '\n')
  done = mp._load_cells(str(cells))
  assert set(done) == {('Gemma3_270M', 'enc', 'v5e-8'), ('Gemma3_270M', 'lora', 'v5e-8')}
  cells.write_text(json.dumps(_row()) + '\n{"model": "x"}\n')
  with pytest.raises(ValueError, match=r'cells.jsonl:2'):
    mp._load_cells(str(cells))


def test_markdown_rows_and_what_does_not_fit():
  rows = [_row(), _row(model='Gemma3_12B', strategy='full', max_global_batch=0)]
  text = mp.markdown(rows, None, 120.0, 36)
  assert '| Gemma3_270M | enc | v5e-8 | 0.10 | 1.50 | 100.0 | 800 | 0.030 | 26,000 |' in text
  assert '| Gemma3_12B | full | v5e-8 | 0.10 | 1.50 | 100.0 | does not fit | - | - |' in text
  assert '2 of 36 cells so far' in text
