"""Answers a prompt for one user of a trained stage-2 run.

The user's memory (encoder -> projection -> Perceiver -> cross-attention K/V, or the
soft prompt) is computed once; the prompts are prefilled once (`decoding.prefill`),
then sampled (`decoding.sample`) with the memory passed to every decode step.
"""

from __future__ import annotations

import os

from gemma import gm
import jax
import jax.numpy as jnp
import numpy as np

from user_llm import checkpointing
from user_llm import experiment
from user_llm import decoding
from user_llm import sharding
from user_llm import userllm
from user_llm.models import user_llm as ul


def load_run(workdir: str):
  """(experiment, params) of the latest checkpoint in a stage-2 workdir."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No config.json in {workdir}: is it a launch.main workdir?')
  config = experiment.read_config(path)  # Also a run's old `data.seq_len`.
  if not issubclass(experiment.experiment_class(config.experiment), userllm.UserLLMExperiment):
    raise ValueError(f'{workdir} is a {config.experiment!r} run, not a stage-2 (userllm) run')
  exp = experiment.build(config, sharding.make_mesh(config.mesh))
  params = checkpointing.load_params(workdir)
  return exp, params


def user_history(exp: userllm.UserLLMExperiment, raw_user_id: str):
  """The user's last `history_len` events as model features (int[1, U]) and mask."""
  prepared = exp.prepared
  record = prepared.user_record(raw_user_id)  # KeyError naming the id if unknown.
  windows = prepared.windows('test')
  row = windows[windows[:, 0] == record][0]
  import data_pipelines  # pylint: disable=g-import-not-at-top
  example = data_pipelines.Example(prepared, 'next_item', exp.features, exp.tokenizer,
                                   False, 8, 8)(row)
  feats = {f: jnp.asarray(example[f][None]) for f in exp.encoder_inputs}
  return feats, jnp.asarray(example['mask'][None])


def answer(exp, params, raw_user_id: str, prompts: list[str], max_new_tokens: int = 32,
           temperature: float = 0.0, top_k: int = 0, seed: int = 0) -> list[str]:
  """Generated answers to `prompts`, all contextualised by the same user."""
  if not prompts or any(not p.strip() for p in prompts):
    raise ValueError('Empty prompt: give the question to ask about the user.')
  if exp.mode == 'text_prompt':
    raise ValueError('A text_prompt run has no user encoder; use a User-LLM run.')
  feats, mask = user_history(exp, raw_user_id)
  user = ul.user_inputs(exp.model, params, feats, mask)  # Once per user.
  n = len(prompts)
  user = jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), user)
  tok = exp.tokenizer
  ids = [prompt_ids(tok, p) for p in prompts]
  ctx = decoding.prefill(exp.model, params, jnp.asarray(padded_prompts(ids)), user,
                         max_new_tokens)
  out = decoding.sample(exp.model, params, ctx, max_new_tokens=max_new_tokens,
                        rng=jax.random.PRNGKey(seed),
                        sampling=sampling_method(temperature, top_k), stop_tokens=tok.stop_ids)
  return [tok.decode(r) for r in decoding.trim(np.asarray(out), tok.stop_ids)]


def prompt_ids(tokenizer, prompt: str) -> list[int]:
  """BOS + the question, ended by a newline (as the stage-2 prompts are)."""
  return [tokenizer.bos_id] + tokenizer.encode(prompt if prompt.endswith('\n') else prompt + '\n')


def padded_prompts(ids: list[list[int]], multiple: int = 32) -> np.ndarray:
  """int32[B, L] left-padded, L rounded up to `multiple`: questions of similar length
  share one compiled prefill (and the persistent compilation cache)."""
  return decoding.left_pad(ids, -(-max(len(i) for i in ids) // multiple) * multiple)


def sampling_method(temperature: float = 0.0, top_k: int = 0) -> gm.text.SamplingMethod:
  """Greedy at temperature 0, else random (top-k if top_k > 0) sampling."""
  if temperature > 0 and top_k > 0:
    return gm.text.TopkSampling(temperature=temperature, k=top_k)
  if temperature > 0:
    return gm.text.RandomSampling(temperature=temperature)
  return gm.text.Greedy()
