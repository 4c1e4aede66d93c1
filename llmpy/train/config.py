"""TrainConfig: every setting of a training run, checked before any work starts.

The command line (llmpy/cli/train.py) fills it from flags named after llm.c's train_gpt2.cu; tests and
benchmarks build it directly. `check()` rejects impossible values with the reason (LlmpyError); the
checks that need files (data, checkpoints) run in loop.Trainer's setup, still before the first step.
"""

from dataclasses import dataclass, field

from llmpy.errors import LlmpyError
from llmpy.train.schedule import check_schedule

# a from-scratch model without -e: small enough to learn visibly in a few minutes on 2 cores
DEFAULT_LAYERS = 4
DEFAULT_CHANNELS = 128
DEFAULT_HEADS = 4
# The offline default run (`llmpy train` without -i) uses these where no flag is given; with -i the
# defaults are llm.c's (the dataclass defaults below), so llm.c's commands mean the same here.
OFFLINE_DEFAULTS = {"batch_size": 8, "seq_len": 128, "max_steps": 200, "lr": 3e-3, "warmup_steps": 20,
                    "final_lr_frac": 0.1, "weight_decay": 0.1, "sample_every": 0, "val_every": 50, "val_max_steps": 10}
GPT2_MAX_SEQ_LEN = 1024
HF_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
SHUFFLES = ("seeded", "llmc", "none")


