"""Chat with a Llama 2 chat model: run.c's `chat` loop, one KV cache across the whole conversation.

Each user turn is rendered with the Llama 2 chat template and encoded with BOS:
    first turn with a system prompt: "[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST]"
    any other turn:                  "[INST] {user} [/INST]"
The assistant samples until it produces EOS; the EOS goes into the KV cache before the next turn's
BOS (the `... answer </s><s>[INST] ...` layout Llama 2 chat was trained on). Input lines come from
any text stream (a terminal or a script on stdin); end of input ends the chat. When a turn would not
fit in the context (steps), the chat stops with a message instead of running past seq_len.

Differences from run.c: the turn is forwarded as one prefill; the piece run.c prints right after EOS
is not printed; overlong input is not cut at 512 bytes; the context limit is checked.

encode_messages renders a whole conversation (the server's /v1/chat/completions is stateless): earlier
assistant answers are encoded as text after their turn and closed with EOS, as Meta's reference chat
code does; a one-turn conversation gives exactly the tokens `chat` forwards for its first turn.

chat_with_template is the same loop for a Hugging Face model: each turn the whole conversation is rendered
with the model's own chat template (llmpy.llama.template) and encoded; the tokens it shares with what the KV
cache already holds are not forwarded again (usually all but the new turn), the rest are; the assistant
samples until any of the model's eos ids.
"""

from llmpy.llama.generate import resolve_steps
from llmpy.llama.model import EOS
from llmpy.tokenizers.llama2 import safe_piece

SYSTEM_TEMPLATE = "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]"
USER_TEMPLATE = "[INST] {user} [/INST]"


def render_turn(user, system=""):
    """The Llama 2 chat template for one user turn (system only on the first)."""
    if system:
        return SYSTEM_TEMPLATE.format(system=system, user=user)
    return USER_TEMPLATE.format(user=user)


def encode_messages(tokenizer, system, turns):
    """Tokens of a conversation: turns is [(user, answer)], answer None for the last turn (to be generated).

    Each turn: BOS + render_turn(user) (+ " " + answer + EOS when answered); system only in the first turn."""
    tokens = []
    for i, (user, answer) in enumerate(turns):
        text = render_turn(user, system if i == 0 else "")
        if answer is None:
            tokens += tokenizer.encode(text, bos=True, eos=False)
        else:
            tokens += tokenizer.encode(f"{text} {answer.strip()}", bos=True, eos=True)
    return tokens


def encode_conversation(tokenizer, template, messages, add_generation_prompt=True):
    """Tokens of [{"role", "content"}] rendered by a ChatTemplate (the template writes the special tokens)."""
    return tokenizer.encode(template.render(messages, add_generation_prompt), bos=False, eos=False)


def _read_line(prompt, inp, out):
    out.write(prompt.encode())
    out.flush()
    line = inp.readline()
    if not line:
        return None  # end of input
    return line.removesuffix("\n")


def chat(transformer, tokenizer, sampler, steps, inp, out, system_prompt=None, user_prompt=None):
    """Run a conversation; inp is a text stream of user lines, out a binary stream. Returns the forwarded tokens."""
    steps = resolve_steps(steps, transformer.config.seq_len)
    forwarded = []  # every token that went through the model, in order (the KV cache's contents)
    pending = []  # tokens to forward before the next turn (the assistant's EOS)
    pos = 0
    first = True
    while True:
        if first:
            system = system_prompt if system_prompt is not None else _read_line(
                "Enter system prompt (optional): ", inp, out)
            user = user_prompt if user_prompt is not None else _read_line("User: ", inp, out)
        else:
            user = _read_line("User: ", inp, out)
        if user is None or (first and system is None):
            break
        tokens = pending + tokenizer.encode(render_turn(user, system if first else ""), bos=True, eos=False)
        first = False
        if pos + len(tokens) >= steps:
            out.write(f"\n[context full: this turn needs {len(tokens)} tokens but only {steps - pos} of {steps} "
                      "are left; start a new chat]\n".encode())
            break
        out.write(b"Assistant: ")
        out.flush()
        logits = transformer.prefill(tokens, start=pos)[0]
        forwarded += tokens
        pos += len(tokens)
        token, nxt = tokens[-1], sampler.sample(logits)
        while nxt != EOS:
            if pos >= steps:
                out.write(f"\n[context full: the conversation reached {steps} tokens; start a new chat]\n".encode())
                return forwarded
            out.write(safe_piece(tokenizer.decode(token, nxt)))
            out.flush()
            token = nxt
            logits = transformer.forward_token(token, pos)
            forwarded.append(token)
            pos += 1
            nxt = sampler.sample(logits)
        out.write(b"\n")
        pending = [EOS]
    out.write(b"\n")
    out.flush()
    return forwarded


def chat_with_template(transformer, tokenizer, template, sampler, steps, inp, out, system_prompt=None,
                       user_prompt=None, stop_ids=(EOS,)):
    """chat for a Hugging Face model and its chat template; returns the tokens in the KV cache at the end."""
    steps = resolve_steps(steps, transformer.config.seq_len)
    cached = []  # the tokens whose keys and values are in the cache, positions 0..len-1
    messages = []
    first = True
    while True:
        if first:
            system = system_prompt if system_prompt is not None else _read_line(
                "Enter system prompt (optional): ", inp, out)
            user = user_prompt if user_prompt is not None else _read_line("User: ", inp, out)
            if system:
                messages.append({"role": "system", "content": system})
        else:
            user = _read_line("User: ", inp, out)
        if user is None or (first and system is None):
            break
        first = False
        messages.append({"role": "user", "content": user})
        tokens = encode_conversation(tokenizer, template, messages)
        if len(tokens) >= steps:
            out.write(f"\n[context full: the conversation needs {len(tokens)} of {steps} tokens; start a new "
                      "chat]\n".encode())
            break
        same = 0  # keep the cache for the prefix the new rendering shares with it (at least one token forwarded)
        while same < min(len(cached), len(tokens) - 1) and cached[same] == tokens[same]:
            same += 1
        out.write(b"Assistant: ")
        out.flush()
        logits = transformer.prefill(tokens[same:], start=same)[0]
        cached = list(tokens)
        pieces = tokenizer.stream()
        answer = []
        nxt = sampler.sample(logits)
        while nxt not in stop_ids:
            if len(cached) >= steps:
                out.write(f"\n[context full: the conversation reached {steps} tokens; start a new chat]\n".encode())
                return cached
            out.write(pieces.push(nxt))
            out.flush()
            answer.append(nxt)
            logits = transformer.forward_token(nxt, len(cached))
            cached.append(nxt)
            nxt = sampler.sample(logits)
        out.write(pieces.finish() + b"\n")
        messages.append({"role": "assistant", "content": tokenizer.decode_ids(answer, skip_special_tokens=True)})
    out.write(b"\n")
    out.flush()
    return cached
