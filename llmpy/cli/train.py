"""`llmpy train`: train a GPT-2 or a Llama, llm.c's train_gpt2.cu as a command (flags keep llm.c's short names).

    llmpy train                                  # offline default: a small GPT-2 on the stdlib-docs corpus
    llmpy train -e gpt2 -i DATA/tiny_shakespeare_train.bin -j DATA/tiny_shakespeare_val.bin \\
        -b 4 -t 64 -l 1e-4 -x 40 -o runs/quickstart          # llm.c's quick start (fine-tune GPT-2 124M)
    mpirun -np 8 llmpy train -e d12 -i 'fineweb10B/fineweb_train_*.bin' -j 'fineweb10B/fineweb_val_*.bin' \\
        -o log124M -b 64 -t 1024 -d 524288 -z 1 -c 0.1 -l 0.0006 -q 0.0 -u 700 -n 5000 -nk 2 -y 1 \\
        -v 250 -s 20000 -h 1                                    # llm.c's GPT-2 124M reproduction
    llmpy train -e llama:d64l2h4kv2 -i DATA/text_train.bin -j DATA/text_val.bin -t 128 -o runs/llama
                                                 # a Llama from scratch (vocab: the data's tokenizer)
    llmpy train -e stories15M.bin -i 'DATA/*_train*.bin' -t 256 -l 1e-4    # fine-tune a llama2.c model (on
                                                 # data tokenized with its 32000-token vocabulary)

-e chooses the architecture: GPT-2 (an llm.c checkpoint, d6..d48, gpt2[-medium|-large|-xl], or none: a
small one from --layers/--channels/--heads) or Llama (a llama2.c v0/v1 file, llama2.c's stories15M,
stories42M, stories110M shapes, or llama:d<dim>l<layers>h<heads>[kv<kv_heads>]). A Llama run's checkpoints
are llama2.c v0 files that `llmpy run` and `llmpy export` take as they are.

`-h N` is llm.c's HellaSwag switch; use --help for this text. Flags left out take llm.c's defaults when -i
is given; the offline default run (no -i) uses B=8 T=128 -x 200 -l 3e-3 -u 20 -q 0.1 -c 0.1 -v 50 -m 10.

A run owns its -o directory (a second run there is refused while the first lives). -y 1 continues from the
newest complete checkpoint, or starts the run when there is none. An update whose loss or grad norm is NaN
or inf is skipped; after -sk (10) skipped in a row the run stops as diverged. Under mpirun, --progress auto
prints step lines (rank 0 cannot tell a terminal from `> log` there). --threads 0 (the default) runs each
step on the cores other processes leave free (NUMBA_NUM_THREADS or OMP_NUM_THREADS fix them).
Exit status: 0 done, 2 bad input or a failed write (a message says what to do), 3 diverged, 130 interrupted
(Ctrl-C; a checkpoint was written).
"""

import argparse
import sys

from llmpy.train.config import OFFLINE_DEFAULTS, TrainConfig
from llmpy.train.schedule import SCHEDULES

BOOL = (0, 1)
EXIT_INTERRUPTED = 130   # as a shell reports a process ended by Ctrl-C (128 + SIGINT)


