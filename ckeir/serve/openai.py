"""The OpenAI API's side of `ckec serve`: request bodies checked into `Request`s, and the
response objects and stream chunks in OpenAI's shapes (`text_completion`,
`chat.completion`, `chat.completion.chunk`, `usage`, the `{"error": {...}}` body).

Every check raises `APIError` (a `CkeError` with an HTTP status and the parameter it is
about), which the app turns into OpenAI's error shape with a 4xx status.
"""

from __future__ import annotations

import time
import uuid

import attrs

from ckeir.errors import CkeError
from ckeir.limits import MAX_NEW_TOKENS, shown
from ckeir.runtime.sampling import Sampling
from ckeir.runtime.tokenizer import check_messages, check_stop

# OpenAI's default temperature (llama.cpp's server uses 0.8): a request that says nothing
# samples; temperature 0 is greedy and gives what `generate` gives.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions

# request fields that map onto `Sampling` (llama.cpp's names beside OpenAI's)
SAMPLING_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


class APIError(CkeError):
    """A request the server refuses: HTTP `status`, OpenAI's error `type`, the `param`."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, kind=None):
        super().__init__(message)
        self.status = status
        self.param = param
        self.type = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.status,
            }
        }


@attrs.frozen
class Request:
    """One completion request, checked: what to run and how to answer."""

    chat: bool
    prompt: str | list[int] | None  # completions: text or token ids
    messages: list[dict] | None  # chat
    max_tokens: int | None  # None: until the context is full
    sampling: Sampling
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


def parse_request(body, chat: bool) -> Request:
    if not isinstance(body, dict):
        raise APIError("the request body must be a JSON object")
    prompt = messages = None
    if chat:
        if "messages" not in body:
            raise APIError("'messages' is required", param="messages")
        try:
            messages = check_messages(body["messages"])
        except CkeError as e:
            raise APIError(e.message, param="messages") from None
    else:
        if "prompt" not in body:
            raise APIError("'prompt' is required", param="prompt")
        prompt = _prompt(body["prompt"])
    n = body.get("n", 1)
    if n not in (1, None):
        raise APIError("only n = 1 is served (one choice per request)", param="n")
    if body.get("echo"):
        raise APIError("echo is not supported", param="echo")
    default_tokens = None if chat else DEFAULT_COMPLETION_TOKENS
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _count(max_tokens, "max_tokens") if max_tokens is not None else default_tokens
    options = {opt: body.get(field) for field, opt in SAMPLING_FIELDS.items()}
    if options["temperature"] is None:
        options["temperature"] = DEFAULT_TEMPERATURE
    if options["seed"] == -1:  # llama.cpp's "random"
        options["seed"] = None
    try:
        sampling = Sampling.of(**options)
    except CkeError as e:
        param = next((f for f in SAMPLING_FIELDS if e.message.startswith(f)), None)
        raise APIError(e.message, param=param) from None
    try:
        stop = check_stop(body.get("stop"))
    except CkeError as e:
        raise APIError(e.message, param="stop") from None
    stream = _flag(body.get("stream", False), "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise APIError("stream_options must be an object", param="stream_options")
    include_usage = _flag(stream_options.get("include_usage", False), "stream_options")
    return Request(chat, prompt, messages, max_tokens, sampling, stop, stream, include_usage)


def _prompt(prompt) -> str | list[int]:
    """A completion prompt: text, or token ids (a list of one of either is the same)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(_is_int(i) for i in prompt):
        return list(prompt)
    raise APIError(
        "prompt must be a string or a list of token ids (one prompt per request)", param="prompt"
    )


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _count(value, name: str) -> int:
    if not _is_int(value) or not 0 <= value <= MAX_NEW_TOKENS:
        raise APIError(
            f"{name} must be an integer from 0 to {MAX_NEW_TOKENS}, not {shown(value)}",
            param=name,
        )
    return value


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise APIError(f"{name} must be true or false, not {shown(value)}", param=name)
    return value


# ---- answers ----------------------------------------------------------------------------------


@attrs.define
class Answer:
    """The fields every response and chunk of one request shares."""

    chat: bool
    model: str
    id: str = attrs.field(factory=lambda: f"cmpl-{uuid.uuid4().hex[:24]}")
    created: int = attrs.field(factory=lambda: int(time.time()))

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, text: str, finish_reason: str, usage: dict) -> dict:
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage}

    def chunk(self, text: str | None, finish_reason: str | None = None, role: bool = False):
        """One stream chunk: a piece of text, or (with `finish_reason`) the last one; the
        first chat chunk carries the role."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {
            "index": 0,
            "text": text or "",
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, usage: dict) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
