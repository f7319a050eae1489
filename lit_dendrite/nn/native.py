"""Native CPU kernels, compiled on first use with the system C compiler into one library.

``inner_kernel.c`` evaluates the exact inner net, forward and backward, block by block in the cache (the ``native``
implementation of :mod:`lit_dendrite.nn.inner_kernels`); ``table_kernel.c`` fuses a dendritic layer's LayerNorm, the
table lookup of its 2-argument neurons and the conv layer's max-pool (see
:meth:`lit_dendrite.nn.tabulated.InnerTable.normalized`). The library is built with ``$CC`` (default ``cc``) and
``-O3 -march=native -fopenmp`` into a per-user cache, ``$LIT_DENDRITE_CACHE`` or ``~/.cache/lit_dendrite``, named by
a hash of the sources, the flags, the compiler and the CPU, so that nodes of a cluster sharing a home directory each
get their own build. It is written to a temporary name and renamed, so concurrent jobs never load a half-written
file. Without a working compiler (a warning says so), or with ``LIT_DENDRITE_NATIVE=0``, the pure-torch paths run:
the same values, more slowly.

The inner kernel also multiplies in bf16 (``bf16=True``: operands of its large products rounded to bf16, float32
accumulation): on AVX512-BF16's ``vdpbf16ps`` where ``-march=native`` finds it (:func:`bf16_hardware`), else the same
products emulated in float32 (also when ``-DLIT_DENDRITE_PORTABLE_BF16`` is among the flags).
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
from collections.abc import Sequence
from pathlib import Path

import torch

SOURCES = tuple(Path(__file__).with_name(name) for name in ("inner_kernel.c", "table_kernel.c"))
SIGN_BITS = 16
"""Signs of the inner net's last hidden layer per int16 word (see :func:`inner_forward`)."""
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-trapping-math", "-shared", "-fPIC")


def native_enabled() -> bool:
    """Whether the native kernels may be used (``LIT_DENDRITE_NATIVE=0`` turns it off)."""
    return os.environ.get("LIT_DENDRITE_NATIVE", "1") != "0"


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    return Path(os.environ.get("LIT_DENDRITE_CACHE", Path.home() / ".cache" / "lit_dendrite"))


