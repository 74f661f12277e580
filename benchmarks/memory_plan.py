r"""Memory plan: per-device memory, largest global batch and step time of stage-2
training, for Gemma 3 270M / 1B / 4B / 12B x strategy (Enc, LoRA, Full) x TPU slice
(v5e-8, v5e-64, v5p-8), from compiled train steps on simulated CPU meshes.

  python -m benchmarks.memory_plan                  # writes docs/scaling.md
  python -m benchmarks.memory_plan --models=Gemma3_270M --out=/tmp/plan.md

How. A cell is `configs/movielens_userllm.py:model=M,strategy=S` (cross-attention
before every 3rd decoder layer, 50-event histories, 56 tokens per example, AdamW, the
config's remat) on a mesh of the slice's chip count, FSDP over every chip. Its train
step is lowered with abstract inputs (`jax.eval_shape`; ShapeDtypeStructs carrying the
config's shardings: nothing is materialised) and compiled for the simulated devices;
XLA's `memory_analysis()` gives the bytes one device holds (arguments + outputs -
donated aliases + temporaries), its cost analysis the FLOPs one device runs. Compiling
every cell at full depth on 64 simulated devices is too slow on a 2-core machine, so
each cell is compiled at 3 and 6 decoder layers and 8 and 64 examples per device:
memory and FLOPs are bilinear in (layers, batch), m = a + b L + c B + d L B, and are
read at the real depth. A full-depth compile of one cell checks the extrapolation
(footer of the table).
"""

import os

