"""Tokenizers for stage-2 prompts: the Gemma 3 tokenizer and a tiny test stand-in.

Interface (docs/contracts.md): `encode(text) -> list[int]` (no BOS/EOS),
`decode(ids) -> str`, and the attributes `bos_id`, `eos_id`, `pad_id`, `vocab_size`,
`stop_ids` (the ids that end a generated answer: the one place they are written).
Both implementations use Gemma's special ids (pad 0, eos 1, bos 2), so batches built
with the test tokenizer have the same layout as real ones.
"""

from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
  """What the data pipeline needs from a tokenizer."""

  bos_id: int
  eos_id: int
  pad_id: int
  vocab_size: int
  stop_ids: tuple[int, ...]

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS or EOS."""

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids` (special ids are dropped)."""


class GemmaTokenizer:
  """Gemma 3 SentencePiece tokenizer (`gm.text.Gemma3Tokenizer`) from a local file.

  The gm tokenizer is built lazily and dropped when pickled, so Grain worker
  processes each load their own copy instead of pickling a SentencePiece object.
  """

  bos_id = 2
  eos_id = 1
  pad_id = 0
  end_of_turn_id = 106  # '<end_of_turn>' in the Gemma 3 vocabulary.
  # An instruction-tuned Gemma ends its turn with <end_of_turn>, a pretrained one with eos.
  stop_ids = (eos_id, end_of_turn_id)

  def __init__(self, path: str):
    import os  # pylint: disable=g-import-not-at-top
    if '://' not in path and not os.path.isfile(path):  # gs:// is read by gm (epath).
      raise FileNotFoundError(f'Gemma tokenizer file not found: {path}')
    self.path = path
    self._tok = None

  @property
  def _gm(self):
    if self._tok is None:
      from gemma import gm  # pylint: disable=g-import-not-at-top
      self._tok = gm.text.Gemma3Tokenizer(path=self.path)
    return self._tok

  @property
  def vocab_size(self) -> int:
    return self._gm.vocab_size

  def encode(self, text: str) -> list[int]:
    return list(self._gm.encode(text))

  def decode(self, ids: Iterable[int]) -> str:
    return self._gm.decode([int(i) for i in ids])

  def __getstate__(self):
    return {'path': self.path, '_tok': None}


class ByteTokenizer:
  """Deterministic UTF-8 byte tokenizer for tests and tokenizer-free benchmarks.

  id = byte + 3; 0 pad, 1 eos, 2 bos (as in Gemma). About 4x more tokens than
  Gemma's SentencePiece on English text, so token statistics made with it are
  upper bounds.
  """

  bos_id = 2
  eos_id = 1
  pad_id = 0
  vocab_size = 259
  stop_ids = (eos_id,)

  def encode(self, text: str) -> list[int]:
    return [b + 3 for b in text.encode('utf-8')]

  def decode(self, ids: Iterable[int]) -> str:
    data = bytes(int(i) - 3 for i in ids if int(i) >= 3)
    return data.decode('utf-8', errors='replace')


def make_tokenizer(path: str | None = None) -> Tokenizer:
  """GemmaTokenizer(path) when a path is given, else ByteTokenizer()."""
  return GemmaTokenizer(path) if path else ByteTokenizer()
