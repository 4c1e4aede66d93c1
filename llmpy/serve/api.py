"""The OpenAI API's requests and replies: validation of /v1/completions and /v1/chat/completions bodies
into an engine Request, and the JSON of replies and stream chunks.

Supported fields: model, prompt (a string, or a list of one string) / messages (system, developer, user and
assistant roles in the orders the model's chat template takes; string or text-part content), max_tokens /
max_completion_tokens, temperature, top_p, seed, stop (a string or a list of up to 4), stream,
stream_options.include_usage, user (ignored: it does not change the reply). Fields that would change the meaning of a
request get a 400 unless they hold their neutral value (n 1, logprobs false, echo false, penalties 0, ...): several
choices, tools, logprobs, echo, suffix, logit_bias, penalties and response formats are not implemented, and a silent
ignore would return something other than what was asked for.

Defaults are OpenAI's (temperature 1, top_p 1, max_tokens = what the context leaves; more only when the server
shifts the context, `--context-shift`); sampling is
llmpy.sampler.Sampler, run.c's, with the request's seed (>= 1: it is the xorshift state; none = from the
clock). The same seed, temperature and top_p give the text `llmpy run -s SEED -t T -p P` prints after the
prompt.
"""

import json
import time
import uuid
from dataclasses import dataclass

from llmpy.errors import LlmpyError
from llmpy.sampler import U64, Sampler
from llmpy.serve.engine import Request

MAX_STOP_STRINGS = 4  # OpenAI's limit
COMMON_FIELDS = {"model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options", "user"}
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt"}
CHAT_FIELDS = COMMON_FIELDS | {"messages", "max_completion_tokens"}
# fields accepted only at the value that means "feature off"
NEUTRAL_VALUES = {
    "n": (1,), "best_of": (1,), "echo": (False,), "logprobs": (None, False, 0), "top_logprobs": (None, 0),
    "presence_penalty": (0,), "frequency_penalty": (0,), "logit_bias": (None, {}), "suffix": (None, ""),
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}), "parallel_tool_calls": (None,),
}
ROLES = ("system", "developer", "user", "assistant")


class ApiError(Exception):
    """An error reply: HTTP status and OpenAI's {"error": {message, type, param, code}} body."""

    def __init__(self, status, message, param=None, code=None, kind="invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self):
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def parse_json(raw):
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return body


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _neutral(value, allowed):
    return any(value is a or (type(value) is type(a) and value == a) or (_is_number(a) and _is_number(value)
                                                                          and value == a) for a in allowed)


def _check_fields(body, known):
    for name, value in body.items():
        if name in known:
            continue
        if name in NEUTRAL_VALUES:
            if not _neutral(value, NEUTRAL_VALUES[name]):
                raise ApiError(400, f"'{name}' = {json.dumps(value)} is not supported by this server",
                               param=name, code="unsupported_parameter")
            continue
        raise ApiError(400, f"unknown or unsupported field '{name}'", param=name, code="unsupported_parameter")


def _number(body, name, default, lo, hi):
    v = body.get(name)
    if v is None:
        return default
    if not _is_number(v) or not lo <= v <= hi:
        raise ApiError(400, f"'{name}' must be a number in [{lo}, {hi}], got {json.dumps(v)}", param=name)
    return float(v)


def _max_tokens(body, names):
    given = [n for n in names if body.get(n) is not None]
    if len(given) > 1 and body[given[0]] != body[given[1]]:
        raise ApiError(400, f"'{given[0]}' and '{given[1]}' differ: give one", param=given[1])
    if not given:
        return None
    v = body[given[0]]
    if not _is_int(v) or v < 1:
        raise ApiError(400, f"'{given[0]}' must be an integer >= 1, got {json.dumps(v)}", param=given[0])
    return v


def _stop(body):
    v = body.get("stop")
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) \
            or len(stops) > MAX_STOP_STRINGS:
        raise ApiError(400, f"'stop' must be a non-empty string or a list of up to {MAX_STOP_STRINGS} of them",
                       param="stop")
    return tuple(stops)


def _seed(body):
    v = body.get("seed")
    if v is None:
        return time.time_ns() & U64 or 1
    if not _is_int(v) or not 1 <= v <= U64:
        raise ApiError(400, f"'seed' must be an integer in [1, 2**64 - 1] (the sampler's xorshift state), "
                            f"got {json.dumps(v)}", param="seed")
    return v


def _bool(body, name):
    v = body.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise ApiError(400, f"'{name}' must be true or false, got {json.dumps(v)}", param=name)
    return v


def _content(message, i):
    """The text of a message: a string, or a list of {"type": "text", "text": ...} parts."""
    c = message.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                   for p in c):
        return "".join(p["text"] for p in c)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", param=f"messages[{i}]")


