"""Compiled element-wise regions: built in the background, cached on disk, switched to when ready.

The regions of :mod:`qwen3_retrieval.kernels.regions` are compiled by inductor ahead of time (AOTInductor: one
shared library per region, a dynamic token count, the weights passed in, so one library serves every layer).
A compile takes tens of seconds, so it never runs in a caller's call:

- :class:`RegionSwitch` starts with the eager regions. If the disk cache has this region set, it loads it with
  the model (about a second, mostly importing inductor's loader) and every call runs compiled from the first.
  Otherwise a background thread starts a compile process at the lowest CPU priority (the C++ compiler it starts
  inherits that), so the calls running meanwhile keep the cores; when the libraries are in the cache, the
  thread loads them and switches. A process rather than the thread itself: a compile cut short at the program's
  exit would abort the program, and the compiler's memory stays out of the program's peak. A compile still
  running when the program exits is stopped; the next process compiles again.
- The switch is one attribute assignment of a whole :class:`~qwen3_retrieval.kernels.regions.Regions` record, and a
  forward pass reads it once, so a call runs all eager or all compiled, never half of each.
- The cache is keyed by everything the generated code depends on: torch's version, the CPU instruction set
  inductor compiles for and the CPU itself (it builds with ``-march=native``, so a cache folder shared between
  machines never hands one CPU's code to another), the dtype, the sizes that are not dynamic, the norms'
  epsilon, torch's thread count (the generated loops use a fixed one), and the code of the regions and of
  their export.
- A compile works in a scratch folder of its own beside the cache (its half-written packages and inductor's
  build files, a few hundred MB that would otherwise stay in the temporary folder for good), and each finished
  package appears in the cache by atomic rename: processes racing on one key each write a whole file. The
  scratch folder goes when the compile ends, however it ends; one left by a compile killed with its program is
  removed by the next compile on this machine.
- A forked child runs eager: GNU OpenMP cannot start a parallel region again in a child of a process that used
  it (:mod:`qwen3_retrieval.kernels.forking`), and a compile that was under way in the parent has no thread there.

Where it is not used: without a C++ compiler (said once at debug level), on devices other than the CPU, or where
``compile="auto"`` found no measured gain (:func:`auto_enabled`).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import inspect
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from qwen3_retrieval.devices import cpu_fingerprint, cpu_has_amx
from qwen3_retrieval.kernels import regions as regions_module
from qwen3_retrieval.kernels.regions import Regions, eager_regions, pure_regions

logger = logging.getLogger(__name__)

CompileSetting = bool | str
"""``compile=``: True, False or ``"auto"`` (checked by the options)."""

CACHE_ENV = "QWEN3_RETRIEVAL_CACHE"
"""Environment variable naming the cache folder (default: ``$XDG_CACHE_HOME/qwen3-retrieval``, else
``~/.cache/qwen3-retrieval``)."""

_said_no_compiler = False


def cache_root() -> Path:
    """The folder compiled regions are kept in (see :data:`CACHE_ENV`)."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qwen3-retrieval"


def instruction_set() -> str:
    """The CPU instruction set the generated code targets: torch's (which ``ATEN_CPU_CAPABILITY`` lowers), and AMX."""
    capability = torch.backends.cpu.get_cpu_capability().lower()
    return f"{capability}-amx" if cpu_has_amx() and capability.startswith("avx512") else capability


