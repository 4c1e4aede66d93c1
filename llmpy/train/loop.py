"""The training loop of llm.c's train_gpt2.cu, over a model family (llmpy.train.family: GPT-2 or Llama),
AdamW, the DataLoader and MPI. The loop never asks which architecture it trains: the family builds the
model, saves and loads its checkpoints, samples, and says its decay ranges and FLOPs per token.

    trainer = Trainer(TrainConfig(...))   # every check happens here, before any work
    summary = trainer.run()

One iteration of `run` at step s (0-based), as llm.c:
    val loss (s % -v == 0, the first step of a run and the last), HellaSwag (-h, same steps),
    a sample (s % -s == 0 and at the end), a checkpoint (s % -n == 0 and at the end), then training step s:
    the thread count (llmpy.threads.ThreadGovernor), grad_accum micro-batches forward + backward (loss scaled
    by 1/grad_accum), gradients averaged over ranks, global grad norm, the UpdateGuard's verdict (skip the
    update when the loss or norm is not finite, or a z-score is over -sl/-sg), clip, AdamW.
The train loss and lr of step s are logged as `s:s trl:...`. Ctrl-C finishes the step, checkpoints, stops
(summary["interrupted"]). After -sk updates skipped in a row the run has diverged: it raises TrainingDiverged
without writing a checkpoint, and no checkpoint of non-finite parameters is ever written.

The output directory belongs to one run at a time (checkpoint.RunLock, taken by rank 0 before it looks at
the directory, released when run() ends or setup fails).

Exact resume: the checkpoint holds the params (fp32), the optimizer (m, v, t), the data position, the
outlier windows and the sampler's RNG, so a resumed run computes the same floats as one never stopped.
"""

import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from llmpy import dist as distmod
from llmpy.data.dataloader import DataLoader
from llmpy.data.vocab import check_data_fits, text_decoder
from llmpy.dist import CollectiveError, RankExit
from llmpy.errors import LlmpyError
from llmpy.formats.tokens import read_shard
from llmpy.gpt2.model import GPT2_VOCAB_SIZE
from llmpy.optim import clip_scale, global_norm
from llmpy.threads import ThreadGovernor, allowed_cpus, user_threads
from llmpy.train import checkpoint as ckpt
from llmpy.train.config import TrainConfig
from llmpy.train.family import data_vocab_size, init_family, load_family
from llmpy.train.log import Console, Logger
from llmpy.train.outlier import UpdateGuard
from llmpy.train.peak import SgemmPeak
from llmpy.train.schedule import check_schedule, learning_rate

SAMPLER_SEED = 1337            # llm.c's sampling RNG seed
VOCAB_CHECK_TOKENS = 1 << 20   # tokens per shard scanned for ids beyond the model's vocab before training
SHUFFLES = {"seeded": True, "llmc": "llmc", "none": False}   # --shuffle -> DataLoader(shuffle=...)
EXIT_DIVERGED = 3              # `llmpy train`'s exit status for a diverged run (2: bad input, 130: interrupted)


class TrainingDiverged(CollectiveError):
    """Every rank sees the same averaged loss and norm, so all stop together: rank 0 raises this with the
    message, the others exit quietly (RankExit)."""


def check_data_vocab(files, V):
    """Fail before training when a shard holds token ids >= the model's vocab (another tokenizer's data; what
    prepro recorded about the data is checked by llmpy.data.vocab.check_data_fits)."""
    for f in files:
        tokens = read_shard(f)
        n = min(len(tokens), VOCAB_CHECK_TOKENS)
        top = int(tokens[:n].max()) if n else 0
        if top >= V:
            raise LlmpyError(f"{f} holds token id {top} but the model's vocabulary has {V} tokens: the data was "
                             f"tokenized for another model. Tokenize it with the model's tokenizer, or train a model "
                             f"with that vocabulary (--vocab-size)")