if __name__ == '__main__':  # Imported (tests): jax's devices are left alone.
  # Devices are fixed when jax starts: 64 simulated CPU devices hold every slice here.
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                             + ' --xla_force_host_platform_device_count=64').strip()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import dataclasses  # pylint: disable=g-import-not-at-top,wrong-import-position
import json
import pathlib
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from configs import movielens_pretrain
from configs import movielens_userllm
from user_llm import experiment
from user_llm import sharding
from user_llm import train

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU slice as jax sees it: devices (chips; v5p's megacore is one device)."""
  name: str
  devices: int
  hbm_gib: float  # Per chip.
  peak_tflops: float  # bf16, per chip.


SLICES = (Slice('v5e-8', 8, 16, 197), Slice('v5e-64', 64, 16, 197),
          Slice('v5p-8', 4, 95, 459))
STRATEGIES = ('enc', 'lora', 'full')
LAYERS = (3, 6)  # Compiled depths (multiples of xattn_every: one block per 3 layers).
# Compiled examples per device. Peak memory is max(gathered weights + a few
# activations, activations): at 1-8 examples the gathered weights set the peak and an
# extra example costs ~0 (measured for 270M: +0.9 MB from 1 to 8), so the slope that
# decides the largest batch is read where activations dominate.
PER_DEVICE = (8, 64)
HEADROOM = 0.9  # Share of HBM a plan may fill (the TPU runtime keeps some).

_MODELS = flags.DEFINE_list('models', list(movielens_userllm.GEMMAS), 'gm.nn model names.')
_OUT = flags.DEFINE_string('out', 'docs/scaling.md', 'Markdown file written.')
_CELLS = flags.DEFINE_string('cells', 'docs/scaling_cells.jsonl',
                             'Finished cells, one JSON per line: a rerun skips them.')
_CHECK = flags.DEFINE_string('check', 'Gemma3_270M:enc:v5e-8',
                             'model:strategy:slice compiled at full depth too ("" = none).')


def _config(model: str, strategy: str, stage1_dir: str):
  c = movielens_userllm.get_config(f'model={model},strategy={strategy}')
  c.llm.tokenizer = 'bytes'  # Shapes only: no tokenizer file is read.
  c.data.trim_multiple = 0  # Fixed shapes, as a multi-host run has.
  c.userllm.encoder_workdir = stage1_dir  # Its config.json: the encoder's architecture.
  c.userllm.random_encoder = True
  return c


def _experiment(model: str, strategy: str, sl: Slice, stage1_dir: str):
  """(set-up stage-2 experiment, FSDP mesh over the slice's simulated devices)."""
  mesh = sharding.make_mesh((('data', 1), ('fsdp', sl.devices), ('tensor', 1)),
                            jax.devices()[:sl.devices])
  return experiment.build(_config(model, strategy, stage1_dir), mesh), mesh


def _abstract_batch(exp, global_batch: int, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The stage-2 batch of docs/contracts.md, as ShapeDtypeStructs sharded over the mesh."""
  d = exp.config.data
  u, length, a = d.history_len, exp.length, d.max_answer_tokens
  shapes = {**{f: ((u,), jnp.int32) for f in exp.features},
            'mask': ((u,), jnp.bool_), 'timestamp': ((u,), jnp.int32), 'user': ((), jnp.int32),
            'example_mask': ((), jnp.bool_), 'tokens': ((length,), jnp.int32),
            'loss_mask': ((length,), jnp.bool_), 'prompt_len': ((), jnp.int32),
            'answer_pos': ((a,), jnp.int32), 'answer_mask': ((a,), jnp.bool_),
            'target': ((), jnp.int32)}
  return {k: jax.ShapeDtypeStruct((global_batch, *s), t,
                                  sharding=sharding.batch_sharding(mesh, 1 + len(s)))
          for k, (s, t) in shapes.items()}


def compile_step(exp, full_config, num_layers: int, global_batch: int, mesh) -> dict:
  """Per-device bytes and FLOPs of the train step with the decoder cut to `num_layers`."""
  dec = dataclasses.replace(full_config,
                            attention_types=full_config.attention_types[:num_layers])
  exp.decoder_config = dec
  exp.model = exp.model.clone(
      decoder_config=dec, xattn_layers=tuple(range(0, num_layers, exp.config.userllm.xattn_every)))
  rng = jax.random.key(0)
  setup = train.create_train_state(exp.config, mesh, exp, rng)
  batch = _abstract_batch(exp, global_batch, mesh)
  step = train.make_train_step(exp, setup.tx, setup.state_shardings,
                               {k: v.sharding for k, v in batch.items()}, mesh)
  compiled = step.lower(setup.abstract_state, batch, rng).compile()
  m = compiled.memory_analysis()
  return {'bytes': m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
                   + m.temp_size_in_bytes,
          'state_bytes': m.argument_size_in_bytes, 'flops': train.step_flops(compiled)}


def _bilinear(points: dict[tuple[int, int], float], layers: int, per_device: float) -> float:
  """m(L, B) = a + b L + c B + d L B through the four compiled (L, B) points."""
  (l0, l1), (b0, b1) = LAYERS, PER_DEVICE
  wl, wb = (layers - l0) / (l1 - l0), (per_device - b0) / (b1 - b0)
  return ((1 - wl) * (1 - wb) * points[l0, b0] + wl * (1 - wb) * points[l1, b0]
          + (1 - wl) * wb * points[l0, b1] + wl * wb * points[l1, b1])


def plan_cell(model: str, strategy: str, sl: Slice, stage1_dir: str) -> dict:
  """One row: compiled points, extrapolated memory, largest batch, step time."""
  t0 = time.time()
  exp, mesh = _experiment(model, strategy, sl, stage1_dir)
  full = exp.decoder_config
  pts = {(l, b): compile_step(exp, full, l, b * sl.devices, mesh)
         for l in LAYERS for b in PER_DEVICE}
  depth = full.num_layers
  mem = {k: v['bytes'] for k, v in pts.items()}
  flops = {k: v['flops'] for k, v in pts.items()}
  fixed = _bilinear(mem, depth, 0)  # State and per-step buffers, no examples.
  per_example = _bilinear(mem, depth, 1) - fixed
  budget = HEADROOM * sl.hbm_gib * GIB
  if per_example <= 0:  # Would make every batch "fit": a measurement problem, say so.
    raise ValueError(f'{model} {strategy} {sl.name}: per-example bytes {per_example:.0f} <= 0 '
                     f'from the compiled points {mem}')
  max_per_device = int((budget - fixed) // per_example) if budget > fixed else 0
  row = {'model': model, 'strategy': strategy, 'slice': sl.name, 'layers': depth,
         'state_gib': _bilinear({k: v['state_bytes'] for k, v in pts.items()}, depth, 1) / GIB,
         'gib_at_min': _bilinear(mem, depth, PER_DEVICE[0]) / GIB,
         'per_example_mib': per_example / 2**20,
         'max_global_batch': max_per_device * sl.devices, 'compile_s': time.time() - t0}
  if max_per_device:
    f = _bilinear(flops, depth, max_per_device)
    row['step_s'] = f / (sl.peak_tflops * 1e12)
    row['examples_per_s'] = row['max_global_batch'] / row['step_s']
  return row


def check_extrapolation(model: str, strategy: str, sl: Slice, stage1_dir: str) -> dict:
  """The full-depth compile of one cell at PER_DEVICE[0] examples per device vs the
  extrapolation from 3 and 6 layers."""
  exp, mesh = _experiment(model, strategy, sl, stage1_dir)
  got = compile_step(exp, exp.decoder_config, exp.decoder_config.num_layers,
                     PER_DEVICE[0] * sl.devices, mesh)
  return {'cell': f'{model} {strategy} {sl.name}', 'compiled_gib': got['bytes'] / GIB,
          'compiled_gflop': got['flops'] / 1e9}


def markdown(rows: list[dict], check: dict | None, wall_s: float, cells: int) -> str:
  """docs/scaling.md."""
  done = '' if len(rows) == cells else f'; {len(rows)} of {cells} cells so far'
  out = ['# Scaling: memory plan for larger Gemmas and TPU slices', '',
         'Generated by `python -m benchmarks.memory_plan` (do not edit; '
         f'{wall_s / 60:.0f} min of compiling, summed over the cells, on this 2-core CPU'
         f'{done}). How the numbers are made: the module '
         'docstring of `benchmarks/memory_plan.py`. Stage-2 training step of '
         '`configs/movielens_userllm.py:model=M,strategy=S` (cross-attention every 3rd '
         'layer, 50 history events, 56 tokens per example, AdamW; frozen decoder bf16, '
         'trained decoder (Full) f32; remat `dots_with_no_batch_dims_saveable` for 1B and '
         'up), FSDP over every chip of the slice, the residual stream pinned to the batch '
         'axes (`sharding.constrain_batch`: without it XLA all-gathered activations instead '
         'of weights, and on v5e-64 an extra example cost 5.9 GiB per device instead of the '
         'share of one example).', '',
         f'Per device: bytes XLA assigns one device (arguments + outputs - donated + '
         f'temporaries) at {PER_DEVICE[0]} examples per device; "max global batch" fills '
         f'{HEADROOM:.0%} of '
         'HBM; step time = compiled FLOPs per device / the chip\'s bf16 peak (an ideal: '
         '100% utilisation; real steps are slower). Slices: v5e-8 = 8 chips x 16 GiB, '
         '197 TFLOP/s; v5e-64 = 64 x 16 GiB; v5p-8 = 4 chips x 95 GiB, 459 TFLOP/s. '
         'XLA:CPU assigns buffers differently from XLA:TPU (fusion, layouts), so read '
         'these as estimates of the TPU numbers. One difference is large: XLA:CPU converts '
         'the bfloat16 decoder weights to float32 before it all-gathers them (the compiled '
         'HLO gathers f32 copies, the HLO before optimisation has no such convert, and a '
         "TPU's bf16 matmuls need none), and the gathered weights of every layer are live "
         'at once: for the frozen-decoder rows (Enc, LoRA) the batch-independent memory is '
         'up to 2x what a TPU needs, so "does not fit" for 4B and 12B on v5e is a verdict '
         'of this simulation, not yet of a TPU.', '',
         '| model | strategy | slice | train state / device (GiB) | GiB / device at '
         f'{PER_DEVICE[0]} examples '
         '/ device | MiB / extra example | max global batch | ideal step (s) at max batch '
         '| examples / s |',
         '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    fits = r['max_global_batch'] > 0
    out.append(
        f"| {r['model']} | {r['strategy']} | {r['slice']} | {r['state_gib']:.2f} | "
        f"{r['gib_at_min']:.2f} | {r['per_example_mib']:.1f} | "
        f"{r['max_global_batch'] if fits else 'does not fit'} | "
        f"{r['step_s']:.3f} | {r['examples_per_s']:,.0f} |" if fits else
        f"| {r['model']} | {r['strategy']} | {r['slice']} | {r['state_gib']:.2f} | "
        f"{r['gib_at_min']:.2f} | {r['per_example_mib']:.1f} | does not fit | - | - |")
  if check:
    row = next(r for r in rows if f"{r['model']} {r['strategy']} {r['slice']}" == check['cell'])
    out += ['', f"Extrapolation check ({check['cell']}, {PER_DEVICE[0]} examples per device): "
            "compiled at "
            f"full depth {check['compiled_gib']:.3f} GiB, extrapolated from 3 and 6 layers "
            f"{row['gib_at_min']:.3f} GiB."]
  return '\n'.join(out) + '\n'


def _load_cells(path: str) -> dict[tuple[str, str, str], dict]:
  """Cells a previous run finished (resumable: a 12B x v5e-64 cell takes minutes)."""
  p = pathlib.Path(path)
  if not p.exists():
    return {}
  cells = {}
  for i, line in enumerate(p.read_text().splitlines(), 1):
    try:
      r = json.loads(line)
      cells[r['model'], r['strategy'], r['slice']] = r
    except (json.JSONDecodeError, KeyError) as e:
      raise ValueError(f'{path}:{i}: not a memory-plan cell ({e}); delete the line') from e
  return cells


def main(argv):
  del argv
  done = _load_cells(_CELLS.value)
  with tempfile.TemporaryDirectory() as stage1_dir:
    # Stage 2 reads the encoder's architecture from a stage-1 run's config.json.
    pathlib.Path(stage1_dir, 'config.json').write_text(
        movielens_pretrain.get_config().to_json_best_effort())
    rows, cells = [], len(_MODELS.value) * len(STRATEGIES) * len(SLICES)
    for model in _MODELS.value:
      for strategy in STRATEGIES:
        for sl in SLICES:
          key = (model, strategy, sl.name)
          # Re-read: another process (e.g. `--models` in the reverse order) may have
          # finished the cell meanwhile.
          done.update(_load_cells(_CELLS.value))
          if key not in done:
            done[key] = plan_cell(model, strategy, sl, stage1_dir)
            print(json.dumps(done[key]), flush=True)
            # Appended after every cell: a long run that is stopped keeps its cells.
            with open(_CELLS.value, 'a') as f:
              f.write(json.dumps(done[key]) + '\n')
          rows.append(done[key])
          wall = sum(r['compile_s'] for r in rows)
          pathlib.Path(_OUT.value).write_text(markdown(rows, None, wall, cells))
    check = None
    if _CHECK.value:
      model, strategy, name = _CHECK.value.split(':')
      if model in _MODELS.value:
        check = check_extrapolation(model, strategy, next(s for s in SLICES if s.name == name),
                                    stage1_dir)
        print(json.dumps(check), flush=True)
  pathlib.Path(_OUT.value).write_text(
      markdown(rows, check, sum(r['compile_s'] for r in rows), cells))
  print(f'Wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