def compiler_available() -> bool:
    """Whether inductor finds a C++ compiler (``$CXX``, else ``g++`` or ``clang++`` on the ``PATH``)."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++"]
    return any(shutil.which(name) for name in names)


def auto_enabled(dtype: torch.dtype) -> bool:
    """What ``compile="auto"`` means for a model of ``dtype`` on this CPU: on where it measured faster.

    bfloat16: where the CPU multiplies bfloat16 natively (AMX, or AVX-512 BF16 alone), which leaves the
    element-wise passes a large share of a round. float32: with AVX-512 kernels; with AVX2 ones compiled and eager
    measured the same, so the compile would cost its one-time time for nothing. The figures:
    docs/benchmarks.md, "Compiled regions".
    """
    if dtype == torch.bfloat16:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return dtype == torch.float32 and instruction_set().startswith("avx512")


def resolve(setting: CompileSetting, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a model of ``dtype`` on ``device`` runs compiled regions under ``setting``."""
    global _said_no_compiler
    if setting is False or device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return False
    if setting == "auto" and not auto_enabled(dtype):
        return False
    if not compiler_available():
        if not _said_no_compiler:
            _said_no_compiler = True
            logger.debug("qwen3_retrieval: no C++ compiler found ($CXX, g++, clang++): the model runs eager")
        return False
    return True


class RegionSwitch:
    """The regions a model's forward passes run: eager, until the compiled ones are ready.

    Args:
        dtype: the model's dtype.
        eps: its RMSNorms' epsilon.
        sizes: ``{"head_dim": ..., "hidden": ..., "intermediate": ...}``, the sizes the compiled code fixes.
        compiled: compile at all (the resolved ``compile=`` option).
    """

    def __init__(self, dtype: torch.dtype, eps: float, sizes: dict[str, int], *, compiled: bool) -> None:
        self.dtype, self.eps, self.sizes = dtype, eps, dict(sizes)
        self.current: Regions = eager_regions(dtype, eps)
        self.compiled = False  # True once ``current`` is the compiled set
        self.failure: BaseException | None = None  # why a compile failed (the model stays eager)
        self._thread: threading.Thread | None = None
        self.folder = cache_root() / "compiled" / self.key()
        _switches.add(self)
        if compiled:
            self._start()

    def key(self) -> str:
        """The cache folder's name for this region set on this machine (see the module's notes)."""
        functions = (regions_module.rms_norm, regions_module.rotary, pure_regions, _exports)
        code = "".join(inspect.getsource(f) for f in functions)
        parts = [
            torch.__version__,
            instruction_set(),
            str(self.dtype).removeprefix("torch."),
            *(f"{name}={size}" for name, size in sorted(self.sizes.items())),
            f"eps={self.eps!r}",
            f"threads={torch.get_num_threads()}",
            f"cpu={cpu_fingerprint()}",
            hashlib.sha256(code.encode()).hexdigest()[:12],
        ]
        digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
        return f"torch-{torch.__version__}-{parts[1]}-{parts[2]}-{digest}"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a background compile is done (for tests and benchmarks); return whether compiled."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.compiled

    def _start(self) -> None:
        # A cached set loads here, with the model: about a second (inductor's loader is imported), after which
        # every call, the first included, runs compiled.
        if all((self.folder / f"{name}.pt2").exists() for name in Regions._fields):
            try:
                self._switch(self._load())
                logger.debug("qwen3_retrieval: compiled regions loaded from %s", self.folder)
                return
            except Exception as err:  # a damaged or foreign file: compile it again
                logger.debug("qwen3_retrieval: cached compiled regions unusable (%s); compiling again", err)
                for name in Regions._fields:
                    (self.folder / f"{name}.pt2").unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._build, name="qwen3-retrieval-compile", daemon=True)
        self._thread.start()

    def _build(self) -> None:
        try:
            self._compile()
            self._switch(self._load())
        except Exception as err:  # the model keeps running eager; the reason stays readable
            self.failure = err
            logger.debug("qwen3_retrieval: compiling the regions failed (%s); the model runs eager", err)

    def _compile(self) -> None:
        """Compile the regions into the cache in a child process, at the lowest priority; wait for it here."""
        # A process, not this thread: a compile cut short when the program exits would abort it from a
        # daemon thread, and the compiler's memory stays out of this process's peak.
        _lowest_priority()  # the child inherits this thread's niceness
        spec = {"folder": str(self.folder), "dtype": str(self.dtype).removeprefix("torch."), "eps": self.eps}
        spec.update(sizes=self.sizes, threads=torch.get_num_threads(), build_files_in_scratch=_default_build_files())
        logger.debug("qwen3_retrieval: compiling the regions into %s in the background", self.folder)
        command = [sys.executable, "-m", "qwen3_retrieval.kernels.compiled", json.dumps(spec)]
        with _children_lock:
            if _exiting:
                raise RuntimeError("the program is exiting")
            # A session of its own: at exit the whole group goes, the C++ compiler processes included.
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
            _children[process] = scratch_folder(self.folder.parent, process.pid)
        try:
            _, errors = process.communicate()
        finally:
            with _children_lock:
                scratch = _children.pop(process)
            shutil.rmtree(scratch, ignore_errors=True)
        if process.returncode != 0:
            raise RuntimeError(f"the compile process exited with {process.returncode}: {errors[-500:]}")

    def _switch(self, regions: Regions) -> None:
        if _forked:  # see the module's notes
            return
        self.current, self.compiled = regions, True

    def _load(self) -> Regions:
        loaded = {name: torch._inductor.aoti_load_package(str(self.folder / f"{name}.pt2")) for name in Regions._fields}
        return Regions(
            norm_rotary=_tensor_call(loaded["norm_rotary"]),
            add_norm=_pair_call(loaded["add_norm"]),
            silu_mul=_tensor_call(loaded["silu_mul"]),
        )


