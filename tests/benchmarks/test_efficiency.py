"""The efficiency benchmark's measurements on a tiny Gemma: counted, growing, flat."""

from flax.core import FrozenDict
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import efficiency_lib as lib
from benchmarks import efficiency
from user_llm.models import gemma as gemma_lib
from configs import testing

VOCABS = FrozenDict(item=20, genre=6, rating=7)
LENGTHS = (8, 32)
QUERY = np.array([5, 9, 11, 7], np.int32)
EVENT_TOKENS = 6  # Text tokens per history event in the fake serialisation.


def _user(u):
  rng = np.random.default_rng(u)
  feats = {f: jnp.asarray(rng.integers(2, v, (1, u)), jnp.int32) for f, v in VOCABS.items()}
  return feats, jnp.ones((1, u), bool)


CONFIG = testing.tiny_gemma_config()
_PARAMS = {}


def _costs(method, u, timer):
  model = efficiency.build_model(CONFIG, VOCABS, method, max(LENGTHS), xattn_every=2)
  feats, mask = _user(u)
  if method not in _PARAMS:  # Equal models share params (and the benchmark's executables).
    dec = gemma_lib.GemmaDecoder(CONFIG).init(jax.random.PRNGKey(1), jnp.ones((1, 2), jnp.int32))
    _PARAMS[method] = efficiency.init_params(model, dec['params'], feats, mask)
  params = _PARAMS[method]
  if method == 'text':
    history = np.random.default_rng(0).integers(3, 60, u * EVENT_TOKENS).astype(np.int32)
    prompt = np.concatenate([[2], history, QUERY])
    cached = len(prompt) - len(QUERY)
  else:
    prompt = np.concatenate([[2], QUERY])
    cached = {'soft': u, 'soft+perceiver': 16}.get(method, -1) + 1
  return lib.measure_cell(model, params, feats, mask, prompt, QUERY, cached, batch=1,
                          timer=timer, max_new_tokens=4)


@pytest.mark.parametrize('method', ['text', 'xattn+perceiver'])
def test_counts_growth_and_flat_cached_query(method):
  timer = lib.Timer(enabled=False)
  small, large = (_costs(method, u, timer) for u in LENGTHS)
  for costs in (small, large):
    assert all(c.flops > 0 and c.peak_bytes > 0 for c in costs.values())
    assert costs['prefill'].seconds is None and costs['prefill'].note == 'timing off'
  if method == 'text':
    assert large['prefill'].flops > 3 * small['prefill'].flops
    assert large['decode_step'].flops > small['decode_step'].flops
  else:  # The user memory is 16 latents whatever the history length.
    assert large['user_side'].flops > small['user_side'].flops
    assert large['cached_query'].flops == small['cached_query'].flops
    assert large['decode_step'].flops == small['decode_step'].flops


def test_timed_cell_runs_and_reports_median():
  timer = lib.Timer(runs=2, cell_budget_s=30)
  costs = _costs('xattn+perceiver', LENGTHS[0], timer)
  for name in ('user_side', 'prefill', 'decode_step'):
    assert costs[name].seconds > 0 and costs[name].runs == 2
