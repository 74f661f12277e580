"""The `config.data` section: defaults for every dataset."""

from __future__ import annotations

import os

import ml_collections

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ('movielens', 'amazon', 'google_local')
# Words used by the stage-2 prompt templates, per dataset.
NOUNS = {
    'movielens': dict(item='movie', verb='watch', genre='genre'),
    'amazon': dict(item='product', verb='review', genre='category'),
    'google_local': dict(item='place', verb='visit', genre='category'),
}


# Folder of each dataset under ../shared/data when $USER_LLM_DATA is not set.
_FOLDERS = {'movielens': 'ml-latest-small', 'amazon': 'amazon', 'google_local': 'google_local'}


def default_data_path(name: str = 'movielens') -> str:
  """$USER_LLM_DATA, else ../shared/data/<ml-latest-small | amazon | google_local>."""
  return os.environ.get(
      'USER_LLM_DATA',
      os.path.normpath(os.path.join(_REPO, '..', 'shared', 'data', _FOLDERS[name])))


def default_cache_dir() -> str:
  """$USER_LLM_CACHE, else <repo>/cache/data (git-ignored)."""
  return os.environ.get('USER_LLM_CACHE', os.path.join(_REPO, 'cache', 'data'))


def default_data_config(name: str = 'movielens',
                        path: str | None = None) -> ml_collections.ConfigDict:
  """Returns the `config.data` section for dataset `name` read from `path`.

  Fields marked (prep) change the preprocessed cache (a change rebuilds it); the
  others only change how the Grain pipeline reads it.
  """
  if name not in NAMES:
    from data_pipelines._io import BadInput  # pylint: disable=g-import-not-at-top
    raise BadInput(f'Unknown dataset {name!r} (data.name / --name); expected one of '
                   f'{", ".join(NAMES)}.')
  c = ml_collections.ConfigDict()
  c.name = name  # (prep) 'movielens' | 'amazon' | 'google_local'.
  c.path = path or default_data_path(name)  # (prep) Release folder (or review file).
  # (prep) Explicit review file (MovieLens: ratings file); overrides `path`. '' = the
  # published name in `path`, else its only *.json[.gz] (a renamed Amazon file).
  c.reviews_file = ''
  # (prep) Explicit item file (Amazon meta_*, Google meta-* / places.clean.json,
  # MovieLens movies); '' = looked for next to the review file.
  c.meta_file = ''
  c.cache_dir = default_cache_dir()  # Preprocessed ArrayRecords + manifest.json.
  # (prep) History events U before each target (paper: 50; also 200, 500). A window
  # is U + 1 events (history + target).
  c.history_len = 50
  # (prep) Step between a user's windows. 1 makes every event a target once, the
  # most stage-1 training data; raise it (e.g. history_len) for fewer, disjoint windows.
  c.stride = 1
  c.min_events = -1  # (prep) Keep users with >= this many events; -1: the fewest that fit.
  c.test_events = 1  # (prep) Test targets per user: its last k events, one window each.
  c.valid_events = 1  # (prep) Validation targets per user: the events before the test ones.
  # (prep) Allow histories shorter than history_len (left-padded): every user with
  # test_events + valid_events + 2 events is kept, as in the standard leave-one-out.
  # On for the review datasets: 5-core timelines are short (Amazon 2014 Musical
  # Instruments: 107 of 1,429 users have the 12 events a 10-event history needs), so
  # full windows would drop most users.
  c.pad_short = name != 'movielens'
  c.min_count = 1  # (prep) Training occurrences an item/genre needs for an id.
  # (prep) Remove each user's last k events first (model selection on the event before
  # the test one, with the test target never read: stage-1 protocol 'selection').
  c.drop_last_events = 0
  c.amazon_category_level = 1  # (prep) Level of the Amazon category path = genre.
  c.features = ('item', 'genre', 'rating')  # Categorical features in batches.
  c.strict = True  # (prep) Malformed row: raise (True) or skip and count (False).
  c.text_prompt = False  # Stage 2: serialise the history as text in the prompt.
  c.max_prompt_tokens = 64  # Stage 2: BOS + prompt budget (text mode: e.g. 1024).
  c.max_answer_tokens = 32  # Stage 2: answer + EOS budget (review: e.g. 128).
  # Stage 2 training batches: cut tokens and answer positions to the batch's longest
  # example, rounded up to this multiple (a handful of shapes, each compiled once):
  # most examples are far shorter than the budgets. 0 = fixed shapes.
  c.trim_multiple = 8
  c.tokenizer_path = ''  # Gemma tokenizer.model; '' = ByteTokenizer (tests only).
  return c


# Fields that change the preprocessed data (and hence the cache key).
PREP_FIELDS = ('name', 'reviews_file', 'meta_file', 'history_len', 'stride',
               'min_events', 'min_count', 'test_events', 'valid_events', 'pad_short',
               'amazon_category_level', 'strict', 'drop_last_events')