def _exports(
    dtype: torch.dtype, eps: float, sizes: dict[str, int]
) -> dict[str, tuple[torch.nn.Module, tuple[torch.Tensor, ...], Any]]:
    """Each region as a module to export, with example inputs and which of their sizes are dynamic."""
    pure = pure_regions(eps)
    head_dim, hidden, intermediate = sizes["head_dim"], sizes["hidden"], sizes["intermediate"]
    tokens, heads = torch.export.Dim("tokens", min=1), torch.export.Dim("heads", min=1)

    def empty(*shape: int) -> torch.Tensor:  # export traces shapes, never values
        return torch.empty(shape, dtype=dtype)

    return {
        "norm_rotary": (
            _Module(pure.norm_rotary),
            (empty(8, 4, head_dim), empty(head_dim), empty(8, 1, head_dim), empty(8, 1, head_dim)),
            ({0: tokens, 1: heads}, None, {0: tokens}, {0: tokens}),
        ),
        "add_norm": (
            _Module(pure.add_norm),
            (empty(8, hidden), empty(8, hidden), empty(hidden)),
            ({0: tokens}, {0: tokens}, None),
        ),
        "silu_mul": (
            _Module(pure.silu_mul),
            (empty(8, intermediate), empty(8, intermediate)),
            ({0: tokens}, {0: tokens}),
        ),
    }


SCRATCH_PREFIX = ".compiling-"
"""Scratch folders of compiles under way, beside the cache's region sets: ``.compiling-HOST-PID``."""


def scratch_folder(compiled_root: Path, pid: int) -> Path:
    """The scratch folder of the compile process ``pid`` on this machine (see the module's notes)."""
    return compiled_root / f"{SCRATCH_PREFIX}{socket.gethostname()}-{pid}"


