"""`llmpy test-llama`: the Llama counterpart of `llmpy test-gpt2` (llm.c's test_gpt2 protocol).

    llmpy test-llama --model tests/fixtures/llama/gqa6over2_v67_model.bin \\
                     --state tests/fixtures/llama/gqa6over2_v67_state.bin

Loads a llama2.c model file (v0 or v1: float32 weights) and the debug state a PyTorch reference wrote for it
(layout: llmpy/formats/llama_debug.py; tests/reference/make_llama_fixtures.py writes them), then checks against
the state: the logits and the loss of a forward pass, every parameter's gradient of a backward pass, and the
losses of the state's AdamW steps on the same batch (llmpy.optim.AdamW with the reference's hyperparameters).
Prints each comparison's max absolute difference and ends with `overall okay: 1` (exit 0) or `overall okay: 0`
(exit 1). A file that cannot be read, or a state written for another model, is an LlmpyError (exit 2).

Tolerances: the reference runs in float64 and the state is tiny, so a float32 engine matches it to ~1e-6;
the bounds below leave a wide margin over that and are still far below any real mistake. Gradients are held to
a bound relative to the tensor's largest reference gradient, so small-gradient tensors are checked as closely.
"""

from llmpy.cli.test_gpt2 import check_against_state
from llmpy.errors import LlmpyError
from llmpy.formats import llama_debug
from llmpy.formats.llama2c import read_llama2c
from llmpy.llama.train_model import Llama, matrix_param_ranges, num_parameters, param_shapes, params_from_weights
from llmpy.optim import AdamW

LOGITS_TOL = 1e-4
LOSS_TOL = 1e-4        # the first loss, and each of the AdamW steps' losses
GRAD_ATOL, GRAD_RTOL = 1e-7, 1e-4  # |diff| <= GRAD_ATOL + GRAD_RTOL * max|reference gradient of the tensor|


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="llama2.c model file, v0 or v1 (float32 weights)")
    parser.add_argument("--state", required=True,
                        help="the Llama debug state written for it (tests/reference/make_llama_fixtures.py)")
    parser.add_argument("--plain", action="store_true",
                        help="run the plain layers instead of the fused CPU kernels")


def load(model_path, state_path):
    """(config with the state's rope_theta and norm_eps, flat float32 params, LlamaDebugState)."""
    config, weights, version, _ = read_llama2c(model_path)
    if version == 2:
        raise LlmpyError(f"{model_path} is an int8 (v2) llama2.c file: the check needs float32 weights. "
                         "---> HINT: pass the v0 or v1 file it was exported from")
    n = num_parameters(config)
    state = llama_debug.load_llama_debug_state(state_path, config, n)
    config.rope_theta, config.norm_eps = state.rope_theta, state.norm_eps
    return config, params_from_weights(config, weights), state


def run(args):
    config, params, state = load(args.model, args.state)
    B, T = state.x.shape
    print(f"[Llama] dim {config.dim} hidden_dim {config.hidden_dim} n_layers {config.n_layers} n_heads "
          f"{config.n_heads} n_kv_heads {config.n_kv_heads} vocab_size {config.vocab_size} seq_len {config.seq_len} "
          f"shared_classifier {int(config.shared_classifier)}; batch B={B} T={T}")

    model = Llama(config, params, B, T, fused=False if args.plain else None)
    opt = AdamW(params.size, lr=llama_debug.TRAIN_LR, beta1=llama_debug.TRAIN_BETA1, beta2=llama_debug.TRAIN_BETA2,
                eps=llama_debug.TRAIN_EPS, weight_decay=llama_debug.TRAIN_WEIGHT_DECAY,
                decay_ranges=matrix_param_ranges(config))
    steps = max(1, state.losses.size)
    okay, _ = check_against_state(model, opt, state, param_shapes(config), steps, LOGITS_TOL, LOSS_TOL, GRAD_ATOL,
                                  GRAD_RTOL, reference_losses=state.losses)
    print(f"overall okay: {int(okay)}")
    return 0 if okay else 1