def _messages(messages):
    """[{"role", "content"}] with string contents ("developer" is "system"); the model's template decides
    which orders of roles it takes."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}] must be an object with a role in {ROLES}", param=f"messages[{i}]")
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": _content(m, i)})
    return out


@dataclass
class Call:
    """A validated request: the engine's Request and how to reply."""
    request: Request
    chat: bool
    stream: bool
    include_usage: bool
    id: str
    created: int


def parse_call(body, model, chat, context_shift=False):
    """Validate a completions (chat=False) or chat completions body against model; ApiError when it does not fit.
    context_shift: the engine shifts a full context (max_tokens may go past it; without max_tokens a reply still
    ends where the context does)."""
    _check_fields(body, CHAT_FIELDS if chat else COMPLETION_FIELDS)
    name = body.get("model")
    if name is not None and name != model.name:
        raise ApiError(404, f"the model '{name}' does not exist: this server serves '{model.name}'", param="model",
                       code="model_not_found")
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise ApiError(400, "'stream_options' supports only include_usage", param="stream_options")
    include_usage = _bool(options or {}, "include_usage")
    if options is not None and not stream:
        raise ApiError(400, "'stream_options' is only allowed with stream true", param="stream_options")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    max_tokens = _max_tokens(body, ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",))
    stop, seed = _stop(body), _seed(body)
    if chat:
        messages = _messages(body.get("messages"))
    else:
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string (lists of prompts and token arrays are not supported)",
                           param="prompt")
    texts = [m["content"] for m in messages] if chat else [prompt]
    n_bytes = sum(len(t.encode("utf-8", errors="replace")) for t in texts)
    if n_bytes > model.max_prompt_bytes:  # more tokens than the context for sure: not worth encoding
        raise ApiError(400, f"the prompt is {n_bytes} bytes, more than a context of {model.ctx} tokens can hold",
                       param="messages" if chat else "prompt", code="context_length_exceeded")
    try:
        tokens = model.encode_chat(messages) if chat else model.encode_prompt(prompt)
    except LlmpyError as e:  # longer than the context, text the vocabulary cannot encode, a template's refusal
        raise ApiError(400, str(e), param="messages" if chat else "prompt", code="invalid_prompt") from None
    left = model.ctx - len(tokens)  # new tokens that fit in the context
    if left < 1:
        raise ApiError(400, f"the prompt is {len(tokens)} tokens and the context is {model.ctx}: no room for a reply",
                       param="messages" if chat else "prompt", code="context_length_exceeded")
    if max_tokens is not None and max_tokens > left and not context_shift:
        raise ApiError(400, f"the context is {model.ctx} tokens: {len(tokens)} in the prompt leave room for "
                            f"{left} new tokens, but {max_tokens} were asked for", param="max_tokens",
                       code="context_length_exceeded")
    sampler = Sampler(model.vocab_size, temperature, top_p, seed)
    stop_ids = model.chat_stop_ids if chat else model.completion_stop_ids
    request = Request(tokens, max_tokens or left, sampler, stop_ids, stop, chat=chat)
    prefix = "chatcmpl" if chat else "cmpl"
    return Call(request, chat, stream, include_usage, f"{prefix}-{uuid.uuid4().hex}", int(time.time()))


# -----------------------------------------------------------------------------
# replies

def usage(request):
    n_prompt, n = len(request.tokens), request.n_generated
    return {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}


def reply(call, model_name, text, finish_reason):
    """The whole (non-streamed) reply."""
    if call.chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {"id": call.id, "object": "chat.completion" if call.chat else "text_completion", "created": call.created,
            "model": model_name, "choices": [choice], "usage": usage(call.request)}


def chunk(call, model_name, text=None, finish_reason=None, role=False, with_usage=False):
    """One streamed chunk: text (or the role, first, in a chat), a finish reason, or (choices empty) the usage."""
    if with_usage:
        choices = []
    elif call.chat:
        delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    else:
        choices = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}]
    out = {"id": call.id, "object": "chat.completion.chunk" if call.chat else "text_completion",
           "created": call.created, "model": model_name, "choices": choices}
    if call.include_usage:
        out["usage"] = usage(call.request) if with_usage else None
    return out


def text_chunk_template(call, model_name):
    """(prefix, suffix) bytes such that prefix + json.dumps(text).encode() + suffix is json.dumps(chunk(call,
    model_name, text)).encode(): a streamed text chunk without building and encoding its dict every token."""
    marker = json.dumps("\u0000text\u0000")
    whole = json.dumps(chunk(call, model_name, "\u0000text\u0000"))
    i = whole.index(marker)
    return whole[:i].encode(), whole[i + len(marker):].encode()


def models_list(model_name, created):
    return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                        "owned_by": "llmpy"}]}
