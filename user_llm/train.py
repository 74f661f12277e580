"""The one trainer of User-LLM (stage 1 and stage 2).

`train_and_evaluate(config, workdir)` builds a mesh and the experiment named by
`config.experiment` (`user_llm/experiment.py`), initialises the train state sharded
(through `jax.eval_shape`, never materialised on one device), resumes (existing run
-> init checkpoint -> scratch), and loops over the pure, jitted `train_step`.

Train state: a dict `{'step': int32[], 'params': ..., 'opt_state': ...}`, plus
`'ema_params'` (an exponential moving average of the params, the weights the run
evaluates and exports) when `config.train.ema_decay` > 0.
"""

from collections.abc import Callable, Mapping
import dataclasses
import json
import math
import os
import time
from typing import Any

from absl import logging
from clu import parameter_overview
import jax
import jax.numpy as jnp
import ml_collections
import optax

from user_llm import checkpointing
from user_llm import experiment as experiment_lib
from user_llm import optim
from user_llm import sharding

PyTree = Any


def ema_update(ema: PyTree, params: PyTree, step: jax.Array, decay: float) -> PyTree:
  """ema <- d * ema + (1 - d) * params, d = min(decay, (1 + step) / (10 + step)).

  The warm-up of d (TensorFlow's ExponentialMovingAverage with num_updates) keeps the
  average from remembering the random init: d is 0.1 at step 0 and reaches 0.999 after
  ~9,000 steps.
  """
  step = step.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), ema, params)


def eval_params(state: PyTree) -> PyTree:
  """The weights a run evaluates and exports: the EMA when it keeps one."""
  return state.get('ema_params', state['params'])


def seed_rngs(seed: int) -> tuple[jax.Array, jax.Array]:
  """(init rng, train rng) of a run with config.train.seed = seed."""
  init_rng, train_rng = jax.random.split(jax.random.key(seed))
  return init_rng, train_rng


def step_rng_of(train_rng: jax.Array, step) -> jax.Array:
  """The rng `loss_fn` gets at `step` (replayable: userllm.alignment_draws)."""
  return jax.random.fold_in(train_rng, step)


