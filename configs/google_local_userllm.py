r"""Stage 2 on Google Local Reviews (2018 / 2021): configs/movielens_userllm.py with `dataset='google_local'`.

Tasks next item, favourite category and review generation (ROUGE-Lsum; compare with
`mode=text_prompt`, the text-prompt baseline); histories left-padded. Needs the
stage-1 run of configs/google_local_pretrain.py in workdirs/stage1_google_local/ar_early_L{history_len}.
  python -m launch.main --config configs/google_local_userllm.py:path=DIR \
      --workdir workdirs/userllm_google_local_xattn
  python -m launch.main --config configs/google_local_userllm.py:path=DIR,mode=text_prompt,strategy=lora \
      --workdir workdirs/userllm_google_local_text
Variants as in configs/movielens_userllm.py (mode=, strategy=, latents=, history_len=, ...).
"""

import ml_collections

from configs import movielens_userllm


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/movielens_userllm.py's config on google_local; `arg` as there."""
  return movielens_userllm.get_config(arg, dataset='google_local')
