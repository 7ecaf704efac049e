"""`Client` and `AsyncClient`: one set of operations (`_Operations`), two ways of running their plans."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import httpx

from zssr_client import _plans
from zssr_client._plans import Close, Image, Options, Plan, Progress, ReadLine, Send, Stream, T

__version__ = "0.1.0"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
JOB_PARAMS = ("scale", "method", "preset", "kernel", "denoise", "output_format", "webhook_url", "seed", "crop")


class _Operations:
    """The API's operations, written once. Each builds a plan (zssr_client._plans) and returns `self._run(plan)`:
    its value in `Client`, a coroutine to await in `AsyncClient`."""

    _http_class: Callable[..., Any]
    _run: Callable[[Plan[Any]], Any]

    def __init__(self, base_url: str = DEFAULT_BASE_URL, api_key: str | None = None, timeout: float = 30.0,
                 max_retries: int = 5, *, backoff_seconds: float = 0.5, backoff_max_seconds: float = 20.0,
                 max_retry_after_seconds: float = 120.0):
        """`timeout`: seconds to connect and between two reads of an answer (each attempt). `max_retries`:
        retries after a lost connection, a 429 or a 503, waiting as the answer's Retry-After says (a longer one
        than `max_retry_after_seconds` is raised instead), else `backoff_seconds` doubling up to
        `backoff_max_seconds`."""
        self._options = Options(timeout, max_retries, backoff_seconds, backoff_max_seconds, max_retry_after_seconds)
        headers = {"User-Agent": f"zssr-upscaler-client/{__version__}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = self._http_class(base_url=base_url, headers=headers, timeout=timeout)

    def submit(self, image: Image | None = None, *, image_url: str | None = None, scale: float | None = None,
               method: str | None = None, preset: str | None = None, kernel: str | None = None,
               output_format: str | None = None, webhook_url: str | None = None, seed: int | None = None,
               crop: tuple[int, int, int, int] | str | None = None, denoise: str | None = None):
        """Submit a job: `image` is a path, bytes, a binary file object or a PIL image; or give `image_url=` for
        the service to fetch. Parameters left None take the API's defaults (scale 2, zssr, balanced, png).
        Returns the job (a dict). The POST carries an Idempotency-Key that its retries reuse."""
        params = {"scale": scale, "method": method, "preset": preset, "kernel": kernel, "denoise": denoise,
                  "output_format": output_format, "webhook_url": webhook_url, "seed": seed, "crop": crop}
        return self._run(_plans.submit(self._options, image, image_url, params))

    def get(self, job_id: str):
        """The job (a dict)."""
        return self._run(_plans.get(self._options, job_id))

    def wait(self, job_id: str, timeout: float | None = 600.0, progress: Progress | None = None):
        """The job once it is succeeded, failed or canceled. Follows its event stream (polls, as Retry-After says,
        if the stream fails); `progress` is called with {"status", "phase", "step", "total_steps", "fraction"}
        on every change. WaitTimeout after `timeout` seconds (None: no limit)."""
        return self._run(_plans.wait(self._options, job_id, timeout, progress))

    def result(self, job_id: str):
        """The output image's bytes (ApiError 409 until the job succeeded)."""
        return self._run(_plans.result(self._options, job_id))

    def cancel(self, job_id: str):
        """Cancel the job; returns it (a running job reaches `canceled` within seconds)."""
        return self._run(_plans.cancel(self._options, job_id))

    def list(self, status: str | None = None, limit: int = 20):
        """The caller's jobs, newest first (a list of dicts), optionally only those in `status`."""
        return self._run(_plans.list_jobs(self._options, status, limit))

    def upscale(self, image: Image | None = None, *, image_url: str | None = None, timeout: float | None = 600.0,
                progress: Progress | None = None, **params: Any):
        """Submit, wait and fetch: the output image's bytes. `params` are submit()'s (scale, method, preset,
        kernel, output_format, webhook_url, seed, crop, denoise). JobFailed (an ApiError) if the job failed or
        was canceled."""
        unknown = sorted(set(params) - set(JOB_PARAMS))
        if unknown:
            raise TypeError(f"upscale() got unexpected parameters: {', '.join(unknown)}")
        return self._run(_plans.upscale(self._options, image, image_url, params, timeout, progress))


class Client(_Operations):
    """The API from blocking code. Use it as a context manager, or call close()."""

    _http_class = httpx.Client

    def _run(self, plan: Plan[T]) -> T:
        runner = Runner(plan)
        try:
            while runner.action is not None:
                runner.answer(self._perform(runner.action, runner.opened))
            return runner.value
        finally:
            for stream in runner.opened:
                stream.response.close()

    def _perform(self, action: Any, opened: list[Stream]) -> Any:
        try:
            if isinstance(action, Send):
                request = self._http.build_request(**action.request_args(self._options))
                response = self._http.send(request, stream=action.stream, follow_redirects=action.follow_redirects)
                return opened_stream(response, response.iter_lines(), opened) if action.stream else response
            if isinstance(action, ReadLine):
                return next(action.stream.lines, None)
            if isinstance(action, Close):
                return action.stream.response.close()
            return time.sleep(action.seconds)
        except httpx.HTTPError as exc:
            return exc

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Operations):
    """The API from asyncio code: the methods of `Client`, each awaited. Use `async with`, or await aclose()."""

    _http_class = httpx.AsyncClient

    async def _run(self, plan: Plan[T]) -> T:
        runner = Runner(plan)
        try:
            while runner.action is not None:
                runner.answer(await self._perform(runner.action, runner.opened))
            return runner.value
        finally:
            for stream in runner.opened:
                await stream.response.aclose()

    async def _perform(self, action: Any, opened: list[Stream]) -> Any:
        try:
            if isinstance(action, Send):
                request = self._http.build_request(**action.request_args(self._options))
                response = await self._http.send(request, stream=action.stream,
                                                 follow_redirects=action.follow_redirects)
                return opened_stream(response, response.aiter_lines(), opened) if action.stream else response
            if isinstance(action, ReadLine):
                return await anext(action.stream.lines, None)
            if isinstance(action, Close):
                return await action.stream.response.aclose()
            return await asyncio.sleep(action.seconds)
        except httpx.HTTPError as exc:
            return exc

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Runner:
    """Steps a plan: `action` is what it asks for next (None once it returned `value`)."""

    def __init__(self, plan: Plan[Any]):
        self.plan, self.opened = plan, []
        self.action: Any = None
        self.value: Any = None
        self.answer(None)

    def answer(self, reply: Any) -> None:
        try:
            self.action = self.plan.send(reply)
        except StopIteration as done:
            self.action, self.value = None, done.value


def opened_stream(response: httpx.Response, lines: Any, opened: list[Stream]) -> Stream:
    """A streamed answer, remembered so that the runner closes it even if the plan stops early."""
    opened.append(Stream(response, lines))
    return opened[-1]