def train_step(state: PyTree, batch: Mapping[str, jax.Array], rng: jax.Array, *,
               loss_fn, tx: optax.GradientTransformation,
               frozen: PyTree | None = None,
               ema_decay: float = 0.0) -> tuple[PyTree, dict[str, jax.Array]]:
  """One optimisation step; pure. The rng is folded with the step for reproducibility.

  `frozen` (a tree of Python bools like the params) stops gradients at frozen leaves,
  so their weight gradients (e.g. a frozen Gemma's) are never computed or stored.
  `ema_decay` > 0 updates `state['ema_params']` (`ema_update`).
  """
  step_rng = step_rng_of(rng, state['step'])

  def loss_of(params):
    if frozen is not None:
      params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)
    return loss_fn(params, batch, step_rng)

  (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
  new = {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}
  if 'ema_params' in state:
    new['ema_params'] = ema_update(state['ema_params'], params, state['step'], ema_decay)
  return new, metrics


def step_flops(compiled) -> float:
  """FLOPs of one call of a compiled executable (XLA cost analysis; 0 if unknown)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', 0.0))


def _with_shardings(abstract, shardings):
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


@dataclasses.dataclass
class TrainSetup:
  """What `create_train_state` derives: optimizer, shardings and state builders."""

  tx: optax.GradientTransformation
  abstract_state: PyTree  # ShapeDtypeStructs carrying their NamedShardings.
  state_shardings: PyTree
  from_scratch: Callable[[], PyTree]  # Fresh sharded state (+ load_pretrained hook).
  from_params: Callable[[PyTree], PyTree]  # State at step 0 around given params.


def create_train_state(config, mesh, exp: experiment_lib.Experiment,
                       init_rng: jax.Array) -> TrainSetup:
  """Shapes first (`jax.eval_shape`), then shardings, then jitted sharded init.

  Nothing is materialised on one device: params come out of
  `jax.jit(init_params, out_shardings=...)` already sharded.
  """
  abstract_params = jax.eval_shape(exp.init_params, init_rng)
  tx = optim.make(config.train, abstract_params, exp.freeze_rules)

  def init_state(params):
    state = {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params)}
    if config.train.get('ema_decay', 0.0) > 0:  # A copy: donation must not alias it.
      state['ema_params'] = jax.tree.map(jnp.copy, params)
    return state

  abstract_state = jax.eval_shape(init_state, abstract_params)
  state_sh = sharding.tree_shardings(abstract_state, exp.sharding_rules, mesh)
  init_state_jit = jax.jit(init_state, in_shardings=(state_sh['params'],), out_shardings=state_sh)

  def from_params(params):
    return init_state_jit(jax.device_put(params, state_sh['params']))

  def from_scratch():
    params = jax.jit(exp.init_params, out_shardings=state_sh['params'])(init_rng)
    return from_params(exp.load_pretrained(params))

  return TrainSetup(tx, _with_shardings(abstract_state, state_sh), state_sh, from_scratch,
                    from_params)


def remat_loss(loss_fn, policy: str):
  """`loss_fn` under `jax.checkpoint` with the `jax.checkpoint_policies` named `policy`
  ('' = unchanged): the backward pass recomputes what the policy does not save, e.g.
  'dots_with_no_batch_dims_saveable' keeps the weight matmuls' outputs and recomputes
  attention probabilities and element-wise intermediates."""
  if not policy:
    return loss_fn
  if not hasattr(jax.checkpoint_policies, policy):
    raise ValueError(f'config.train.remat={policy!r} is not a jax.checkpoint_policies name.')
  return jax.checkpoint(loss_fn, policy=getattr(jax.checkpoint_policies, policy))


def make_train_step(exp: experiment_lib.Experiment, tx, state_sh, batch_sh, mesh):
  """`train_step` jitted with explicit shardings, donating the old state."""
  rep = sharding.replicated(mesh)
  loss_fn = remat_loss(exp.loss_fn, exp.config.train.get('remat', ''))
  labels = optim.labels(state_sh['params'], exp.freeze_rules)
  frozen = jax.tree.map(lambda label: label == optim.FROZEN, labels)
  if not any(jax.tree.leaves(frozen)):
    frozen = None
  def step(state, batch, rng):
    with sharding.activations_on(mesh):  # Trace time: pins activations to the batch axes.
      return train_step(state, batch, rng, loss_fn=loss_fn, tx=tx, frozen=frozen,
                        ema_decay=float(exp.config.train.get('ema_decay', 0.0)))

  return jax.jit(step, in_shardings=(state_sh, batch_sh, rep), out_shardings=(state_sh, rep),
                 donate_argnums=(0,))


class _Writer:
  """clu metric writer (log + TensorBoard on process 0, log only elsewhere) + metrics.jsonl."""

  def __init__(self, workdir: str):
    # Imported here: clu's TensorBoard writer imports TensorFlow (seconds), needed only to train.
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    self.active = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(
        os.path.join(workdir, 'tb'), just_logging=not self.active, asynchronous=False)
    if self.active:  # Benchmarks read metrics.jsonl; clu has no JSON-lines writer.
      self.jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def write(self, step: int, prefix: str, metrics: Mapping[str, float]) -> None:
    self.writer.write_scalars(
        step, {f'{prefix}/{k}'.replace('@', '_at_'): float(v) for k, v in metrics.items()})
    self.writer.flush()
    if self.active:
      self.jsonl.write(json.dumps({'step': step, 'split': prefix,
                                   **{k: float(v) for k, v in metrics.items()}}) + '\n')
      self.jsonl.flush()

  def close(self):
    self.writer.close()
    if self.active:
      self.jsonl.close()


def _check_finite(step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
  host = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
  if not math.isfinite(host['loss']):
    raise FloatingPointError(f'Non-finite loss {host["loss"]} at step {step}.')
  return host


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains and evaluates `config.experiment`; returns the final eval metrics.

  config.json, checkpoints, TensorBoard events, metrics.jsonl and results.json go to
  `workdir`.
  """
  t_start = time.time()
  checkpointing.make_workdir(workdir)  # A workdir that is a file: one clear error.
  if jax.process_index() == 0:  # The run's record: launch.generate and stage 2 read it.
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=1))
  tc = config.train
  mesh = sharding.make_mesh(config.mesh)
  logging.info('Mesh: %s', dict(mesh.shape))
  exp = experiment_lib.build(config, mesh)
  init_rng, train_rng = seed_rngs(tc.seed)

  setup = create_train_state(config, mesh, exp, init_rng)
  tx, state_sh, abstract_state = setup.tx, setup.state_shardings, setup.abstract_state
  num_params = int(parameter_overview.count_parameters(abstract_state['params']))
  parameter_overview.log_parameter_overview(  # Abstract params: shapes and shardings only.
      abstract_state['params'], include_stats='sharding', jax_logging_process=0,
      msg=f'Params: {num_params}')

  data_iter = exp.train_dataset(tc.seed)
  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=tc.get('keep_checkpoints', 2),
                                    use_async=tc.get('async_checkpoint', True))
  state, how = checkpointing.restore_or_init(
      ckpt, abstract_state, data_iter, setup.from_scratch,
      init_checkpoint=tc.get('init_checkpoint', None), init_state_from_params=setup.from_params)
  step = int(jax.device_get(state['step']))
  logging.info('Train state from %s, step %d of %d.', how, step, tc.num_steps)

  batch_sh = None  # Fixed from the first batch (ranks differ per key).
  step_fn = None
  # One executable per batch shape (trimmed stage-2 batches come in a few), compiled
  # once through lower() so its XLA cost analysis is known: FLOPs are counted per step.
  executables: dict[tuple, tuple[Any, float]] = {}
  train_flops = 0.0
  budget = float(tc.get('flop_budget', 0) or 0)
  writer = _Writer(workdir)
  sched = optim.schedule(tc)
  pending = None  # (step, metrics) checked one step late, keeping dispatch async.
  t_log, s_log = time.time(), step
  t_train = time.time()
  eval_wall = 0.0
  eval_metrics = {}
  # eval_every -1: train only. The evaluators run host-side loops over process-local
  # arrays (decoding, ranking), so a multi-process run only trains too; one process
  # evaluates its checkpoint (`launch.main --num_processes=1` on the same workdir:
  # a finished run is evaluated; `launch/tpu_vm.py eval`).
  evaluates = tc.eval_every >= 0 and jax.process_count() == 1
  if not evaluates:
    logging.info('Training only (%d processes, eval_every %d); evaluate with one process '
                 'on this workdir.', jax.process_count(), tc.eval_every)

  try:
    while step < tc.num_steps:
      batch = sharding.shard_batch(next(data_iter), mesh)
      if step_fn is None:
        batch_sh = {k: v.sharding for k, v in batch.items()}
        step_fn = make_train_step(exp, tx, state_sh, batch_sh, mesh)
      key = tuple((k, v.shape) for k, v in sorted(batch.items()))
      if key not in executables:
        exe = step_fn.lower(state, batch, train_rng).compile()
        executables[key] = (exe, step_flops(exe))
      exe, flops = executables[key]
      state, metrics = exe(state, batch, train_rng)
      train_flops += flops
      if pending is not None:
        _check_finite(*pending)
      step += 1
      pending = (step, metrics)
      # config.train.flop_budget (FLOPs, 0 = none) ends a run early: rows of a
      # benchmark compared at equal training compute.
      is_last = step == tc.num_steps or (budget and train_flops >= budget)
      if step % tc.log_every == 0 or is_last:
        host = _check_finite(*pending)
        now = time.time()
        sps = (step - s_log) / max(now - t_log, 1e-9)
        eta = (tc.num_steps - step) / max(sps, 1e-9)
        logging.info('step %d/%d loss %.4f steps/s %.2f ETA %s', step, tc.num_steps,
                     host['loss'], sps, time.strftime('%H:%M:%S', time.gmtime(eta)))
        writer.write(step, 'train', dict(host, lr=float(sched(step - 1)), steps_per_sec=sps,
                                         train_gflop=train_flops / 1e9))
        t_log, s_log = now, step
      if step % tc.ckpt_every == 0 or is_last:
        _check_finite(*pending)  # Never save a non-finite state.
        ckpt.save(step, state, data_iter)
      if evaluates and ((tc.eval_every > 0 and step % tc.eval_every == 0) or is_last):
        t_eval = time.time()
        eval_metrics = exp.evaluate(eval_params(state), step)
        eval_wall += time.time() - t_eval
        writer.write(step, 'eval', eval_metrics)
      if is_last:
        break
    train_wall = time.time() - t_train - eval_wall  # Compilation included.
    if evaluates and not eval_metrics:  # Resumed a finished run: evaluate its final state.
      eval_metrics = exp.evaluate(eval_params(state), step)
  except FloatingPointError as e:  # No non-finite state is ever saved: name the kept one.
    ckpt.wait()
    kept = ckpt.latest_step()
    raise FloatingPointError(
        f'{e} The last good checkpoint, step {kept}, is kept in {ckpt.directory}: a relaunch '
        'resumes from it (lower train.lr or check the data first).' if kept is not None else
        f'{e} No checkpoint was written yet; lower train.lr or check the data.') from None
  finally:  # Let a pending async save finish (or fail) before leaving.
    ckpt.close()
    writer.close()
  if jax.process_index() == 0:
    examples = exp.eval_examples() if evaluates else None
    if examples is not None:
      with open(os.path.join(workdir, 'eval_examples.json'), 'w') as f:
        json.dump(examples, f)
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump({'step': step, 'train_wall_s': train_wall, 'total_wall_s': time.time() - t_start,
                 'num_params': num_params, 'resumed': how, 'train_gflop': train_flops / 1e9,
                 'compiled_shapes': len(executables),
                 'config': {'batch_size': tc.batch_size, 'num_steps': tc.num_steps},
                 **eval_metrics}, f, indent=1)
  return eval_metrics
