r"""Throughput of the stage-2 Grain pipeline (examples/s) on ml-latest-small.

  python -m benchmarks.data_throughput --data_path ../shared/data/ml-latest-small \
      [--tokenizer_path DIR/tokenizer.model] [--batch_size 16] [--num_batches 200]

Measures next_item batches at history_len 50 (events before the target) with and
without the text-prompt history (text mode: max_prompt_tokens 1280, which holds the
p95 history of 50 events with the Gemma tokenizer), in this process (no Grain worker
processes), after 5 warm-up batches. Preprocessing is cached and not timed.
"""

import time

from absl import app
from absl import flags

import data_pipelines

_PATH = flags.DEFINE_string('data_path', None, 'ml-latest-small folder.')
_TOKENIZER = flags.DEFINE_string('tokenizer_path', None, 'Gemma tokenizer.model; '
                                 'default: ByteTokenizer.')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Global batch size.')
_BATCHES = flags.DEFINE_integer('num_batches', 200, 'Timed batches per setting.')
_TASKS = flags.DEFINE_list('tasks', ['next_item'], 'Stage-2 tasks to time.')


def measure(prepared, task: str, text_prompt: bool, tokenizer, batch_size: int,
            num_batches: int) -> float:
  """Examples per second over `num_batches` batches after 5 warm-up batches."""
  ds = data_pipelines.make_dataset(
      prepared, 'train', task, batch_size=batch_size, seed=0, tokenizer=tokenizer,
      text_prompt=text_prompt, max_prompt_tokens=1280 if text_prompt else 64,
      max_answer_tokens=32)
  it = iter(ds)
  for _ in range(5):
    next(it)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  return num_batches * batch_size / (time.perf_counter() - start)


def main(argv):
  del argv
  config = data_pipelines.default_data_config('movielens', _PATH.value)
  prepared = data_pipelines.prepare(config)
  tokenizer = data_pipelines.make_tokenizer(_TOKENIZER.value)
  print(f'tokenizer: {type(tokenizer).__name__}, batch {_BATCH.value}, history_len 50')
  print('| task | text_prompt | examples/s |')
  print('|---|---|---|')
  for task in _TASKS.value:
    for text_prompt in (False, True):
      rate = measure(prepared, task, text_prompt, tokenizer, _BATCH.value,
                     _BATCHES.value)
      print(f'| {task} | {text_prompt} | {rate:.0f} |')


if __name__ == '__main__':
  app.run(main)
