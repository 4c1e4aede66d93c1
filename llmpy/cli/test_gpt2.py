"""`llmpy test-gpt2`: llm.c's test_gpt2 protocol as a command.

Loads a checkpoint and the debug state PyTorch wrote for it, then checks, against the state:
the logits and the loss of a forward pass, every gradient of a backward pass, and 10 AdamW steps
on the same batch (optionally against a file of expected losses). Prints each comparison's max
absolute difference and ends with `overall okay: 1` (exit 0) or `overall okay: 0` (exit 1).
The check loop, check_against_state, takes any training model: `llmpy test-llama` runs it too.
"""

import numpy as np

from llmpy.errors import LlmpyError
from llmpy.formats.llmc import load_checkpoint, load_debug_state
from llmpy.gpt2.model import GPT2, param_shapes
from llmpy.optim import AdamW

# llm.c's CPU test tolerances
LOGITS_TOL = 1e-2
LOSS_TOL = 1e-2
GRAD_TOL = 2e-2
STEPS = 10
# the update llm.c's test runs: gpt2_update(model, 1e-4, 0.9, 0.999, 1e-8, 0.01, step + 1)
LR, BETA1, BETA2, EPS, WEIGHT_DECAY = 1e-4, 0.9, 0.999, 1e-8, 0.01


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="llm.c checkpoint (e.g. gpt2_124M.bin)")
    parser.add_argument("--state", required=True, help="llm.c debug state (e.g. gpt2_124M_debug_state.bin)")
    parser.add_argument("--expected-losses", metavar="FILE",
                        help="text file with the expected loss of each of the 10 steps, one per line")
    parser.add_argument("--plain", action="store_true",
                        help="run the plain layers instead of the fused CPU kernels")


def read_expected_losses(path):
    try:
        with open(path) as f:
            values = [float(line) for line in f if line.strip()]
    except OSError as e:
        raise LlmpyError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise LlmpyError(f"{path}: expected one float per line ({e})") from None
    if len(values) != STEPS:
        raise LlmpyError(f"{path}: expected {STEPS} losses, one per line, found {len(values)}")
    return values


def max_abs_diff(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def report(name, diff, tol):
    ok = diff <= tol  # NaN compares False: a NaN anywhere fails
    print(f"{name:<10} max abs diff {diff:.6e} (tol {tol:.3g}) {'OK' if ok else 'NOT OK'}")
    return ok


def check_against_state(model, opt, state, shapes, steps, logits_tol, loss_tol, grad_atol, grad_rtol=0.0,
                        reference_losses=None):
    """llm.c's test_gpt2 loop for any model family; returns (okay, the loss before each step).

    `model` is a training model (forward(x, y) -> loss, logits(), zero_grad(), backward(), params, grads) built
    on the state's batch, `opt` the optimizer of its `steps` updates, `shapes` its parameter table in the flat
    order of state.grads. Step 0 checks the logits and the loss against the state's, and each parameter's
    gradient to grad_atol + grad_rtol * max|reference gradient of the tensor|; every step prints its loss, and
    checks it to loss_tol against reference_losses[step] where one is given.
    """
    okay, losses = True, []
    for step in range(steps):
        loss = model.forward(state.x, state.y)
        if step == 0:
            okay &= report("logits", max_abs_diff(model.logits(), state.logits), logits_tol)
            okay &= report("loss", abs(loss - state.loss), loss_tol)
        model.zero_grad()
        model.backward()
        if step == 0:
            offset = 0
            for name, shape in shapes.items():
                n = int(np.prod(shape))
                want = state.grads[offset:offset + n]
                tol = grad_atol + grad_rtol * float(np.max(np.abs(want), initial=0.0))
                okay &= report("d" + name, max_abs_diff(model.grads[offset:offset + n], want), tol)
                offset += n
        if reference_losses is not None and step < len(reference_losses):
            want = float(reference_losses[step])
            ok = abs(loss - want) <= loss_tol
            print(f"step {step}: loss {loss:.6f} (reference {want:.6f}) {'OK' if ok else 'NOT OK'}")
            okay &= ok
        else:
            print(f"step {step}: loss {loss:.6f}")
        opt.step(model.params, model.grads)
        losses.append(loss)
    return okay, losses


def run(args):
    config, params = load_checkpoint(args.model)
    state = load_debug_state(args.state, config)
    expected_losses = read_expected_losses(args.expected_losses) if args.expected_losses else None
    B, T = state.x.shape
    print(f"[GPT-2] max_seq_len {config.max_seq_len} vocab_size {config.vocab_size} padded_vocab_size "
          f"{config.padded_vocab_size} num_layers {config.num_layers} num_heads {config.num_heads} "
          f"channels {config.channels}; batch B={B} T={T}")

    model = GPT2(config, params, B, T, fused=False if args.plain else None)
    opt = AdamW(params.size, lr=LR, beta1=BETA1, beta2=BETA2, eps=EPS, weight_decay=WEIGHT_DECAY)
    okay, losses = check_against_state(model, opt, state, param_shapes(config), STEPS, LOGITS_TOL, LOSS_TOL, GRAD_TOL)
    if expected_losses is not None:
        for step, (got, want) in enumerate(zip(losses, expected_losses)):
            if not abs(got - want) <= LOSS_TOL:
                print(f"step {step}: loss {got:.6f} != expected {want:.6f} (tol {LOSS_TOL:g}) NOT OK")
                okay = False
    print(f"overall okay: {int(okay)}")
    return 0 if okay else 1
