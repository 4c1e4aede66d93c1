"""Chat templates: a model's own `chat_template` (tokenizer_config.json), rendered as transformers does.

    template = ChatTemplate(tokenizer_config["chat_template"], {"bos_token": "<s>", "eos_token": "</s>"})
    text = template.render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)

The template is Jinja2 run in jinja2's ImmutableSandboxedEnvironment (templates from the hub are untrusted
code) with transformers' settings: trim_blocks, lstrip_blocks, the loopcontrols extension, the globals
raise_exception(message) and strftime_now(format), and a tojson filter that does not escape HTML. The
template sees `messages`, `add_generation_prompt` and the tokenizer's special tokens (bos_token, eos_token,
...) as strings. This covers Llama 2's [INST], Llama 3's header tokens and ChatML (SmolLM2, TinyLlama's
zephyr-style template). The rendered text is encoded without adding special tokens (the template writes them).

Not handled: tools, documents, the {% generation %} tag (assistant masks), multimodal content.
"""

import json
from datetime import datetime

from llmpy.errors import LlmpyError


def _environment():
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:
        raise LlmpyError("chat templates need jinja2: pip install jinja2 (or pip install 'llmpy[hf]')") from e

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env, jinja2


class ChatTemplate:
    def __init__(self, source, special_tokens, where="chat_template"):
        """source: the Jinja2 text; special_tokens: {"bos_token": "<s>", ...} the template may use."""
        env, jinja2 = _environment()
        self.jinja2 = jinja2
        self.where = where
        self.special_tokens = dict(special_tokens)
        try:
            self.template = env.from_string(source)
        except jinja2.exceptions.TemplateError as e:
            raise LlmpyError(f"{where}: the chat template does not compile ({e})") from e

    def render(self, messages, add_generation_prompt=True):
        """The prompt text of a conversation: messages is [{"role": ..., "content": ...}]."""
        try:
            return self.template.render(messages=[dict(m) for m in messages],
                                        add_generation_prompt=add_generation_prompt, **self.special_tokens)
        except self.jinja2.exceptions.TemplateError as e:
            raise LlmpyError(f"{self.where}: the model's chat template refused the conversation: {e}") from e
