"""Integration on the real ml-latest-small (skipped when the folder is absent)."""

import os

import numpy as np
import pytest

import data_pipelines as dp
from data_pipelines import _stats

PATH = dp.default_data_path()


@pytest.mark.skipif(not os.path.isfile(os.path.join(PATH, 'ratings.csv')),
                    reason=f'{PATH} not found')
def test_ml_latest_small(tmp_path):
  c = dp.default_data_config('movielens', PATH)
  c.cache_dir = str(tmp_path)
  prepared = dp.prepare(c)
  assert (prepared.stats['users'], prepared.stats['events']) == (373, 93207)
  assert [prepared.num_records(s) for s in dp.SPLITS] == [73811, 373, 373]
  assert prepared.vocabs['genre'].size == 22
  for task in ('next_event', 'next_item', 'fav_genre', 'review'):
    b = next(iter(dp.make_dataset(prepared, 'train', task, batch_size=8,
                                  text_prompt=True, max_prompt_tokens=2048)))
    assert b['example_mask'].all() and b['mask'].all()
  stats = _stats.statistics(prepared, dp.ByteTokenizer())
  assert stats['tokens_per_event'] == pytest.approx(52.2, abs=0.05)
  assert np.isfinite(stats['history_tokens']['test']['p95'])