def build_kernel(directory: Path, flags: tuple[str, ...] = FLAGS) -> Path:
    """Compile the kernels' sources with ``flags`` into ``directory`` unless the same build is there; returns its path.

    Raises ``RuntimeError`` with the compiler's message when it cannot be built.
    """
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler {compiler!r} on PATH; install gcc or set CC")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256()
    for part in (*(source.read_bytes() for source in SOURCES), " ".join(flags).encode(), version.encode()):
        key.update(part)
    key.update(_cpu_description().encode())
    target = directory / f"lit_dendrite_kernels-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        built = Path(scratch) / target.name
        command = [compiler, *flags, *map(str, SOURCES), "-o", str(built), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            names = " and ".join(source.name for source in SOURCES)
            raise RuntimeError(f"{compiler} could not build {names}:\n{result.stderr.strip()}")
        os.replace(built, target)
    return target


def load_kernel(path: Path) -> ctypes.CDLL:
    """Load a built kernel library and declare its functions' signatures."""
    library = ctypes.CDLL(str(path))
    pointer, size, integer = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    shape, table, outputs = [size] * 5, [pointer] * 3, [pointer] * 4
    net_shape, weights = [integer, integer, integer], [pointer] * 4
    signatures = {
        "layer_norm_table_lookup": [pointer, pointer, *shape, ctypes.c_double, *table, size, *outputs, integer],
        "inner_forward": [pointer, pointer, pointer, *net_shape, *weights, *[pointer] * 3, integer, pointer, integer],
        "inner_backward": [pointer, pointer, pointer, *net_shape, *weights, *[pointer] * 5, integer, pointer, integer],
        "inner_bf16_hardware": [],
    }
    for name, argtypes in signatures.items():
        function = getattr(library, name)
        function.restype = None if name == "layer_norm_table_lookup" else integer  # inner_*: 1 if out of memory
        function.argtypes = argtypes
    return library


@functools.cache
def kernel_library() -> ctypes.CDLL | None:
    """The compiled kernels, built on the first call of a process; None (with a warning) when they cannot be built."""
    try:
        return load_kernel(build_kernel(cache_dir()))
    except (RuntimeError, OSError) as error:
        warnings.warn(
            f"the native CPU kernels are unavailable, inner nets and tables use the slower pure-torch paths: {error} "
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
    eps: float,
    pool: int = 1,
    library: ctypes.CDLL | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm (epsilon ``eps``) of contiguous float32 CPU ``z`` over its last ``normalized_ndim`` dims, the 2-D table
    lookup of each adjacent pair of the last dim, then with ``pool`` > 1 a pool x pool max-pool of (N, H, W, C) maps
    over H and W.

    Returns (values, mean, rstd, outside): values has the shape of ``z`` with the last dim halved (and H, W
    pooled), mean and rstd one entry per sample, outside the flat indices of the values that involve a pair outside
    the box (or NaN): those values are NaN. ``library`` defaults to :func:`kernel_library`.
    """
    library = _library(library)
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
        eps,
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


def inner_kernel_mismatch(x: torch.Tensor, params: Sequence[torch.Tensor]) -> str | None:
    """Why the native kernel cannot evaluate the inner net ``params`` (W1, b1, W2, b2, w3, b3) on ``x``, or None.
    A bf16 or fp16 ``x`` (as CPU autocast gives it) is taken: the op casts it to float32 inside."""
    upcast = x.dtype in (torch.bfloat16, torch.float16)
    unsupported = _unsupported(x.new_empty(0, dtype=torch.float32) if upcast else x, params)
    if unsupported is None and not native_available():
        return "the native kernels are unavailable (LIT_DENDRITE_NATIVE=0, or no C compiler: see the warning)"
    return unsupported


def _unsupported(x: torch.Tensor, params: Sequence[torch.Tensor]) -> str | None:
    """What of ``x`` and ``params`` the inner kernel does not support (dtype, device, depth, widths), or None."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in (x, *params)):
        return f"it needs float32 CPU inputs and weights, got {x.dtype} inputs on {x.device}"
    if len(params) != 6 or params[-2].shape[-2] != 1:
        return f"it needs an inner net of 2 hidden layers and 1 output, got {len(params) // 2 - 1} hidden layers"
    widths = [params[0].shape[-2], params[2].shape[-2]]
    if any(width % 16 for width in widths):
        return f"it needs hidden widths that are multiples of 16, got {widths}"
    return None


def inner_forward(
    rows: torch.Tensor,
    params: Sequence[torch.Tensor],
    keep_signs: bool = False,
    bf16: bool = False,
    type_rows: Sequence[int] | None = None,
    library: ctypes.CDLL | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The inner net ``params`` (W1, b1, W2, b2, w3, b3) on each row of contiguous float32 CPU ``rows`` (n, arity),
    and with ``keep_signs`` the signs of its last hidden layer for :func:`inner_backward`: 1 bit per unit, as
    (n, h2 / 16) int16 words (otherwise None). With ``bf16`` the hidden-to-hidden product takes bf16 operands.

    Cell types: ``params`` stacked along a leading dim of K nets and ``rows`` grouped by type, ``type_rows[k]`` rows of
    type k after those of the types before it."""
    library, (arity, h1, h2), (w1t, b1, w2t, b2, w3, b3), counts = _inner_call(rows, params, type_rows, library)
    out = rows.new_empty(len(rows))
    signs = torch.empty(len(rows), h2 // SIGN_BITS, dtype=torch.int16) if keep_signs else None
    w2_pairs = bf16_pairs(w2t) if bf16 else None
    failed = library.inner_forward(
        rows.data_ptr(), out.data_ptr(), 0 if signs is None else signs.data_ptr(), arity, h1, h2,
        w1t.data_ptr(), b1.data_ptr(), w2t.data_ptr(), b2.data_ptr(), w3.data_ptr(), b3.data_ptr(),
        0 if w2_pairs is None else w2_pairs.data_ptr(), len(counts), counts.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    _check_allocated(failed)
    return out, signs


def inner_backward(
    rows: torch.Tensor,
    grad_out: torch.Tensor,
    params: Sequence[torch.Tensor],
    input_grad: bool,
    param_sums: bool,
    signs: torch.Tensor | None = None,
    overwrite_rows: bool = False,
    bf16: bool = False,
    type_rows: Sequence[int] | None = None,
    library: ctypes.CDLL | None = None,
) -> tuple[torch.Tensor | None, list[torch.Tensor] | None]:
    """Backward of :func:`inner_forward` for the output gradient ``grad_out``: the rows' gradient (``input_grad``) and
    (``param_sums``) the sums the weight gradients are made of: ``[P, s, dW1^T, db1, sum(grad_out)]`` with
    ``G = grad_out * [h2 > 0]``, ``P = G^T relu(h1)`` and ``s = colsum(G)`` (see ``inner_kernel.c``), each with the
    leading dim of K cell types where ``params`` have one. With the forward pass's ``signs``, h2 is not recomputed:
    one matrix product per row fewer. With ``overwrite_rows`` the rows' gradient is written over ``rows`` (each block
    is read before its gradient is written), saving a buffer. With ``bf16`` the two hidden-to-hidden products take
    bf16 operands, as in :func:`inner_forward`."""
    library, (arity, h1, h2), (w1t, b1, w2t, b2, w3, _), counts = _inner_call(rows, params, type_rows, library)
    if grad_out.shape != rows.shape[:1] or grad_out.dtype != torch.float32 or not grad_out.is_contiguous():
        raise ValueError(f"grad_out must be a contiguous float32 vector of {len(rows)} values, got {grad_out.shape}")
    words = (len(rows), h2 // SIGN_BITS)
    if signs is not None and (signs.shape != words or signs.dtype != torch.int16 or not signs.is_contiguous()):
        raise ValueError(f"signs must be contiguous int16 words of shape {words}, got {tuple(signs.shape)}")
    w2out = (w3.unsqueeze(-1) * w2t.transpose(-1, -2)).contiguous()
    pairs = [bf16_pairs(w2t), bf16_pairs(w2out)] if bf16 else [None, None]
    grad_rows = (rows if overwrite_rows else torch.empty_like(rows)) if input_grad else None
    sizes = [h2 * h1, h2, arity * h1, h1, 1]
    types = len(counts)
    sums = rows.new_zeros(types, sum(sizes), dtype=torch.float64) if param_sums else None
    failed = library.inner_backward(
        rows.data_ptr(), grad_out.data_ptr(), 0 if signs is None else signs.data_ptr(), arity, h1, h2,
        w1t.data_ptr(), b1.data_ptr(), w2t.data_ptr(), b2.data_ptr(), w2out.data_ptr(),
        *(0 if pair is None else pair.data_ptr() for pair in pairs),
        0 if grad_rows is None else grad_rows.data_ptr(), 0 if sums is None else sums.data_ptr(),
        types, counts.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    _check_allocated(failed)
    if sums is None:
        return grad_rows, None
    shapes = [(h2, h1), (h2,), (arity, h1), (h1,), (1,)]
    parts = [part.reshape(types, *shape) for part, shape in zip(sums.float().split(sizes, dim=1), shapes)]
    return grad_rows, parts if params[0].dim() == 3 else [part[0] for part in parts]


def bf16_pairs(weight_t: torch.Tensor) -> torch.Tensor:
    """A transposed weight (..., k, n) rounded to bf16 as the kernel's bf16 products read it: (..., k / 2, n, 2), rows
    2i and 2i + 1 of each column side by side."""
    k = weight_t.shape[-2]
    return weight_t.to(torch.bfloat16).unflatten(-2, (k // 2, 2)).transpose(-1, -2).contiguous()


def _inner_call(
    rows: torch.Tensor, params: Sequence[torch.Tensor], type_rows: Sequence[int] | None, library: ctypes.CDLL | None
) -> tuple[ctypes.CDLL, tuple[int, int, int], list[torch.Tensor], torch.Tensor]:
    """The library, (arity, h1, h2), the weights as the kernel takes them (stacked over cell types: (K, ...)) and the
    rows per type, after checking what C will read."""
    library = _library(library)
    unsupported = _unsupported(rows, params)
    if unsupported is not None:
        raise ValueError(f"the native inner kernel cannot run: {unsupported}")
    one_net = params[0].dim() == 2
    w1, b1, w2, b2, w3, b3 = (t.detach().unsqueeze(0) if one_net else t.detach() for t in params)
    types, arity = w1.shape[0], w1.shape[2]
    if rows.dim() != 2 or not rows.is_contiguous() or rows.shape[1] != arity:
        raise ValueError(f"rows must be contiguous (n, {arity}), got {tuple(rows.shape)}")
    if w2.shape[2] != w1.shape[1] or w3.shape[2] != w2.shape[1] or any(len(t) != types for t in (b1, w2, b2, w3, b3)):
        raise ValueError(f"inconsistent inner-net weights: {[tuple(t.shape) for t in params]}")
    counts = torch.tensor([len(rows)] if type_rows is None else list(type_rows), dtype=torch.int64)
    if len(counts) != types or counts.sum() != len(rows) or (counts < 0).any():
        raise ValueError(f"type_rows must give the rows of each of {types} nets, {len(rows)} in all, got {type_rows}")
    shape = (arity, w1.shape[1], w2.shape[1])
    prepared = [w1.transpose(1, 2), b1, w2.transpose(1, 2), b2, w3[:, 0], b3.reshape(types)]
    return library, shape, [t.contiguous() for t in prepared], counts


def _check_allocated(failed: int) -> None:
    if failed:
        raise MemoryError("the native inner kernel could not allocate its per-thread buffers")


@torch.compiler.assume_constant_result  # torch.compile takes the answer as a constant instead of tracing the build
def native_available() -> bool:
    """Whether the native kernels are enabled and built (builds them on the first call)."""
    return native_enabled() and kernel_library() is not None


@torch.compiler.assume_constant_result
def bf16_hardware() -> bool:
    """Whether the native kernel multiplies bf16 on the CPU's AVX512-BF16 instructions (False: it emulates them in
    float32, or the kernels are unavailable)."""
    return native_available() and bool(kernel_library().inner_bf16_hardware())


def _library(library: ctypes.CDLL | None) -> ctypes.CDLL:
    library = library if library is not None else kernel_library()
    if library is None:
        raise RuntimeError("the native kernels are unavailable; check native_available() first")
    return library


def _cpu_description() -> str:
    """The CPU model and features, so that a cached ``-march=native`` build is only reused on the same kind of CPU."""
    lines = []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")) and line not in lines:
                lines.append(line)
    return platform.machine() + "\n" + "\n".join(lines)