def add_arguments(parser):
    parser.conflict_handler = "resolve"  # -h is llm.c's HellaSwag flag; --help stays help
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    d = TrainConfig()
    a = parser.add_argument
    g = parser.add_argument_group("data and model")
    g.add_argument("-i", "--train-data", default=d.train_data, metavar="GLOB",
                   help="train token shards (llmpy prepro ...); default: the offline default corpus")
    g.add_argument("-j", "--val-data", default=d.val_data, metavar="GLOB", help="val token shards")
    g.add_argument("-e", "--init", default=d.init, metavar="MODEL",
                   help="GPT-2: an llm.c checkpoint file, a depth d6|d12|d24|d36|d48 (from scratch), or OpenAI's "
                        "gpt2|gpt2-medium|gpt2-large|gpt2-xl (downloaded); Llama: a llama2.c v0/v1 file, "
                        "stories15M|stories42M|stories110M or llama:d<dim>l<layers>h<heads>[kv<kv_heads>] (from "
                        "scratch, the data's vocabulary); default: a small GPT-2 from the flags below")
    g.add_argument("--layers", dest="num_layers", type=int, default=d.num_layers, help="L of a from-scratch model")
    g.add_argument("--channels", type=int, default=d.channels, help="C of a from-scratch model")
    g.add_argument("--heads", dest="num_heads", type=int, default=d.num_heads, help="NH of a from-scratch model")
    g.add_argument("--max-seq-len", type=int, default=d.max_seq_len,
                   help="maxT of a from-scratch model (GPT-2, llama:...)")
    g.add_argument("--vocab-size", type=int, default=d.vocab_size,
                   help="V of a from-scratch GPT-2 (GPT-2's 50257); of a Llama when the data's tokenizer is unknown")
    g.add_argument("--seed", type=int, default=d.seed, help="init and data-order seed")
    g.add_argument("--shuffle", choices=("seeded", "llmc", "none"), default=d.shuffle,
                   help="train data order: seeded (by --seed), llmc (llm.c's mt19937 order, seed 42 + rank), none")
    g = parser.add_argument_group("batch and steps")
    g.add_argument("-b", "--batch-size", type=int, default=None, help="micro-batch size B")
    g.add_argument("-t", "--seq-len", type=int, default=None, help="sequence length T")
    g.add_argument("-d", "--total-batch-size", type=int, default=d.total_batch_size,
                   help="tokens per optimizer step (gradient accumulation reaches it); -1: B*T*processes")
    g.add_argument("-x", "--max-steps", type=int, default=None, help="optimizer steps; -1: one epoch")
    g.add_argument("-r", "--recompute", type=int, default=None, metavar="N",
                   help="accepted for llm.c's command lines; no effect (activations are kept in fp32 on the CPU)")
    g.add_argument("-a", "--overfit-single-batch", type=int, choices=BOOL, default=0, help="1: train on one batch")
    g = parser.add_argument_group("optimizer")
    g.add_argument("-l", "--lr", type=float, default=None, help="peak learning rate")
    g.add_argument("-k", "--lr-schedule", choices=SCHEDULES, default=d.lr_schedule, help="learning-rate schedule")
    g.add_argument("-u", "--warmup-steps", type=int, default=None, help="linear warmup steps")
    g.add_argument("-q", "--final-lr-frac", type=float, default=None, help="final lr as a fraction of -l")
    g.add_argument("-c", "--weight-decay", type=float, default=None, help="AdamW decay of 2-D weights")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="clip the global grad norm (0: off)")
    g.add_argument("--beta1", type=float, default=d.beta1)
    g.add_argument("--beta2", type=float, default=d.beta2)
    g.add_argument("--eps", type=float, default=d.eps)
    g.add_argument("-z", "--zero-stage", type=int, choices=BOOL, default=d.zero_stage,
                   help="1: shard the optimizer state over MPI ranks (ZeRO-1)")
    g.add_argument("-sl", "--skip-update-lossz", type=float, default=d.skip_update_lossz,
                   help="skip updates whose loss z-score exceeds this (0: off)")
    g.add_argument("-sg", "--skip-update-gradz", type=float, default=d.skip_update_gradz,
                   help="skip updates whose grad-norm z-score exceeds this (0: off)")
    g.add_argument("-sk", "--max-skipped-updates", type=int, default=d.max_skipped_updates,
                   help="stop the run as diverged after this many updates skipped in a row (0: never); an update is "
                        "always skipped when the loss or grad norm is NaN or inf")
    g = parser.add_argument_group("evaluation and sampling")
    g.add_argument("-v", "--val-every", type=int, default=None, help="val loss every N steps")
    g.add_argument("-m", "--val-steps", dest="val_max_steps", type=int, default=None,
                   help="batches per val loss")
    g.add_argument("-s", "--sample-every", type=int, default=None, help="sample every N steps (0: at the end)")
    g.add_argument("-g", "--gen-tokens", "--max-tokens", type=int, default=d.gen_tokens,
                   help="tokens per sample (0: none)")
    g.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature (0: greedy)")
    g.add_argument("--top-k", type=int, default=d.top_k, help="sample among the k most likely tokens (0: all)")
    g.add_argument("--top-p", type=float, default=d.top_p,
                   help="sample among the most likely tokens whose probabilities add up to p (1: all; --top-k wins)")
    g.add_argument("-h", "--hellaswag", type=int, choices=BOOL, nargs="?", default=0, const=None,
                   help="1: HellaSwag accuracy with the val loss (needs `llmpy prepro hellaswag`)")
    g.add_argument("--hellaswag-file", dest="hellaswag_path", default=d.hellaswag_path, metavar="PATH")
    g = parser.add_argument_group("output and checkpoints")
    g.add_argument("-o", "--output-dir", "--output", default=d.output_dir, metavar="DIR",
                   help="main.log, checkpoints, loss.png; default runs/<date-time>")
    g.add_argument("-n", "--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="checkpoint every N steps (0: only at the end)")
    g.add_argument("-nk", "--checkpoints-keep", type=int, default=d.checkpoints_keep,
                   help="keep the newest N checkpoints (0: all)")
    g.add_argument("-nm", "--major-checkpoint-every", type=int, default=d.major_checkpoint_every,
                   help="never delete checkpoints at multiples of N")
    g.add_argument("-y", "--resume", type=int, choices=BOOL, default=0,
                   help="1: continue from the newest complete checkpoint in -o, exactly")
    g.add_argument("--overwrite", action="store_true", help="start afresh in a -o that holds another run")
    g.add_argument("--save-dtype", choices=("float32", "bfloat16"), default=d.save_dtype)
    g.add_argument("--no-plot", dest="plot", action="store_false", help="do not draw loss.png at the end")
    g.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default=d.progress,
                   help="a progress bar or llm.c's step lines (auto: a bar on a terminal, lines under mpirun "
                        "or when redirected)")
    g.add_argument("--threads", type=int, default=d.threads, metavar="N",
                   help="threads per training step (0: the cores other processes leave free; under mpirun: "
                        "cores // ranks)")
    parser.set_defaults(_parser=parser)
    del a