def remove_abandoned_scratch(compiled_root: Path) -> None:
    """Remove this machine's scratch folders whose compile process is gone (killed along with its program)."""
    mine = f"{SCRATCH_PREFIX}{socket.gethostname()}-"
    for folder in compiled_root.glob(f"{mine}*"):
        pid = folder.name.removeprefix(mine)
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, another user's
        return True
    try:  # a zombie has ended; where nothing reaps orphans (a container without an init), it stays one
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _default_build_files() -> bool:
    """Whether inductor's build files would go to its default folder (none chosen by the user)."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None:
        return True
    try:  # inductor writes its default into the environment once it has used it
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return False
    return os.path.abspath(chosen) == os.path.abspath(default_cache_dir())


def compile_into(
    folder: Path, dtype: torch.dtype, eps: float, sizes: dict[str, int], *, build_files_in_scratch: bool = True
) -> None:
    """Compile the regions into ``folder`` (one ``.pt2`` package each), skipping those already there.

    The work happens in this process's scratch folder beside ``folder``, and with ``build_files_in_scratch``
    inductor's build files too (otherwise they go to ``TORCHINDUCTOR_CACHE_DIR``, a folder the user chose);
    whoever started the process removes the scratch folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    remove_abandoned_scratch(folder.parent)
    scratch = scratch_folder(folder.parent, os.getpid())
    scratch.mkdir(exist_ok=True)
    if build_files_in_scratch:  # inductor reads it whenever it builds
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "inductor")
    for name, (module, example, dynamic) in _exports(dtype, eps, sizes).items():
        target = folder / f"{name}.pt2"
        if target.exists():
            continue
        program = torch.export.export(module, example, dynamic_shapes=(dynamic,))  # forward(*args)
        package = scratch / f"{name}.pt2"
        torch._inductor.aoti_compile_and_package(program, package_path=str(package))
        os.replace(package, target)  # whole or absent, whatever else runs or dies meanwhile


class _Module(torch.nn.Module):
    """A function as a module, for ``torch.export``."""

    def __init__(self, function: Callable[..., Any]) -> None:
        super().__init__()
        self.function = function

    def forward(self, *args: torch.Tensor) -> Any:
        return self.function(*args)


def _tensor_call(package: Any) -> Callable[..., torch.Tensor]:
    def call(*args: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = package(*(arg.contiguous() for arg in args))
        return result

    return call


def _pair_call(package: Any) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    def call(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = package(*(arg.contiguous() for arg in args))
        return first, second

    return call


def _lowest_priority() -> None:
    """Run this thread, and the compiler processes it starts, only on cores the callers leave idle."""
    if sys.platform.startswith("linux"):  # Linux's niceness is per thread, and children inherit it
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


_forked = False
_switches: weakref.WeakSet[RegionSwitch] = weakref.WeakSet()
_children: dict[subprocess.Popen[str], Path] = {}  # compile processes running now, and their scratch folders
_children_lock = threading.Lock()
_exiting = False


@atexit.register
def _stop_compiles() -> None:
    """Nothing outlives the program: a compile still running is stopped (the next process compiles again)."""
    global _exiting
    with _children_lock:
        _exiting = True
        running = dict(_children)
    for process in running:
        with contextlib.suppress(OSError):
            if hasattr(os, "killpg"):
                os.killpg(process.pid, signal.SIGKILL)  # its group: the compiler processes it started too
            else:
                process.kill()
    for process, scratch in running.items():
        with contextlib.suppress(Exception):
            process.wait(timeout=10)
        shutil.rmtree(scratch, ignore_errors=True)


def _after_fork_in_child() -> None:
    global _forked
    _forked = True
    for switch in list(_switches):
        switch.current, switch.compiled = eager_regions(switch.dtype, switch.eps), False
        switch._thread = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def main() -> None:
    """``python -m qwen3_retrieval.kernels.compiled SPEC``: the compile process :class:`RegionSwitch` starts."""
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec["threads"])  # the generated loops use the parent's thread count
    folder = Path(spec["folder"])
    try:
        dtype, in_scratch = getattr(torch, spec["dtype"]), spec["build_files_in_scratch"]
        compile_into(folder, dtype, spec["eps"], spec["sizes"], build_files_in_scratch=in_scratch)
    finally:  # also when the program that started this one was killed and cannot remove it
        shutil.rmtree(scratch_folder(folder.parent, os.getpid()), ignore_errors=True)


if __name__ == "__main__":
    main()
