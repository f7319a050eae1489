"""Native CPU kernel of the frozen fast path, compiled on first use with the system C compiler.

``table_kernel.c`` fuses a dendritic layer's LayerNorm, the table lookup of its 2-argument neurons and the conv
layer's max-pool (see :meth:`lit_dendrite.nn.tabulated.InnerTable.normalized`). It is built with ``$CC`` (default
``cc``) and ``-O3 -march=native -fopenmp`` into a per-user cache, ``$LIT_DENDRITE_CACHE`` or
``~/.cache/lit_dendrite``, named by a hash of the source, the flags, the compiler and the CPU, so that nodes of a
cluster sharing a home directory each get their own build. The library is written to a temporary name and renamed,
so concurrent jobs never load a half-written file. Without a working compiler (a warning says so), or with
``LIT_DENDRITE_NATIVE=0``, tables use the pure-torch path, which gives the same values more slowly.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from lit_dendrite.nn.neurons import LAYER_NORM_EPS

SOURCE = Path(__file__).with_name("table_kernel.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-trapping-math", "-shared", "-fPIC")


def native_enabled() -> bool:
    """Whether the native kernel may be used (``LIT_DENDRITE_NATIVE=0`` turns it off)."""
    return os.environ.get("LIT_DENDRITE_NATIVE", "1") != "0"


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    return Path(os.environ.get("LIT_DENDRITE_CACHE", Path.home() / ".cache" / "lit_dendrite"))


def build_kernel(directory: Path, flags: tuple[str, ...] = FLAGS) -> Path:
    """Compile ``table_kernel.c`` with ``flags`` into ``directory`` unless the same build is there; returns its path.

    Raises ``RuntimeError`` with the compiler's message when it cannot be built.
    """
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler {compiler!r} on PATH; install gcc or set CC")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(flags).encode(), version.encode(), _cpu_description().encode()):
        key.update(part)
    target = directory / f"table_kernel-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        built = Path(scratch) / target.name
        command = [compiler, *flags, str(SOURCE), "-o", str(built), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} could not build {SOURCE.name}:\n{result.stderr.strip()}")
        os.replace(built, target)
    return target


def load_kernel(path: Path) -> ctypes.CDLL:
    """Load a built kernel library and declare its functions' signatures."""
    library = ctypes.CDLL(str(path))
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    function = library.layer_norm_table_lookup
    function.restype = None
    shape, table, outputs = [size] * 5, [pointer] * 3, [pointer] * 4
    function.argtypes = [pointer, pointer, *shape, ctypes.c_double, *table, size, *outputs, ctypes.c_int]
    return library


@functools.cache
def table_kernel() -> ctypes.CDLL | None:
    """The compiled kernel, built on the first call of a process; None (with a warning) when it cannot be built."""
    try:
        return load_kernel(build_kernel(cache_dir()))
    except (RuntimeError, OSError) as error:
        warnings.warn(
            f"the frozen table's native CPU kernel is unavailable, tables use the slower pure-torch path: {error} "
            "(a C compiler and a writable $LIT_DENDRITE_CACHE build it; LIT_DENDRITE_NATIVE=0 skips it)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def normalized_table_lookup(
    z: torch.Tensor,
    normalized_ndim: int,
    cells: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    pool: int = 1,
    library: ctypes.CDLL | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm of contiguous float32 CPU ``z`` over its last ``normalized_ndim`` dims, the 2-D table lookup of each
    adjacent pair of the last dim, then with ``pool`` > 1 a pool x pool max-pool of (N, H, W, C) maps over H and W.

    Returns (values, mean, rstd, outside): values has the shape of ``z`` with the last dim halved (and H, W
    pooled), mean and rstd one entry per sample, outside the flat indices of the values that involve a pair outside
    the box (or NaN): those values are NaN. ``library`` defaults to :func:`table_kernel`.
    """
    library = library if library is not None else table_kernel()
    if library is None:
        raise RuntimeError("the native table kernel is unavailable; check native_available() first")
    if z.dtype != torch.float32 or z.device.type != "cpu" or not z.is_contiguous() or z.shape[-1] % 2:
        raise ValueError(
            f"the native table kernel needs a contiguous float32 CPU tensor with pairs in the last dim, "
            f"got {z.dtype} on {z.device}, shape {tuple(z.shape)}, contiguous={z.is_contiguous()}"
        )
    if pool > 1 and (z.dim() != 4 or normalized_ndim != 3):
        raise ValueError(f"pooling needs (N, H, W, C) maps normalised over (H, W, C), got shape {tuple(z.shape)}")
    for name, table_part in (("cells", cells), ("scale", scale), ("offset", offset)):
        if table_part.dtype != torch.float32 or table_part.device.type != "cpu" or not table_part.is_contiguous():
            raise ValueError(f"the table's {name} must be a contiguous float32 CPU tensor, got {table_part.dtype}")
    if cells.shape[:2] != (cells.shape[0], cells.shape[0]) or cells.shape[2:] != (4,) or scale.numel() != 2:
        raise ValueError(f"cells must be (grid - 1, grid - 1, 4) and scale/offset 2 values, got {tuple(cells.shape)}")
    batch, normalized = z.shape[: z.dim() - normalized_ndim], z.shape[z.dim() - normalized_ndim :]
    samples, units = batch.numel(), z.shape[-1] // 2
    height, width = (z.shape[1], z.shape[2]) if pool > 1 else (normalized[:-1].numel(), 1)
    values_shape = (*batch, height // pool, width // pool, units) if pool > 1 else (*z.shape[:-1], units)
    values = torch.empty(values_shape)
    mean = torch.empty(samples)
    rstd = torch.empty(samples)
    out_rows = samples * (height // pool)
    outside_per_row = torch.empty(out_rows, dtype=torch.int64)
    threads = torch.get_num_threads()
    scratch = torch.empty(threads * (width // pool) * pool * units if pool > 1 else 1)
    library.layer_norm_table_lookup(
        z.data_ptr(),
        values.data_ptr(),
        samples,
        height,
        width,
        units,
        pool,
        LAYER_NORM_EPS,
        scale.data_ptr(),
        offset.data_ptr(),
        cells.data_ptr(),
        cells.shape[0] + 1,
        mean.data_ptr(),
        rstd.data_ptr(),
        outside_per_row.data_ptr(),
        scratch.data_ptr(),
        threads,
    )
    suspect = outside_per_row.nonzero()
    row_length = values.numel() // max(out_rows, 1)
    candidates = (suspect * row_length + torch.arange(row_length)).view(-1)
    return values, mean, rstd, candidates[values.view(-1)[candidates].isnan()]


def native_available() -> bool:
    """Whether the native kernel is enabled and built (builds it on the first call)."""
    return native_enabled() and table_kernel() is not None


def _cpu_description() -> str:
    """The CPU model and features, so that a cached ``-march=native`` build is only reused on the same kind of CPU."""
    lines = []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")) and line not in lines:
                lines.append(line)
    return platform.machine() + "\n" + "\n".join(lines)
