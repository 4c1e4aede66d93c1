"""Chat with a Llama 2 chat model: run.c's `chat` loop, one KV cache across the whole conversation.

Each user turn is rendered with the Llama 2 chat template and encoded with BOS:
    first turn with a system prompt: "[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST]"
    any other turn:                  "[INST] {user} [/INST]"
The assistant samples until it produces EOS; the EOS goes into the KV cache before the next turn's
BOS (the `... answer </s><s>[INST] ...` layout Llama 2 chat was trained on). Input lines come from
any text stream (a terminal or a script on stdin); end of input ends the chat. When a turn would not
fit in the context (steps), the chat stops with a message instead of running past seq_len; with
context_shift it keeps the first turn and the most recent half of the rest (generate.shift_window) and goes on.

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

from llmpy.llama.generate import keep_for, resolve_steps, shift_window
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


def _read_turn(first, system_prompt, user_prompt, inp, out):
    """(system, user) of a turn: on the first, the given prompts or read ones (system "" on later turns);
    None for either when the input ended."""
    if not first:
        return "", _read_line("User: ", inp, out)
    system = system_prompt if system_prompt is not None else _read_line("Enter system prompt (optional): ", inp, out)
    user = user_prompt if user_prompt is not None else _read_line("User: ", inp, out)
    return system, user


def _read_line(prompt, inp, out):
    out.write(prompt.encode())
    out.flush()
    line = inp.readline()
    if not line:
        return None  # end of input
    return line.removesuffix("\n")


def chat(transformer, tokenizer, sampler, steps, inp, out, system_prompt=None, user_prompt=None,
         context_shift=False):
    """Run a conversation; inp is a text stream of user lines, out a binary stream. Returns the tokens in the KV
    cache at the end (every forwarded token, in order, unless the context shifted).

    context_shift: when the window (steps) is full, keep the first turn (keep_for: at most half the window) and the
    most recent half of the rest (shift_window), forward those again, and go on; a new turn that does not fit
    in that recent half still ends the chat."""
    steps = resolve_steps(steps, transformer.config.seq_len)
    cache = []  # the tokens whose keys and values the KV cache holds, positions 0..len(cache)-1
    pending = []  # tokens to forward before the next turn (the assistant's EOS)
    keep = None  # tokens a context shift keeps from the start: the first turn's
    first = True
    while True:
        system, user = _read_turn(first, system_prompt, user_prompt, inp, out)
        if user is None or system is None:
            break
        tokens = pending + tokenizer.encode(render_turn(user, system if first else ""), bos=True, eos=False)
        first = False
        keep = keep_for(len(tokens), steps) if keep is None else keep
        start = len(cache)
        if start + len(tokens) >= steps and context_shift and len(tokens) < max(1, (steps - keep) // 2):
            cache = shift_window(cache + tokens, keep, steps)[:-len(tokens)]
            start = keep  # the kept turn's entries stay; everything after it is forwarded again
        if len(cache) + len(tokens) >= steps:
            shifted = f" (a context shift keeps {max(1, (steps - keep) // 2)} recent tokens)" if context_shift else ""
            out.write(f"\n[context full: this turn needs {len(tokens)} tokens but only {steps - len(cache)} of {steps} "
                      f"are left{shifted}; start a new chat]\n".encode())
            break
        out.write(b"Assistant: ")
        out.flush()
        cache += tokens
        logits = transformer.prefill(cache[start:], start=start)[0]
        token, nxt = tokens[-1], sampler.sample(logits)
        while nxt != EOS:
            if len(cache) >= steps and not context_shift:
                out.write(f"\n[context full: the conversation reached {steps} tokens; start a new chat]\n".encode())
                return cache
            out.write(safe_piece(tokenizer.decode(token, nxt)))
            out.flush()
            token = nxt
            if len(cache) >= steps:
                cache = shift_window(cache + [token], keep, steps)
                logits = transformer.prefill(cache[keep:], start=keep)[0]
            else:
                logits = transformer.forward_token(token, len(cache))
                cache.append(token)
            nxt = sampler.sample(logits)
        out.write(b"\n")
        pending = [EOS]
    out.write(b"\n")
    out.flush()
    return cache


def chat_with_template(transformer, tokenizer, template, sampler, steps, inp, out, system_prompt=None,
                       user_prompt=None, stop_ids=(EOS,), context_shift=False):
    """chat for a Hugging Face model and its chat template; returns the tokens in the KV cache at the end.

    context_shift: as chat's. The cache then holds the conversation's tokens [:keep] + [cut:], and each new
    rendering of the conversation is cut the same way (cut again when it no longer fits)."""
    steps = resolve_steps(steps, transformer.config.seq_len)
    cached = []  # the tokens whose keys and values are in the cache, positions 0..len-1
    messages = []
    keep, cut = None, 0  # once shifted (cut > 0): cached = conversation[:keep] + conversation[cut:]
    first = True
    while True:
        system, user = _read_turn(first, system_prompt, user_prompt, inp, out)
        if user is None or system is None:
            break
        if first and system:
            messages.append({"role": "system", "content": system})
        first = False
        messages.append({"role": "user", "content": user})
        tokens = encode_conversation(tokenizer, template, messages)
        keep = keep_for(len(tokens), steps) if keep is None else keep
        wanted = tokens[:keep] + tokens[min(cut, len(tokens) - 1):] if cut else tokens
        if len(wanted) >= steps and context_shift:
            recent = shift_window(tokens, keep, steps)[keep:]
            if messages[-2]["role"] == "assistant" and len(tokens) - len(recent) <= len(
                    encode_conversation(tokenizer, template, messages[:-1], False)):  # the new turn fits in it
                cut = len(tokens) - len(recent)
                wanted = tokens[:keep] + recent
        if len(wanted) >= steps:
            shifted = f", and this turn does not fit in the {max(1, (steps - keep) // 2)} recent tokens a context " \
                "shift keeps" if context_shift else ""
            out.write(f"\n[context full: the conversation needs {len(wanted)} of {steps} tokens{shifted}; start a "
                      "new chat]\n".encode())
            break
        same = 0  # keep the cache for the prefix the new rendering shares with it (at least one token forwarded)
        while same < min(len(cached), len(wanted) - 1) and cached[same] == wanted[same]:
            same += 1
        out.write(b"Assistant: ")
        out.flush()
        logits = transformer.prefill(wanted[same:], start=same)[0]
        cached = list(wanted)
        n_conversation = len(tokens)  # the conversation's tokens so far, of which cached holds [:keep] + [cut:]
        pieces = tokenizer.stream()
        answer = []
        nxt = sampler.sample(logits)
        while nxt not in stop_ids:
            if len(cached) >= steps and not context_shift:
                out.write(f"\n[context full: the conversation reached {steps} tokens; start a new chat]\n".encode())
                return cached
            out.write(pieces.push(nxt))
            out.flush()
            answer.append(nxt)
            n_conversation += 1
            if len(cached) >= steps:
                cached = shift_window(cached + [nxt], keep, steps)
                cut = n_conversation - (len(cached) - keep)
                logits = transformer.prefill(cached[keep:], start=keep)[0]
            else:
                logits = transformer.forward_token(nxt, len(cached))
                cached.append(nxt)
            nxt = sampler.sample(logits)
        out.write(pieces.finish() + b"\n")
        messages.append({"role": "assistant", "content": tokenizer.decode_ids(answer, skip_special_tokens=True)})
    out.write(b"\n")
    out.flush()
    return cached
