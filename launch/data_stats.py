r"""Prints the data statistics table (users, items, events, windows, prompt tokens).

  python -m launch.data_stats --data_path ../shared/data/ml-latest-small \
      --history_lens=50,200 [--tokenizer_path DIR/tokenizer.model] [--name movielens]
  python -m launch.data_stats --config configs/movielens_pretrain.py --history_lens=50

Without --tokenizer_path, tokens are counted by the UTF-8 ByteTokenizer (an upper
bound, about 4x Gemma's count); the table says which tokenizer counted.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

import data_pipelines

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config whose .data is used.')
_NAME = flags.DEFINE_string('name', 'movielens', 'Dataset (without --config).')
_PATH = flags.DEFINE_string('data_path', None, 'Release folder (default: config).')
_HISTORY_LENS = flags.DEFINE_list('history_lens', ['50', '200'],
                                   'History lengths U (events before a target).')
_TOKENIZER = flags.DEFINE_string('tokenizer_path', None, 'Gemma tokenizer.model.')
_CACHE = flags.DEFINE_string('cache_dir', None, 'Preprocessing cache directory.')


def main(argv):
  del argv
  base = (_CONFIG.value.data if _CONFIG.value is not None
          else data_pipelines.default_data_config(_NAME.value))
  tokenizer = data_pipelines.make_tokenizer(_TOKENIZER.value)
  rows = []
  for history_len in map(int, _HISTORY_LENS.value):
    config = data_pipelines.default_data_config(base.name, _PATH.value or base.path)
    config.update({k: v for k, v in base.items() if k in config})
    config.path = _PATH.value or base.path
    config.history_len = history_len
    if _CACHE.value:
      config.cache_dir = _CACHE.value
    rows.append((history_len, data_pipelines.statistics(data_pipelines.prepare(config), tokenizer)))
  who = (f'Gemma 3 tokenizer ({_TOKENIZER.value})' if _TOKENIZER.value
         else 'ByteTokenizer (UTF-8 bytes; no Gemma tokenizer given)')
  print(f'Data: {base.name} at {_PATH.value or base.path}; tokens counted by {who}.')
  print(data_pipelines.statistics_table(rows))


if __name__ == '__main__':
  app.run(main)
