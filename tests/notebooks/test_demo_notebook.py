"""notebooks/user_llm_demo.ipynb runs top to bottom on CPU (nbclient, an ipykernel) and
is committed without outputs."""

import time

import nbclient
import nbformat

from user_llm import testing

NOTEBOOK = testing.ROOT / 'notebooks' / 'user_llm_demo.ipynb'


def test_committed_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert code and all(not c.outputs and c.execution_count is None for c in code)


# Executed top to bottom in about 2 min on the idle 2-core machine (2026-12-01).
def test_runs_top_to_bottom(tmp_path, monkeypatch):
  monkeypatch.setenv('USER_LLM_DEMO_WORKDIR', str(tmp_path))
  monkeypatch.setenv('USER_LLM_REPO', str(testing.ROOT))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  t0 = time.time()
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(testing.ROOT)}}).execute()
  wall = time.time() - t0
  text = '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                   for o in c.outputs)
  assert 'with user embeddings:' in text and 'without (gates at 0):' in text, text[-3000:]
  images = sum('image/png' in o.get('data', {}) for c in nb.cells for o in c.get('outputs', []))
  assert images == 2  # The gate values and the efficiency curve.
  print(f'notebook executed in {wall:.0f} s')
  # The budget: 4 minutes on a 2-core machine (measured: about 2; README).
  assert wall < 240, wall