def config_from_args(args):
    fields = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields and k != "extra"}
    llmc = TrainConfig()
    for k, offline in OFFLINE_DEFAULTS.items():  # flags left out: the offline run's or llm.c's defaults
        if values[k] is None:
            values[k] = getattr(llmc, k) if values["train_data"] else offline
    if args.warmup_steps is None and 0 < values["max_steps"] < values["warmup_steps"]:
        values["warmup_steps"] = values["max_steps"] // 10  # a short offline run: a warmup that fits it
    for k in ("overfit_single_batch", "resume", "hellaswag"):
        values[k] = bool(values[k])
    return TrainConfig(**values)


def run(args):
    if args.hellaswag is None:  # a bare -h: the user wants help, as everywhere else
        args._parser.print_help()
        return 0
    from llmpy.backend import limit_openmp_spinning
    from llmpy.dist import init_dist
    from llmpy.train.loop import EXIT_DIVERGED, Trainer, TrainingDiverged

    limit_openmp_spinning()
    config = config_from_args(args)
    dist = init_dist(threads=config.threads or None)
    # an error on one rank alone (a bad state file, say) must end every rank, not leave the others
    # waiting in a collective: abort_on_error stops the whole job (single process: re-raises)
    try:
        with dist.abort_on_error():
            trainer = Trainer(config, dist)
            summary = trainer.run()
    except TrainingDiverged as e:   # rank 0; the other ranks exit with the same status
        print(f"llmpy train: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    if trainer.master:
        print(closing_line(summary))
    return EXIT_INTERRUPTED if summary["interrupted"] else 0


def closing_line(summary):
    """The last line of a run: the step it reached, its newest val loss (and that loss's step), where it wrote."""
    step, vals, out = summary["final_step"], summary["val_losses"], summary["out_dir"]
    val = f"val loss {vals[max(vals)]:.4f} (step {max(vals)})" if vals else ""
    if summary["interrupted"]:
        return (f"interrupted at step {step}; {'last ' + val if val else 'no val loss'}; main.log and checkpoints "
                f"in {out}; continue with -y 1")
    return f"{'final ' + val if val else f'done at step {step}'}; main.log, checkpoints and plot in {out}"
