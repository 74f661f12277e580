"""The HTTP JSON API of a served User-LLM run (Starlette), and the batching of asks.

  POST /users/{id}/events  {"events": [{"item": "Toy Story (1995)", "rating": 4.5,
                           "timestamp": 964982703}, ...]} or one event object; "item"
                           is a title or a raw id; unknown items are OOV (listed in
                           the reply's "oov"). Durable when the 200 reply is sent.
  POST /users/{id}/ask     {"prompt": "...", "max_new_tokens": 32, "temperature": 0.0,
                           "top_k": 0, "seed": 0} -> {"answer": ...}
  GET  /users/{id}         events held, memory window, recent events
  GET  /healthz            run, encoder digest, users stored

Asks are collected for `batch_wait_ms` (and while a batch runs), grouped by sampling
options (`engine.Ask.group`) and each group answered by one generate call
(`Engine.run_batch`). Errors are JSON {"error": message, ...}: 400 body not JSON, 404
unknown user, 413 prompt too long, 422 malformed event or option.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from typing import Annotated, Any, Callable

import pydantic
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from user_llm.serving import engine as engine_lib

MAX_EVENTS_PER_REQUEST = 1000


class EventIn(pydantic.BaseModel):
  """One event as a client posts it."""

  model_config = pydantic.ConfigDict(extra='forbid')
  item: Annotated[str, pydantic.StringConstraints(min_length=1, max_length=500)] | pydantic.StrictInt
  rating: float | None = pydantic.Field(None, gt=0, le=5, multiple_of=0.5)
  timestamp: int | None = pydantic.Field(None, ge=0)


class EventsIn(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra='forbid')
  events: list[EventIn] = pydantic.Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)


class AskIn(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra='forbid')
  prompt: str = pydantic.Field(min_length=1, max_length=20_000)
  max_new_tokens: int | None = pydantic.Field(None, ge=1)  # None: min(32, the server's).
  temperature: float = pydantic.Field(0.0, ge=0.0, le=10.0)
  top_k: int = pydantic.Field(0, ge=0)
  seed: int = pydantic.Field(0, ge=0, lt=2**31)


class HTTPError(Exception):
  def __init__(self, status: int, message: str, **extra):
    super().__init__(message)
    self.status, self.message, self.extra = status, message, extra


class Batcher:
  """Collects asks for `wait_s`, then runs each group through `run_batch` (in a thread)."""

  def __init__(self, run_batch: Callable[[list[engine_lib.Ask]], list[dict[str, Any]]],
               group: Callable[[engine_lib.Ask], Any], max_batch: int, wait_s: float):
    self._run_batch, self._group = run_batch, group
    self.max_batch, self.wait_s = max_batch, wait_s
    self._queue: asyncio.Queue | None = None

  async def submit(self, ask: engine_lib.Ask) -> dict[str, Any]:
    if self._queue is None:
      raise RuntimeError('The batcher is not running (app lifespan not started).')
    future = asyncio.get_running_loop().create_future()
    await self._queue.put((ask, future))
    return await future

  async def _collect(self) -> list:
    loop = asyncio.get_running_loop()
    batch = [await self._queue.get()]
    deadline = loop.time() + self.wait_s
    while True:
      while not self._queue.empty():  # Everything already waiting (e.g. during a batch).
        batch.append(self._queue.get_nowait())
      left = deadline - loop.time()
      if left <= 0:
        return batch
      try:
        batch.append(await asyncio.wait_for(self._queue.get(), left))
      except TimeoutError:
        return batch

  def start(self) -> asyncio.Task:
    """Starts the batching loop in the running event loop (the app's lifespan)."""
    self._queue = asyncio.Queue()
    return asyncio.create_task(self._loop())

  async def _loop(self):
    while True:
      groups = collections.defaultdict(list)
      for ask, future in await self._collect():
        groups[self._group(ask)].append((ask, future))
      for items in groups.values():
        for i in range(0, len(items), self.max_batch):
          chunk = items[i:i + self.max_batch]
          try:
            results = await run_in_threadpool(self._run_batch, [a for a, _ in chunk])
          except Exception as e:  # pylint: disable=broad-except
            for _, future in chunk:
              if not future.done():
                future.set_exception(e)
            continue
          for (_, future), result in zip(chunk, results):
            if not future.done():
              future.set_result(result)


async def _body(request: Request, model: type[pydantic.BaseModel], what: str):
  try:
    raw = await request.json()
  except (json.JSONDecodeError, UnicodeDecodeError):
    raise HTTPError(400, 'The request body is not JSON.') from None
  if model is EventsIn and isinstance(raw, dict) and 'events' not in raw:
    raw = {'events': [raw]}  # One event object.
  try:
    return model.model_validate(raw)
  except pydantic.ValidationError as e:
    details = [{'loc': list(err['loc']), 'msg': err['msg']} for err in e.errors()]
    raise HTTPError(422, f'Malformed {what}: {details[0]["loc"]}: {details[0]["msg"]}',
                    details=details) from None


def make_app(engine: engine_lib.Engine, batch_wait_ms: float = 5.0) -> Starlette:
  """The Starlette app serving `engine` (its lifespan runs the ask batcher)."""
  batcher = Batcher(engine.run_batch, lambda a: a.group(engine.max_new_tokens),
                    engine.max_batch, batch_wait_ms / 1000)

  async def post_events(request: Request):
    user = request.path_params['user']
    body = await _body(request, EventsIn, 'event')
    events = [e.model_dump() for e in body.events]
    return JSONResponse(await run_in_threadpool(engine.add_events, user, events))

  async def ask(request: Request):
    user = request.path_params['user']
    body = await _body(request, AskIn, 'ask')
    if body.max_new_tokens is None:
      body.max_new_tokens = min(32, engine.max_new_tokens)
    if body.max_new_tokens > engine.max_new_tokens:
      raise HTTPError(422, f'max_new_tokens={body.max_new_tokens} > this server\'s '
                      f'{engine.max_new_tokens}.')
    if not await run_in_threadpool(engine.store.num_events, user):
      raise engine_lib.UnknownUser(user)
    try:
      ids = engine.prompt_ids(body.prompt)
    except engine_lib.PromptTooLong as e:
      raise HTTPError(413, str(e)) from None
    result = await batcher.submit(engine_lib.Ask(
        user, ids, body.max_new_tokens, body.temperature, body.top_k, body.seed))
    return JSONResponse(result)

  async def get_user(request: Request):
    return JSONResponse(await run_in_threadpool(engine.describe, request.path_params['user']))

  async def healthz(request: Request):
    del request
    users = await run_in_threadpool(engine.store.num_users)
    return JSONResponse({'status': 'ok', 'mode': engine.exp.mode, 'users': users,
                         'encoder_digest': engine.digest,
                         'max_len': engine.memory.policy.max_len,
                         'keep': engine.memory.policy.keep, 'max_batch': engine.max_batch,
                         'max_prompt_tokens': engine.max_prompt_tokens,
                         'max_new_tokens': engine.max_new_tokens})

  async def http_error(request: Request, exc: HTTPError):
    del request
    return JSONResponse({'error': exc.message, **exc.extra}, status_code=exc.status)

  async def unknown_user(request: Request, exc: engine_lib.UnknownUser):
    del request
    return JSONResponse({'error': f'Unknown user {exc.args[0]!r}: POST /users/'
                                  f'{exc.args[0]}/events first.'}, status_code=404)

  @contextlib.asynccontextmanager
  async def lifespan(app):
    del app
    task = batcher.start()
    yield
    task.cancel()

  routes = [Route('/users/{user}/events', post_events, methods=['POST']),
            Route('/users/{user}/ask', ask, methods=['POST']),
            Route('/users/{user}', get_user, methods=['GET']),
            Route('/healthz', healthz, methods=['GET'])]
  app = Starlette(routes=routes, lifespan=lifespan,
                  exception_handlers={HTTPError: http_error,
                                      engine_lib.UnknownUser: unknown_user})
  app.state.engine, app.state.batcher = engine, batcher
  return app