@dataclass
class TrainConfig:
    # data
    train_data: str = ""            # -i: glob of llm.c token shards; "" = the offline default corpus
    val_data: str = ""              # -j: glob of val shards; "" = the default corpus's, or none with -i
    # model
    init: str = ""                  # -e: GPT-2: llm.c checkpoint, d6..d48, gpt2[-medium|-large|-xl], "" = tiny model;
    #                                 Llama: llama2.c v0/v1 file, stories15M|42M|110M, llama:d<dim>l<L>h<NH>[kv<NKV>]
    num_layers: int = DEFAULT_LAYERS
    channels: int = DEFAULT_CHANNELS
    num_heads: int = DEFAULT_HEADS
    max_seq_len: int = GPT2_MAX_SEQ_LEN
    vocab_size: int = 50257         # V of a from-scratch model (GPT-2's); Vp rounds it up to a multiple of 128
    seed: int = 1337                # init and data-shuffling seed
    shuffle: str = "seeded"         # train data order: seeded (by --seed), llmc (llm.c's mt19937, 42 + rank), none
    # batch and steps
    batch_size: int = 4                 # -b: micro-batch B
    seq_len: int = 1024                 # -t: T
    total_batch_size: int = -1          # -d: tokens per optimizer step; -1 = B*T*world (no accumulation)
    max_steps: int = -1                 # -x: -1 = one epoch of the train data
    # optimizer
    lr: float = 3e-4                    # -l
    lr_schedule: str = "cosine"         # -k
    warmup_steps: int = 0               # -u
    final_lr_frac: float = 1.0          # -q
    weight_decay: float = 0.0           # -c, on the 2-D weights only
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    zero_stage: int = 0                 # -z: 0 or 1 (ZeRO-1 shards the optimizer state over ranks)
    skip_update_lossz: float = 0.0      # -sl: skip an update whose loss z-score exceeds this (0 = off)
    skip_update_gradz: float = 0.0      # -sg: the same for the grad norm
    max_skipped_updates: int = 10       # -sk: stop (diverged) after this many updates skipped in a row (0: never)
    overfit_single_batch: bool = False  # -a
    # evaluation and sampling
    val_every: int = 20                 # -v
    val_max_steps: int = 20             # -m
    sample_every: int = 20              # -s (0 = only at the end)
    gen_tokens: int = 64                # -g
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0                  # nucleus sampling (1 or 0: off)
    hellaswag: bool = False             # -h
    hellaswag_path: str = ""            # default: llmpy prepro hellaswag's output
    # output
    output_dir: str = ""                # -o; "" = runs/<date-time>
    checkpoint_every: int = 0           # -n (0 = only at the end)
    checkpoints_keep: int = 0           # -nk (0 = keep all)
    major_checkpoint_every: int = 0     # -nm: checkpoints at multiples of this are never deleted
    resume: bool = False                # -y
    overwrite: bool = False
    save_dtype: str = "float32"
    plot: bool = True
    progress: str = "auto"              # auto (bar on a terminal), bar, lines, none
    threads: int = 0                    # threads of a training step (0: the cores other processes leave free)
    extra: dict = field(default_factory=dict)

    def check(self, world_size=1):
        """Reject values no run can use, with the reason. File checks come later (loop.Trainer)."""
        positive = {"batch size (-b)": self.batch_size, "sequence length (-t)": self.seq_len,
                    "layers": self.num_layers, "channels": self.channels, "heads": self.num_heads,
                    "max_seq_len": self.max_seq_len, "vocab size": self.vocab_size}
        for what, value in positive.items():
            if value < 1:
                raise LlmpyError(f"{what} must be >= 1, got {value}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise LlmpyError(f"max steps (-x) must be >= 1, or -1 for one epoch; got {self.max_steps}")
        per_step = self.batch_size * self.seq_len * world_size
        if self.total_batch_size != -1 and (self.total_batch_size < 1 or self.total_batch_size % per_step):
            raise LlmpyError(f"total batch size (-d) {self.total_batch_size} tokens is not a positive multiple of "
                             f"B*T*processes = {self.batch_size}*{self.seq_len}*{world_size} = {per_step}; "
                             f"use e.g. -d {per_step * max(1, round(max(self.total_batch_size, 1) / per_step))}")
        check_schedule(self.lr_schedule, self.lr, self.warmup_steps,
                       self.max_steps if self.max_steps > 0 else self.warmup_steps, self.final_lr_frac)
        for what, value in (("weight decay (-c)", self.weight_decay), ("grad clip", self.grad_clip),
                            ("-sl", self.skip_update_lossz), ("-sg", self.skip_update_gradz),
                            ("temperature", self.temperature)):
            if value < 0:
                raise LlmpyError(f"{what} must be >= 0, got {value}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0 and self.eps > 0):
            raise LlmpyError(f"AdamW needs 0 <= beta1, beta2 < 1 and eps > 0; got {self.beta1}, {self.beta2}, "
                             f"{self.eps}")
        for what, value in (("-v", self.val_every), ("-m", self.val_max_steps), ("-s", self.sample_every),
                            ("-g", self.gen_tokens), ("-n", self.checkpoint_every), ("-nk", self.checkpoints_keep),
                            ("-nm", self.major_checkpoint_every), ("top-k", self.top_k),
                            ("-sk", self.max_skipped_updates)):
            if value < 0:
                raise LlmpyError(f"{what} must be >= 0, got {value}")
        if self.zero_stage not in (0, 1):
            raise LlmpyError(f"ZeRO stage (-z) must be 0 or 1, got {self.zero_stage}")
        if self.save_dtype not in ("float32", "bfloat16"):
            raise LlmpyError(f"checkpoint dtype must be float32 or bfloat16, got {self.save_dtype}")
        if self.resume and self.save_dtype != "float32":
            raise LlmpyError("exact resume needs float32 checkpoints; drop --save-dtype bfloat16 or -y 1")
        if self.shuffle not in SHUFFLES:
            raise LlmpyError(f"--shuffle must be one of {', '.join(SHUFFLES)}, got {self.shuffle}")
        if not 0.0 <= self.top_p <= 1.0:
            raise LlmpyError(f"--top-p must be in [0, 1] (0 or 1: off), got {self.top_p}")
        if self.threads < 0:
            raise LlmpyError(f"--threads must be >= 1, or 0 for automatic, got {self.threads}")
        if self.progress not in ("auto", "bar", "lines", "none"):
            raise LlmpyError(f"--progress must be auto, bar, lines or none, got {self.progress}")
        if self.resume and not self.output_dir:
            raise LlmpyError("resume (-y 1) needs the run's output directory: pass -o DIR")
        if self.hellaswag and self.batch_size % 4:
            raise LlmpyError(f"HellaSwag (-h 1) packs 4 rows per example: -b {self.batch_size} must be a multiple of 4")
        if (not self.init or self.init.startswith("d")) and self.channels % self.num_heads:
            raise LlmpyError(f"channels {self.channels} must be divisible by heads {self.num_heads}")
        if self.seq_len > self.max_seq_len and not self.init:
            raise LlmpyError(f"sequence length -t {self.seq_len} exceeds the model's max_seq_len {self.max_seq_len}")
        if self.init in HF_NAMES and self.seq_len > GPT2_MAX_SEQ_LEN:
            raise LlmpyError(f"sequence length -t {self.seq_len} exceeds {self.init}'s max_seq_len {GPT2_MAX_SEQ_LEN}")
