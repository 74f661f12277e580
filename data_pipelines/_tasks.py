"""Stage-2 tasks built on a window: prompt text, answer text and target id.

Prompt templates ({item}/{verb}/{genre} per dataset: movie/watch/genre for MovieLens,
product/review/category for Amazon, place/visit/category for Google Local):
- next_item: "Which {item} will this user {verb} next?"   answer: the item's name;
  target: the next item's 'item' id.
- fav_genre: "What is this user's favourite {genre}?"      answer: the genre name;
  target: its 'genre' id. The favourite is the genre counted most often over ALL
  genres of the U history events (a MovieLens movie with 3 genres adds 1 to each).
  Tie rule: among equally frequent genres the one that occurs most recently wins;
  if they occur last in the same event, the one listed first on that event wins.
- review: "Write this user's next review of {name}."      answer: the next event's
  review text (MovieLens: the user's tags); target: the next item's id. Only
  windows whose target has text are used for this task.
Each template ends with a newline, and the answer follows it.

Text-prompt serialisation (text_prompt=True) puts the history before the question:
  "History, oldest first ({item}; {genre}s; rating):\n"
  then one line per event: "{name}; {genre1|genre2|...}; {rating}\n"
where rating is the half-star bucket ('4.0') or '?' when missing. ';' separates the
fields because names often hold commas ('Shawshank Redemption, The (1994)'). When the
prompt exceeds its token budget, the OLDEST lines are dropped first.
"""

from __future__ import annotations

import numpy as np

STAGE1_TASKS = ('next_event',)
STAGE2_TASKS = ('next_item', 'fav_genre', 'review')
TASKS = STAGE1_TASKS + STAGE2_TASKS

QUESTIONS = {
    'next_item': 'Which {item} will this user {verb} next?\n',
    'fav_genre': "What is this user's favourite {genre}?\n",
    'review': "Write this user's next review of {name}.\n",
}
HISTORY_HEADER = 'History, oldest first ({item}; {genre}s; rating):\n'


def favourite_genre(genre_lists: list[tuple[str, ...]]) -> str:
  """Most frequent genre over all genres of the events (see module doc for ties).

  Args:
    genre_lists: per history event, oldest first, its genres.
  """
  best: dict[str, tuple[int, int, int]] = {}
  for t, genres in enumerate(genre_lists):
    for pos, g in enumerate(genres):
      count = best[g][0] + 1 if g in best else 1
      # Key grows with count, then recency (t), then earlier listing (-pos).
      best[g] = (count, t, -pos)
  return max(best.items(), key=lambda kv: kv[1])[0]


def event_line(name: str, genres: tuple[str, ...], rating: str) -> str:
  """One history event in the text-prompt form: 'name; g1|g2; 4.0\\n'."""
  return f'{name}; {"|".join(genres)}; {rating if rating[:1].isdigit() else "?"}\n'


def question(task: str, nouns: dict[str, str], target_name: str) -> str:
  """The task's instruction line."""
  return QUESTIONS[task].format(name=target_name, **nouns)


def history_header(nouns: dict[str, str]) -> str:
  return HISTORY_HEADER.format(**nouns)


def fit_prompt(header: list[int], lines: list[list[int]], tail: list[int],
               budget: int) -> list[int]:
  """header + the most recent lines that fit + tail, within `budget` tokens.

  Without history (lines empty, header empty) an over-long tail keeps its end.
  """
  room = budget - len(header) - len(tail)
  kept: list[list[int]] = []
  for line in reversed(lines):
    if len(line) > room:
      break
    kept.append(line)
    room -= len(line)
  ids = (header if kept else []) + [i for line in reversed(kept) for i in line] + tail
  return ids[-budget:] if budget > 0 else []


def pack(prompt: list[int], answer: list[int], bos: int, eos: int, pad: int,
         max_prompt: int, max_answer: int) -> dict[str, np.ndarray]:
  """[BOS] prompt answer [EOS] PAD..., with the answer+EOS positions in loss_mask.

  Returns:
    tokens int32[L], loss_mask bool[L], prompt_len int32[], answer_pos int32[A]
    (positions of answer+EOS, then the last position), answer_mask bool[A] with
    A = max_answer and L = max_prompt + max_answer; BOS+prompt get at most
    max_prompt tokens (the prompt keeps its end), answer+EOS at most max_answer.
  """
  if max_prompt < 1 or max_answer < 1:
    raise ValueError('max_prompt and max_answer must be >= 1 (BOS, EOS).')
  prompt = [bos] + prompt[max(0, len(prompt) - (max_prompt - 1)):]
  answer = answer[:max_answer - 1] + [eos]
  seq = prompt + answer
  tokens = np.full(max_prompt + max_answer, pad, np.int32)
  tokens[:len(seq)] = seq
  loss_mask = np.zeros(max_prompt + max_answer, bool)
  loss_mask[len(prompt):len(seq)] = True
  k = np.arange(max_answer)
  return {'tokens': tokens, 'loss_mask': loss_mask,
          'prompt_len': np.int32(len(prompt)),
          'answer_pos': np.minimum(len(prompt) + k, len(tokens) - 1).astype(np.int32),
          'answer_mask': k < len(answer)}
