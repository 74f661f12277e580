r"""Stage 1 on Google Local Reviews (2018 / 2021): configs/movielens_pretrain.py with `dataset='google_local'`.

Same model, protocols and variants (its docstring); the data section is
`data_pipelines.default_data_config('google_local')`: short timelines are left-padded
(protocol 'standard'), so every user with >= 4 reviews is kept.
Launch (files found by their published names in DIR, or named explicitly):
  python -m launch.main --config configs/google_local_pretrain.py:path=DIR \
      --workdir workdirs/stage1_google_local/ar_early_L50
  python -m launch.main --config configs/google_local_pretrain.py \
      --config.data.reviews_file=FILE.json.gz --config.data.meta_file=META.json.gz \
      --workdir workdirs/stage1_google_local/ar_early_L50
Then stage 2: configs/google_local_userllm.py (reads that workdir).
"""

import ml_collections

from configs import movielens_pretrain


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/movielens_pretrain.py's config on google_local; `arg` as there."""
  return movielens_pretrain.get_config(arg, dataset='google_local')
