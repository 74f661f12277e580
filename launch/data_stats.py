r"""Prints the data statistics table (users, items, events, windows, prompt tokens).

  python -m launch.data_stats --data_path ../shared/data/ml-latest-small \
      --history_lens=50,200 [--tokenizer_path DIR/tokenizer.model] [--name movielens]
  python -m launch.data_stats --name amazon --data_path DIR   # reviews_*_5.json[.gz]
  python -m launch.data_stats --name amazon --reviews_file DIR/Musical_Instruments.json \
      --meta_file DIR/meta_Musical_Instruments.json.gz --history_lens=10,20
  python -m launch.data_stats --name google_local --data_path DIR  # 2021 or 2018 files
  python -m launch.data_stats --config configs/movielens_pretrain.py --history_lens=50

Without --tokenizer_path, tokens are counted by the UTF-8 ByteTokenizer (an upper
bound, about 4x Gemma's count); the table says which tokenizer counted. The data
fields not given here (pad_short, protocol, ...) come from --config, else from
`data_pipelines.default_data_config(--name)`.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

import data_pipelines
from launch import common

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config whose .data is used.')
_NAME = flags.DEFINE_string('name', 'movielens', 'Dataset (without --config): movielens | '
                            'amazon | google_local.')
_PATH = flags.DEFINE_string('data_path', None, 'Release folder, or the review file '
                            '(default: config).')
_REVIEWS = flags.DEFINE_string('reviews_file', None, 'Explicit review file (MovieLens: '
                               'ratings file), e.g. a renamed Amazon 5-core file.')
_META = flags.DEFINE_string('meta_file', None, 'Explicit item file (meta_*, meta-*, '
                            'places.clean.json, movies.csv).')
_STRICT = flags.DEFINE_bool('strict', None, 'Stop at the first malformed row (default: the '
                            "config's, True); --nostrict skips and counts them.")
_HISTORY_LENS = flags.DEFINE_list('history_lens', ['50', '200'],
                                   'History lengths U (events before a target).')
_TOKENIZER = flags.DEFINE_string('tokenizer_path', None, 'Gemma tokenizer.model.')
_CACHE = flags.DEFINE_string('cache_dir', None, 'Preprocessing cache directory.')


def _data_config(history_len: int):
  """The config.data of --config or --name, with this command's flags applied."""
  base = (_CONFIG.value.data if _CONFIG.value is not None
          else data_pipelines.default_data_config(_NAME.value))
  config = data_pipelines.default_data_config(base.name, _PATH.value or base.path)
  config.update({k: v for k, v in base.items() if k in config and k != 'path'})
  overrides = {'reviews_file': _REVIEWS.value, 'meta_file': _META.value,
               'strict': _STRICT.value, 'cache_dir': _CACHE.value}
  config.update({k: v for k, v in overrides.items() if v is not None})
  config.history_len = history_len
  return config


def main(argv):
  del argv
  tokenizer = data_pipelines.make_tokenizer(_TOKENIZER.value)
  rows, skipped = [], []
  for history_len in map(int, _HISTORY_LENS.value):
    config = _data_config(history_len)
    prepared = data_pipelines.prepare(config)
    rows.append((history_len, data_pipelines.statistics(prepared, tokenizer)))
    skipped.append((history_len, prepared.stats['skipped']))
  who = (f'Gemma 3 tokenizer ({_TOKENIZER.value})' if _TOKENIZER.value
         else 'ByteTokenizer (UTF-8 bytes; no Gemma tokenizer given)')
  sources = ', '.join(prepared.manifest['sources'].values())
  print(f'Data: {config.name} from {sources} (pad_short={config.pad_short}); tokens counted '
        f'by {who}.')
  print(data_pipelines.statistics_table(rows))
  for history_len, counts in skipped:
    print(f'skipped (history_len {history_len}): {counts or "nothing"}')


if __name__ == '__main__':
  app.run(common.exit_on_user_error(main), flags_parser=common.parse_flags)