def accumulate_gradients(model, loader, grad_accum, batches=None):
    """grad_accum micro-batches of forward + backward into model.grads (each scaled 1/grad_accum); returns
    the mean loss. `batches` (a list) replays fixed batches instead of reading the loader (-a)."""
    total = 0.0
    for micro in range(grad_accum):
        x, y = batches[micro] if batches is not None else loader.next_batch()
        total += model.forward(x, y)
        model.backward(loss_scale=1.0 / grad_accum)
    return total / grad_accum


class Trainer:
    def __init__(self, config: TrainConfig, dist=None, stream=None):
        self.cfg = config
        self.dist = dist or distmod.init_dist()
        self.stream = stream or sys.stdout
        self.master = self.dist.is_master
        self.stop_requested = False
        self.lock, self.console = None, None
        self.setup()

    def say(self, text):
        if self.master:
            print(text, file=self.stream, flush=True)

    # -- setup: every check before any work ---------------------------------------------------------
    def setup(self):
        cfg, dist = self.cfg, self.dist
        cfg.check(dist.world_size)
        dist.check_same(json.dumps(asdict(cfg), sort_keys=True, default=str), "the training configuration")
        self.out_dir = Path(cfg.output_dir or dist.bcast(time.strftime("runs/%Y%m%d-%H%M%S")))
        created = self._lock_output_dir()
        try:
            self._setup()
        except BaseException:
            self.release()
            if created:   # leave no trace of a run that never started
                with contextlib.suppress(OSError):
                    self.out_dir.rmdir()
            raise
        # every check passed: this run starts, so the temporary files a killed one left can go
        removed = ckpt.remove_temp_files(self.out_dir, dist.rank)
        if removed:
            self.say(f"removed {len(removed)} temporary file(s) a stopped run left in {self.out_dir}: "
                     f"{', '.join(removed[:3])}{' ...' if len(removed) > 3 else ''}")

    def _lock_output_dir(self):
        """Rank 0 creates the output directory and takes its lock; every rank stops when it cannot. Returns
        whether this call created the directory."""
        error, created = None, False
        if self.master:
            try:
                created = not self.out_dir.is_dir()
                self.out_dir.mkdir(parents=True, exist_ok=True)
                self.lock = ckpt.RunLock(self.out_dir).acquire()
            except OSError as e:
                error = f"cannot create the output directory {self.out_dir}: {e.strerror or e}; choose another -o"
            except LlmpyError as e:
                error = str(e)
        self.dist.check_all(error)
        if self.lock is not None and self.lock.unsupported:
            self.say(f"note: {self.out_dir}'s file system refuses locks ({self.lock.unsupported}): nothing stops "
                     f"a second run from writing there")
        return created

    def release(self):
        """Let another run use the output directory (run() does this when it ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _choose_start(self):
        """Rank 0: the step to resume from (None: a new run), or an LlmpyError saying why this directory
        cannot be used. -y 1 resumes the newest complete checkpoint and starts a run where there is none."""
        cfg, out = self.cfg, self.out_dir
        latest = ckpt.latest_complete(out)
        leftovers = ckpt.existing_run_files(out) + [n for n in ("main.log",) if (out / n).exists()]
        if cfg.resume and latest is not None:
            info = ckpt.read_done(out, latest)
            if info["world_size"] != self.dist.world_size:
                raise LlmpyError(f"{out} was written by {info['world_size']} processes; resume with "
                                 f"mpirun -np {info['world_size']}")
            return latest
        if cfg.resume:  # llm.c's recipes pass -y 1 from the first launch on
            what = f"no complete checkpoint in {out} ({', '.join(leftovers[:3])})" if leftovers else \
                f"nothing to resume in {out} yet"
            self.say(f"-y 1: {what}, starting a new run")
        elif leftovers and not cfg.overwrite:
            if latest is not None:
                raise LlmpyError(f"{out} already holds a run's checkpoints (the newest at step {latest}): resume it "
                                 f"with -y 1, choose another -o, or pass --overwrite to delete them")
            raise LlmpyError(f"{out} holds an earlier run's files ({', '.join(leftovers[:3])}) but no complete "
                             f"checkpoint: pass -y 1 to start the run there, choose another -o, or pass --overwrite "
                             f"to delete them")
        return None

    def _setup(self):
        cfg, dist = self.cfg, self.dist
        error, start = None, None
        if self.master:
            try:
                start = self._choose_start()
            except LlmpyError as e:
                error = str(e)
        dist.check_all(error)
        self.resume_step = dist.bcast(start)
        if self.resume_step is not None:   # every rank needs its own state file of that step
            path = ckpt.state_path(self.out_dir, self.resume_step, dist.rank)
            missing = ckpt.damaged(path, self.out_dir, self.resume_step, "the file is missing")
            dist.check_all(None if path.exists() else missing)
        # data
        train_pattern, val_pattern = cfg.train_data, cfg.val_data
        if not train_pattern:
            from llmpy.data.prepro import prepare_default
            if self.master:
                train_pattern, val_pattern = prepare_default(verbose=True)
            dist.barrier()
            if not self.master:
                train_pattern, val_pattern = prepare_default(verbose=False)
            val_pattern = cfg.val_data or val_pattern
        self.train_pattern, self.val_pattern = train_pattern, val_pattern
        # model: the family (GPT-2 or Llama) from -e, or from the checkpoint resumed
        rng = np.random.default_rng(cfg.seed)
        data_vocab = data_vocab_size(train_pattern)
        if self.resume_step is not None:
            self.family, params = load_family(ckpt.model_path(self.out_dir, self.resume_step))
            self.model_desc = f"resumed from {ckpt.model_path(self.out_dir, self.resume_step)}"
        else:
            self.family, params, self.model_desc = init_family(cfg, data_vocab, rng)
        family = self.family
        self.model_config = family.config
        family.check_save_dtype(cfg.save_dtype)
        if cfg.seq_len > family.max_seq_len:
            raise LlmpyError(f"sequence length -t {cfg.seq_len} exceeds the model's max_seq_len {family.max_seq_len}"
                             f": pass -t {family.max_seq_len} or less")
        B, T, W, V = cfg.batch_size, cfg.seq_len, dist.world_size, family.vocab_size
        self.train_loader = DataLoader(train_pattern, B, T, dist.rank, W, shuffle=SHUFFLES[cfg.shuffle],
                                       seed=cfg.seed, vocab_size=V)
        self.val_loader = None
        if val_pattern and cfg.val_every >= 0 and cfg.val_max_steps > 0:
            self.val_loader = DataLoader(val_pattern, B, T, dist.rank, W, shuffle=False, vocab_size=V)
        files = self.train_loader.files + (self.val_loader.files if self.val_loader else [])
        check_data_fits(train_pattern, family.key, V)   # e.g. GPT-2 tokens for a Llama, or a larger vocabulary
        check_data_vocab(files, V)
        self.tokens_per_step = B * T * W if cfg.total_batch_size == -1 else cfg.total_batch_size
        self.grad_accum = self.tokens_per_step // (B * T * W)
        self.max_steps = cfg.max_steps
        if self.max_steps == -1:
            self.max_steps = max(1, self.train_loader.num_tokens // self.tokens_per_step)
        check_schedule(cfg.lr_schedule, cfg.lr, cfg.warmup_steps, self.max_steps, cfg.final_lr_frac)
        if self.resume_step is not None and self.resume_step > self.max_steps:
            raise LlmpyError(f"the checkpoint is at step {self.resume_step}, beyond -x {self.max_steps}; raise -x")
        self.hellaswag_path = None
        if cfg.hellaswag:
            self.hellaswag_path = self._find_hellaswag()
        # model, optimizer, update guard, sampler, threads
        self.model = family.build(params, B, T)
        self.model.zero_grad()
        self.opt = distmod.make_optimizer(dist, cfg.zero_stage, family.num_parameters, lr=cfg.lr, beta1=cfg.beta1,
                                          beta2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                          decay_ranges=family.decay_ranges())
        self.guard = UpdateGuard(cfg.skip_update_lossz, cfg.skip_update_gradz, cfg.max_skipped_updates, V)
        self.warned_exploding = False
        self.sampler_state = SAMPLER_SEED
        self.step = 0
        self.overfit_batches = None
        if self.resume_step is not None:
            error = None
            try:
                self._load_state()
            except LlmpyError as e:
                error = str(e)
            dist.check_all(error)   # a damaged file on one rank stops every rank, with one message
        self.governor = make_governor(cfg.threads, dist)
        self.peak = SgemmPeak()
        self.flops_per_step = family.flops_per_token(T) * B * T * self.grad_accum  # this rank's share

    def _find_hellaswag(self):
        from llmpy.data.prepro import default_data_dir
        if self.family.vocab_size != GPT2_VOCAB_SIZE:
            raise LlmpyError(f"HellaSwag's eval file holds GPT-2 tokens; -h 1 needs a model with GPT-2's vocabulary "
                             f"(this {self.family.name} model has {self.family.vocab_size} tokens): drop -h 1")
        path = Path(self.cfg.hellaswag_path or default_data_dir("hellaswag") / "hellaswag_val.bin")
        if not path.is_file():
            self.say(f"HellaSwag: {path} not found, skipping the eval (make it with `llmpy prepro hellaswag`)")
            return None
        return path

    # -- checkpoints --------------------------------------------------------------------------------
    def _state_meta(self):
        return {"step": self.step, "loader": self.train_loader.state_dict(), **self.guard.state_dict(),
                "sampler_state": str(self.sampler_state), "tokens_per_step": self.tokens_per_step,
                "grad_accum": self.grad_accum, "overfit": self.overfit_batches is not None}

    def save(self):
        dist, out, step = self.dist, self.out_dir, self.step
        if not math.isfinite(global_norm(self.model.params)):   # the same params on every rank
            self._stop_diverged("the parameters are not finite")
        with dist.abort_on_error():
            if self.master:
                ckpt.save_model(out, step, lambda path: self.family.save(path, self.model.params, self.cfg.save_dtype))
            dist.barrier()
            arrays = {f"opt.{k}": v for k, v in self.opt.state_dict().items()}
            if self.overfit_batches is not None:
                for i, (x, y) in enumerate(self.overfit_batches):
                    arrays[f"overfit.x{i}"], arrays[f"overfit.y{i}"] = x, y
            ckpt.save_state(out, step, dist.rank, arrays, self._state_meta())
            dist.barrier()
            if self.master:
                info = ckpt.done_info(step, dist.world_size, self.guard.last_loss, self.guard.healthy())
                ckpt.mark_done(out, step, dict(info, time=time.time()))
                deleted = ckpt.prune(out, self.cfg.checkpoints_keep, self.cfg.major_checkpoint_every)
                self.console.print(f"saved checkpoint {ckpt.model_path(out, step)}"
                                   + (f" (deleted steps {deleted})" if deleted else ""))

    def _load_state(self):
        out, step, rank = self.out_dir, self.resume_step, self.dist.rank
        path = ckpt.state_path(out, step, rank)
        arrays, meta = ckpt.load_state(out, step, rank)
        if meta["tokens_per_step"] != self.tokens_per_step or meta["grad_accum"] != self.grad_accum:
            raise LlmpyError(f"the checkpoint was trained with {meta['tokens_per_step']} tokens per step "
                             f"({meta['grad_accum']} micro-batches); resume with the same -b, -t and -d")
        try:
            self.opt.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("opt.")}, source=str(path))
            if not 0 <= self.opt.t <= step:
                raise ValueError(f"the optimizer took {self.opt.t} steps by step {step}")
            self.train_loader.load_state_dict(meta["loader"])
            self.guard.load_state_dict(meta)
            self.sampler_state = ckpt.sampler_state(meta["sampler_state"])
            if meta["overfit"]:
                self.overfit_batches = ckpt.overfit_batches(arrays, self.grad_accum, self.cfg.batch_size,
                                                            self.cfg.seq_len, self.family.vocab_size)
        except LlmpyError as e:   # a mismatch the message explains (another -z, other data)
            raise (e if str(path) in str(e) else LlmpyError(f"resuming from {path}: {e}")) from e
        except (ValueError, TypeError, KeyError) as e:
            raise ckpt.damaged(path, out, step, f"{type(e).__name__}: {e}") from e
        self.step = step

    # -- evaluation ---------------------------------------------------------------------------------
    def val_loss(self):
        loader = self.val_loader
        loader.reset()
        steps = min(self.cfg.val_max_steps, loader.batches_per_epoch)
        total = 0.0
        for _ in range(steps):
            x, y = loader.next_batch()
            total += self.model.forward(x, y)
        return self.dist.allreduce_scalar(total / steps) / self.dist.world_size

    def hellaswag(self):
        from llmpy.data.hellaswag import evaluate

        def losses_fn(inputs, targets):
            self.model.forward(inputs, targets)
            return self.model.acts["losses"].copy()

        r = evaluate(str(self.hellaswag_path), self.cfg.batch_size, self.cfg.seq_len, losses_fn=losses_fn,
                     rank=self.dist.rank, world_size=self.dist.world_size)
        correct = self.dist.allreduce_scalar(r["num_correct_norm"])
        total = self.dist.allreduce_scalar(r["num_examples"])
        return correct / max(total, 1.0)

    def sample(self):
        """cfg.gen_tokens tokens after the start token (GPT-2's <|endoftext|>, as llm.c; Llama's BOS), drawn with
        llm.c's xorshift coins; returns the decoded text (rank 0)."""
        from llmpy.sampler import random_f32
        cfg, family = self.cfg, self.family
        n = min(cfg.gen_tokens, family.max_seq_len - 1)

        def coin():
            c, self.sampler_state = random_f32(self.sampler_state)
            return c
        tokens = family.sample(self.model.params, n, cfg.temperature, cfg.top_k, cfg.top_p, coin)
        return decode(tokens, family.vocab_size, self.train_pattern, self.train_loader.files[0])

    # -- the loop -----------------------------------------------------------------------------------
    def _on_sigint(self, signum, frame):
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True
        self.console.warn("interrupt: finishing this step, then writing a checkpoint (Ctrl-C again to abort)")

    def _log_disk_error(self, path, e):
        return ckpt.disk_error("the training log", path, e, ckpt.latest_complete(self.out_dir))

    def _stop_diverged(self, why, saved=False):
        """Stop every rank (they all see the same loss, norm and params); `saved`: this state's checkpoint was
        written (finite parameters, marked unhealthy), else none was."""
        if not self.master:
            raise RankExit(EXIT_DIVERGED)
        out = self.out_dir
        steps, good = ckpt.complete_steps(out), ckpt.newest_healthy(out)
        if good is None:
            where = "no complete checkpoint of this run is healthy"
        else:
            newer = [ckpt.done_path(out, s).name for s in steps if s > good]
            where = f"the newest healthy checkpoint is step {good} ({ckpt.model_path(out, good)}); " + \
                (f"delete {', '.join(newer)} and " if newer else "") + "resume it with -y 1 and a lower -l"
        written = "Its checkpoint is marked unhealthy" if saved else "No checkpoint of this state was written"
        raise TrainingDiverged(f"training diverged at step {self.step}: {why}. {written}; {where}")

    def run(self):
        """Train to the last step (or Ctrl-C); returns a summary. The output directory's lock is released at the end."""
        try:
            return self._run()
        finally:
            self.release()

    def _run(self):
        cfg, dist = self.cfg, self.dist
        family, first = self.family, self.step
        self.say(f"model: {self.model_desc}: {family.describe()}, {family.num_parameters:,} parameters")
        self.say(f"data: {self.train_loader.num_tokens:,} train tokens in {self.train_loader.num_shards} shard(s) "
                 f"({self.train_pattern}); val: {self.val_pattern or 'none'}")
        self.say(f"batch: B={cfg.batch_size} T={cfg.seq_len} x {self.grad_accum} micro-batches x {dist.world_size} "
                 f"process(es) = {self.tokens_per_step:,} tokens/step; {self.max_steps} steps, lr {cfg.lr} "
                 f"{cfg.lr_schedule} (warmup {cfg.warmup_steps}, final x{cfg.final_lr_frac}); output {self.out_dir}")
        self.say(f"sgemm peak measured: {self.peak.flops / 1e9:.1f} GFLOP/s")
        if self.master and not cfg.resume and cfg.overwrite:
            for name in ckpt.existing_run_files(self.out_dir):
                (self.out_dir / name).unlink()
        dist.barrier()
        self.logger = Logger(self.out_dir if self.master else None, self.resume_step, self._log_disk_error)
        # only a real terminal outside an MPI launcher gets a bar (see llmpy.train.log)
        under_mpi = dist.world_size > 1 or distmod.launched_by_mpi() is not None
        self.console = console = Console(cfg.progress, self.max_steps, first, quiet=not self.master,
                                         stream=self.stream, under_mpi=under_mpi)
        old_handler = None
        try:
            old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread
            pass
        summary = {"train_losses": {}, "step_ms": {}, "val_losses": {}, "val_seconds": {}, "hellaswag": {},
                   "sample": None, "interrupted": False}
        self.t_start = time.perf_counter()
        try:
            with dist.abort_on_error():
                self._loop(console, first, summary)
        finally:
            console.close()
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
        if self.master and cfg.plot:
            self._plot()
        summary["out_dir"] = str(self.out_dir)
        return summary

    def _loop(self, console, first, summary):
        cfg, dist, model = self.cfg, self.dist, self.model
        last_sample = None
        for step in range(first, self.max_steps + 1):
            self.step = step
            last = step == self.max_steps
            if self.val_loader is not None and (step == first or last or (cfg.val_every and step % cfg.val_every == 0)):
                vl = self.val_loss()
                summary["val_losses"][step] = vl
                summary["val_seconds"][step] = time.perf_counter() - self.t_start
                self.logger.log_val(step, vl)
                console.print(f"val loss {vl:.4f} (step {step})")
            if self.hellaswag_path is not None and (step == first or last or
                                                    (cfg.val_every and step % cfg.val_every == 0)):
                acc = self.hellaswag()
                summary["hellaswag"][step] = acc
                self.logger.log_eval(step, acc)
                console.print(f"HellaSwag: {acc:.4f} (acc_norm, step {step})")
            if cfg.gen_tokens and self.master and (last or (cfg.sample_every and step > first and
                                                            step % cfg.sample_every == 0)):
                last_sample = self.sample()
                console.print(f"generating:\n---\n{last_sample}\n---")
            if step > first and (last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                self.save()
            if last and step > first and not (self.guard.healthy()
                                              and math.isfinite(summary["val_losses"].get(step, 0))):
                # the run got to its end, but with a broken model: a script must not take it for a success
                self._stop_diverged(f"it ended with the train loss {self.guard.last_loss:.4g}", saved=True)
            if last:
                break
            loss, norm, lr, ms, skipped = self.train_step(step)
            summary["train_losses"][step] = loss
            summary["step_ms"][step] = ms
            self.logger.log_train(step, loss, lr, norm)
            tok_s = self.tokens_per_step / (ms / 1e3)
            mfu, peak_note = self.peak.fraction(self.flops_per_step / (ms / 1e3)) if self.master else (0.0, "")
            console.step(step, self.max_steps, loss, self.guard.zloss, norm, self.guard.zgrad, lr, ms, tok_s, mfu,
                         note=f" | skipped the update: {skipped}" if skipped else "")
            if peak_note:
                console.print(peak_note)
            self._warn_exploding(step, loss)
            if self.guard.diverged:
                self.step = step + 1
                self._stop_diverged(f"{self.guard.skipped_in_row} updates in a row were skipped (-sk "
                                    f"{cfg.max_skipped_updates}), the last because {skipped}")
            stop = dist.allreduce_scalar(float(self.stop_requested), "max") > 0
            if stop and step + 1 < self.max_steps:
                self.step = step + 1
                self.save()
                summary["interrupted"] = True
                console.print(f"stopped after step {step + 1}; continue with -y 1 -o {self.out_dir}")
                break
        summary["sample"] = last_sample
        summary["final_step"] = self.step
        summary["params"] = model.params

    def _warn_exploding(self, step, loss):
        """One warning each time the loss climbs far above uniform guessing (a finite loss is still applied)."""
        exploding = self.guard.exploding(loss)
        if exploding and not self.warned_exploding:
            self.console.warn(f"warning: step {step + 1}: the loss {loss:.4g} is over {self.guard.exploding_above:.2f},"
                              f" twice that of guessing uniformly among {self.family.vocab_size} tokens: the run "
                              f"is diverging (lower -l {self.cfg.lr}); checkpoints from here are marked unhealthy")
        self.warned_exploding = exploding

    def train_step(self, step):
        cfg, model, opt = self.cfg, self.model, self.opt
        t0 = time.perf_counter()
        self.governor.apply()   # the threads the other processes leave free (results do not depend on it)
        if cfg.overfit_single_batch and self.overfit_batches is None:
            self.overfit_batches = [self.train_loader.next_batch() for _ in range(self.grad_accum)]
            self.overfit_batches = [(x.copy(), y.copy()) for x, y in self.overfit_batches]
        loss = accumulate_gradients(model, self.train_loader, self.grad_accum, self.overfit_batches)
        loss = self.dist.allreduce_scalar(loss) / self.dist.world_size
        opt.reduce_gradients(model.grads)
        norm = opt.global_grad_norm(model.grads)
        lr = learning_rate(cfg.lr_schedule, step, cfg.lr, cfg.warmup_steps, self.max_steps, cfg.final_lr_frac)
        skipped = self.guard.check(loss, norm)   # the same verdict on every rank: loss and norm are averaged
        if skipped:
            model.zero_grad()
        else:
            opt.step(model.params, model.grads, lr=lr, grad_scale=clip_scale(norm, cfg.grad_clip), zero_grads=True)
        return loss, norm, lr, (time.perf_counter() - t0) * 1e3, skipped

    def _plot(self):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            self.say(f"loss plot skipped: matplotlib is not installed (pip install 'llmpy[plot]', then "
                     f"`llmpy plot {self.out_dir}`)")
            return
        from llmpy.cli.plot import plot_runs
        path = plot_runs([self.out_dir], self.out_dir / "loss.png")
        self.say(f"loss plot: {path}")


def make_governor(threads, dist):
    """The ThreadGovernor of the training steps: --threads N or the environment (NUMBA_NUM_THREADS,
    OMP_NUM_THREADS) fix the count; under MPI each rank keeps what llmpy.dist.configure_threads chose (and
    the BLAS threads a user exported); else the threads the other processes leave free (llmpy/threads.py)."""
    import numba
    fixed = threads or user_threads() or (numba.get_num_threads() if dist.world_size > 1 else None)
    return ThreadGovernor(min(len(allowed_cpus()), numba.config.NUMBA_NUM_THREADS), fixed=fixed)


def decode(tokens, vocab_size, pattern, data_file):
    """Text for token ids: the tokenizer prepro recorded beside the data (llmpy.data.vocab.text_decoder), else
    GPT-2's tokenizer for GPT-2's vocab, a sentencepiece tok{V}.model beside the data, else the ids themselves."""
    tokens = [int(t) for t in tokens]
    try:
        decoder = text_decoder(pattern)
    except LlmpyError:   # its tokenizer file is gone: the fallbacks below
        decoder = None
    if decoder is not None:
        return decoder(tokens)
    if vocab_size == GPT2_VOCAB_SIZE:
        from llmpy.tokenizers.gpt2 import get_gpt2_tokenizer
        return get_gpt2_tokenizer().decode(tokens)
    sp = Path(data_file).parent / f"tok{vocab_size}.model"
    if sp.is_file():
        from llmpy.tokenizers.bpe_train import SentencePieceTokenizer
        return SentencePieceTokenizer(str(sp)).decode(tokens)
    return " ".join(map(str, tokens))
