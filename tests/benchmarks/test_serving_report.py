"""benchmarks/serving.py's report: its decode-speed section reads decode_speed.md's table."""

from benchmarks import serving


def test_decode_speed_section_keeps_the_batch_1_rows(tmp_path):
  path = tmp_path / 'decode_speed.md'
  path.write_text('# title\n\ntext\n\n| variant | batch | ms / step |\n|---|---|---|\n'
                  '| f32 | 1 | 45.1 |\n| bf16 | 1 | 33.1 |\n| f32 | 8 | 85.3 |\n\n'
                  '| variant | next token = f32 |\n|---|---|\n| f32 | 100% |\n')
  lines = serving.decode_speed_section(str(path))
  table = [l for l in lines if l.startswith('|')]
  assert table == ['| variant | batch | ms / step |', '|---|---|---|', '| f32 | 1 | 45.1 |',
                   '| bf16 | 1 | 33.1 |']
  assert serving.decode_speed_section(str(tmp_path / 'missing.md')) == []
