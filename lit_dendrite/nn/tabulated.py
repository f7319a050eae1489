"""Frozen fast path: a frozen inner net replaced by a lookup table with (bi/tri)linear interpolation.

Each learned layer gets its own table over a box that covers the inputs that layer actually receives,
found by a calibration pass (per-coordinate min/max over the calibration batches, widened by
``margin`` of the range on each side) or given explicitly. Inputs outside the box are evaluated exactly
by the inner net, never clamped. Arity 1 uses a 1-D table, arity 2 a 2-D table (default 257 points per
axis), arity 3 a 3-D table (default 129 points per axis, 8.6 MB per layer: 257^3 would take 68 MB); the
interpolation error is measured when tabulating and reported. In inference, a 2-D table runs in one pass with the
LayerNorm before it: on CPU natively, with the max-pool after it (:mod:`lit_dendrite.nn.native`), on CUDA in Triton
(:mod:`lit_dendrite.nn.inner_triton`). Tables are
not part of the state dict; a table refuses to run once the inner net has changed or is trainable again.
Adversarial evaluation must wrap the model in :func:`exact_inner`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lit_dendrite.nn import inner_op, native
from lit_dendrite.nn.inner import InnerNet
from lit_dendrite.nn.neurons import LAYER_NORM_EPS, LearnedNeuron, inner_net_neurons, max_pool_maps

DEFAULT_GRID = {1: 4097, 2: 257, 3: 129}
ERROR_SAMPLES = 1 << 14
AFFINE_LANES = 16
OUTSIDE_BLOCK_ROWS = 512


class InnerTable(nn.Module):
    """The inner net sampled on a regular grid over the box ``[low, high]`` (one bound per input)."""

    def __init__(self, inner: InnerNet, low: torch.Tensor, high: torch.Tensor, grid: int) -> None:
        super().__init__()
        arity = inner.arity
        if arity not in DEFAULT_GRID:
            raise ValueError(f"tables support arity 1, 2 or 3, got an inner net of arity {arity}")
        if grid < 2:
            raise ValueError(f"a table needs at least 2 grid points per axis, got grid={grid}")
        if low.shape != (arity,) or high.shape != (arity,) or not bool((high > low).all()):
            raise ValueError(f"table box needs {arity} bounds with high > low, got low={low}, high={high}")
        self.arity, self.grid = arity, grid
        param = inner.linears[0].weight
        low, high = low.to(param), high.to(param)
        axes = [
            torch.linspace(float(lo), float(hi), grid, dtype=param.dtype, device=param.device)
            for lo, hi in zip(low, high)
        ]
        points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, arity)
        with torch.no_grad():
            values = inner.evaluate(points, -1).reshape([grid] * arity)
        # grid_sample reads coordinates (x, y, z) as indices (W, H, D): store the axes reversed so that the
        # inputs are the coordinates in their own order; a 1-D table is a 1 x grid image.
        values = values.permute(*reversed(range(arity)))
        self.register_buffer(
            "values", values.reshape(1, 1, *([1] if arity == 1 else []), *values.shape), persistent=False
        )
        self.register_buffer("low", low, persistent=False)
        self.register_buffer("high", high, persistent=False)
        scale = 2 / (high - low)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("offset", -1 - low * scale, persistent=False)
        # The same affine repeated over AFFINE_LANES rows: the map to box coordinates of a row-major (rows, arity)
        # tensor, viewed as (-1, lanes), vectorises; broadcast over (rows, arity) it ran 4x slower.
        self.register_buffer("scale_lanes", scale.repeat(AFFINE_LANES), persistent=False)
        self.register_buffer("offset_lanes", self.offset.repeat(AFFINE_LANES), persistent=False)
        if arity == 2:
            # The native kernel's form: per cell (c0, c1, c2, c3) with value c0 + fu c1 + fv (c2 + fu c3), and the map
            # of normalised inputs to grid index units.
            t = self.values[0, 0]
            corner = t[:-1, :-1]
            step_u, step_v = t[:-1, 1:] - corner, t[1:, :-1] - corner
            twist = t[1:, 1:] - t[1:, :-1] - t[:-1, 1:] + corner
            self.register_buffer("cells", torch.stack([corner, step_u, step_v, twist], -1).contiguous(), False)
            self.register_buffer("index_scale", scale * (grid - 1) / 2, persistent=False)
            self.register_buffer("index_offset", (self.offset + 1) * (grid - 1) / 2, persistent=False)
        self.register_buffer("snapshot", _flat_parameters(inner), persistent=False)
        self._fingerprint = _fingerprint(inner)
        self.rows_total = 0
        self.rows_exact = 0

    def forward(self, x: torch.Tensor, dim: int, inner: InnerNet) -> torch.Tensor:
        """Interpolated inner net along ``dim`` (removed); rows outside the box go through ``inner`` exactly.

        Reads ``x`` as rows of ``arity`` values: free for the dendritic layers, whose groups are adjacent in memory.
        """
        self._check_unchanged(inner)
        rows = x.movedim(dim, -1)
        out_shape = rows.shape[:-1]
        rows = rows.reshape(-1, self.arity)
        coords = self.coordinates(rows)
        values = self.interpolate(coords)
        self.rows_total += len(values)
        outside = self._outside_rows(coords)
        if outside is None:
            return values.view(out_shape)
        self.rows_exact += len(outside)
        exact = inner.evaluate(rows[outside], -1).to(values.dtype)  # autocast may run the inner net in bf16
        return values.index_put_((outside,), exact).view(out_shape)

    def fuses(self, z: torch.Tensor) -> bool:
        """Whether :meth:`normalized` takes a fused path for ``z``: a 2-D table on inputs that need no gradient, float32
        on CPU with the native kernel built, or on CUDA (float32, bf16 or fp16) with Triton."""
        if self.arity != 2 or (z.requires_grad and torch.is_grad_enabled()):
            return False
        kind = inner_op.backend(z.device)
        if kind == "native":
            return z.dtype == torch.float32 and native.native_available()
        return kind == "triton" and z.dtype in inner_op.TRITON_DTYPES and inner_op.triton_installed()

    def normalized(self, z: torch.Tensor, normalized_ndim: int, inner: InnerNet, pool: int = 1) -> torch.Tensor:
        """LayerNorm (no affine) of ``z`` over its last ``normalized_ndim`` dims, the table on each adjacent pair of the
        last dim, then with ``pool`` > 1 a pool x pool max-pool of (N, H, W, C) maps, in one pass (see :meth:`fuses`):
        the native kernel on CPU, with the pool; a Triton kernel on CUDA, pooled afterwards. A value with a pair outside
        the box is recomputed from its pairs exactly by ``inner``."""
        self._check_unchanged(inner)
        z = z.contiguous()
        on_cpu = inner_op.backend(z.device) == "native"
        fused_pool = pool if on_cpu else 1
        if on_cpu:
            values, mean, rstd, outside = native.normalized_table_lookup(
                z, normalized_ndim, self.cells, self.index_scale, self.index_offset, LAYER_NORM_EPS, pool
            )
        else:
            values, mean, rstd, outside = inner_op.triton_kernels().table_lookup(
                z, normalized_ndim, self.cells, self.index_scale, self.index_offset, LAYER_NORM_EPS
            )
        window = fused_pool * fused_pool
        self.rows_total += values.numel() * window
        if len(outside):
            self.rows_exact += len(outside) * window
            sample = outside // (values.numel() // len(mean))
            pairs = _window_pairs(outside, values.shape, z.shape, fused_pool)
            normalized_pairs = (z.view(-1, 2)[pairs] - mean[sample, None, None]) * rstd[sample, None, None]
            values.view(-1)[outside] = inner.evaluate(normalized_pairs, -1).amax(1).to(values.dtype)
        return values if on_cpu else max_pool_maps(values, pool)

    def coordinates(self, rows: torch.Tensor) -> torch.Tensor:
        """Box coordinates of ``(rows, arity)`` inputs: the box maps to [-1, 1] on every axis."""
        lanes = self.scale_lanes.numel()
        if rows.is_contiguous() and rows.numel() % lanes == 0:
            return torch.addcmul(self.offset_lanes, rows.view(-1, lanes), self.scale_lanes).view(rows.shape)
        return torch.addcmul(self.offset, rows, self.scale)

    def _outside_rows(self, coords: torch.Tensor) -> torch.Tensor | None:
        """Indices of the rows with a coordinate outside [-1, 1] or NaN; None (after one pass) when there are none.

        Rows are screened in blocks first, so that a few stray rows cost little more than the first pass.
        """
        coords = coords.detach()
        lowest, highest = torch.aminmax(coords)
        if bool(lowest >= -1) and bool(highest <= 1):
            return None
        full = len(coords) // OUTSIDE_BLOCK_ROWS * OUTSIDE_BLOCK_ROWS
        blocks = coords[:full].view(-1, OUTSIDE_BLOCK_ROWS * self.arity)
        suspect = (~((blocks.amin(1) >= -1) & (blocks.amax(1) <= 1))).nonzero()
        offsets = torch.arange(OUTSIDE_BLOCK_ROWS, device=coords.device)
        candidates = torch.cat(
            [(suspect * OUTSIDE_BLOCK_ROWS + offsets).view(-1), torch.arange(full, len(coords), device=coords.device)]
        )
        inside = coords[candidates].abs().amax(1) <= 1
        return candidates[~inside]

    def interpolate(self, coords: torch.Tensor) -> torch.Tensor:
        """Table values at box coordinates in [-1, 1], ``(rows, arity) -> (rows,)``; differentiable in ``coords``."""
        grid = coords
        if self.arity == 1:
            grid = torch.cat([grid, torch.zeros_like(grid)], dim=-1)
        grid = grid.reshape(1, len(coords), *([1] * (self.values.dim() - 3)), grid.shape[-1])
        # "border" only affects rows outside the box, which forward replaces by exact values.
        out = F.grid_sample(self.values, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.view(len(coords))

    def measure_error(self, inner: InnerNet, inputs: torch.Tensor | None = None) -> dict[str, float]:
        """Max |table - inner| at the cell centres and uniform points of the box, and on sample ``inputs``."""
        generator = torch.Generator().manual_seed(0)
        centres = torch.linspace(-1, 1, 2 * self.grid - 1)[1::2]
        centres = centres[torch.randperm(centres.numel(), generator=generator)][:ERROR_SAMPLES]
        uniform = torch.rand(ERROR_SAMPLES, self.arity, generator=generator) * 2 - 1
        diagonal = centres.unsqueeze(-1).expand(-1, self.arity)
        coords = torch.cat([diagonal, _shuffled_columns(diagonal, generator), uniform]).to(self.values)
        span = self.values.max() - self.values.min()
        with torch.no_grad():
            box_error = self._max_error(coords, inner)
            input_error = float("nan")
            if inputs is not None:
                input_coords = self.coordinates(inputs.to(self.values))
                input_coords = input_coords[input_coords.abs().amax(-1) <= 1]
                input_error = self._max_error(input_coords, inner) if len(input_coords) else float("nan")
        return {
            "max_abs_error_box": box_error,
            "max_abs_error_inputs": input_error,
            "output_range": float(span),
        }

    def _max_error(self, coords: torch.Tensor, inner: InnerNet) -> float:
        """Max error at box coordinates given as rows ``(rows, arity)``."""
        points = self.low + (coords + 1) * (self.high - self.low) / 2
        interpolated = self.interpolate(coords)
        return float((interpolated - inner.evaluate(points, -1)).abs().max())

    def _check_unchanged(self, inner: InnerNet) -> None:
        if any(p.requires_grad for p in inner.parameters()):
            raise RuntimeError(
                "the inner net is trainable but tabulated; freeze it (tabulate_inner does) or call "
                "use_exact_inner(net) before training it"
            )
        fingerprint = _fingerprint(inner)
        if fingerprint != self._fingerprint:
            if not torch.equal(_flat_parameters(inner), self.snapshot):
                raise RuntimeError(
                    "the inner net changed after it was tabulated; call tabulate_inner(net, ...) again "
                    "or use_exact_inner(net)"
                )
            self._fingerprint = fingerprint

    def report(self) -> dict[str, object]:
        """Box, grid and how many rows fell back to the exact inner net so far."""
        return {
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "grid": self.grid,
            "rows_total": self.rows_total,
            "exact_fraction": self.rows_exact / self.rows_total if self.rows_total else 0.0,
        }

    def extra_repr(self) -> str:
        return f"arity={self.arity}, grid={self.grid}, low={self.low.tolist()}, high={self.high.tolist()}"


def _window_pairs(outputs: torch.Tensor, values_shape: torch.Size, z_shape: torch.Size, pool: int) -> torch.Tensor:
    """Flat pair indices of ``z`` (k, pool * pool) behind flat ``outputs`` of pooled (N, H', W', U) values (pool 1:
    the pair behind each value of any shape)."""
    if pool == 1:
        return outputs.unsqueeze(1)
    n, row, column, unit = torch.unravel_index(outputs, tuple(values_shape))
    offsets = torch.arange(pool)
    rows = (row * pool).unsqueeze(1) + offsets.repeat_interleave(pool)
    columns = (column * pool).unsqueeze(1) + offsets.repeat(pool)
    _, height, width, channels = z_shape
    return ((n.unsqueeze(1) * height + rows) * width + columns) * (channels // 2) + unit.unsqueeze(1)


def _flat_parameters(inner: InnerNet) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in inner.parameters()]).clone()


def _fingerprint(inner: InnerNet) -> tuple[tuple[int, int], ...]:
    return tuple((p.data_ptr(), p._version) for p in inner.parameters())


def _shuffled_columns(points: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Cell centres off the diagonal: each column permuted independently."""
    columns = [col[torch.randperm(col.numel(), generator=generator)] for col in points.unbind(-1)]
    return torch.stack(columns, dim=-1)


def _batches(calibration: Iterable[object]) -> Iterator[torch.Tensor]:
    for batch in calibration:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"calibration batches must be tensors or (inputs, labels) pairs, got {type(x).__name__}")
        yield x


def _calibrate(
    net: nn.Module, neurons: dict[str, LearnedNeuron], calibration: Iterable[object]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-layer min, max and a sample of the inputs each learned neuron sees, from an eval-mode pass."""
    low: dict[str, torch.Tensor] = {}
    high: dict[str, torch.Tensor] = {}
    sample: dict[str, torch.Tensor] = {}

    def recorder(name: str):
        def hook(module: LearnedNeuron, args: tuple) -> None:
            x, dim = args[0], args[1] if len(args) > 1 else -1
            rows = x.detach().movedim(dim, -1).reshape(-1, module.arity)
            lo, hi = rows.amin(0), rows.amax(0)
            low[name] = torch.minimum(low[name], lo) if name in low else lo
            high[name] = torch.maximum(high[name], hi) if name in high else hi
            if name not in sample:
                sample[name] = rows[torch.randperm(len(rows), device=rows.device)[:ERROR_SAMPLES]]

        return hook

    handles = [m.register_forward_pre_hook(recorder(name)) for name, m in neurons.items()]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad(), exact_inner(net):
            device = next(net.parameters()).device
            seen = sum(net(x.to(device)).shape[0] for x in _batches(calibration))
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()
    if not seen:
        raise ValueError("the calibration data gave no batches; pass a few training batches or input_range")
    return low, high, sample


def tabulate_inner(
    net: nn.Module,
    calibration: Iterable[object] | None = None,
    input_range: tuple[float, float] | None = None,
    grid: int | None = None,
    margin: float = 0.05,
) -> dict[str, dict[str, object]]:
    """Freeze ``net``'s inner net and give every learned neuron a table; returns the errors per layer.

    The box of each layer is either ``input_range`` for every input, or the per-coordinate min/max of
    that layer's inputs over the ``calibration`` batches (tensors or (inputs, labels) pairs, run in eval
    mode) widened by ``margin`` times the range on each side. ``grid`` points per axis default to
    ``DEFAULT_GRID[arity]``.
    """
    neurons = inner_net_neurons(net)
    if not neurons:
        raise ValueError(f"{type(net).__name__} has no learned neurons with an inner net to tabulate")
    if (calibration is None) == (input_range is None):
        raise ValueError("give exactly one of calibration (a few input batches) or input_range=(low, high)")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    for neuron in neurons.values():
        neuron.inner.requires_grad_(False)
    if input_range is not None:
        lo, hi = (float(v) for v in input_range)
        low = {name: torch.full((n.arity,), lo) for name, n in neurons.items()}
        high = {name: torch.full((n.arity,), hi) for name, n in neurons.items()}
        sample: dict[str, torch.Tensor] = {}
    else:
        low, high, sample = _calibrate(net, neurons, calibration)
    reports = {}
    for name, neuron in neurons.items():
        if name not in low:
            raise ValueError(f"learned neuron {name!r} saw no input during calibration; check the calibration data")
        pad = margin * (high[name] - low[name]).clamp_min(1e-6)
        points = grid or DEFAULT_GRID.get(neuron.arity, 2)
        neuron.table = InnerTable(neuron.inner, low[name] - pad, high[name] + pad, points)
        reports[name] = neuron.table.report() | neuron.table.measure_error(neuron.inner, sample.get(name))
    return reports


def tabulation_report(net: nn.Module) -> dict[str, dict[str, object]]:
    """Box, grid and exact-fallback fraction of every tabulated neuron (empty when none is tabulated)."""
    return {name: n.table.report() for name, n in inner_net_neurons(net).items() if n.table is not None}


def use_exact_inner(net: nn.Module) -> None:
    """Drop every table: learned neurons evaluate the inner net exactly again (it stays frozen)."""
    for neuron in inner_net_neurons(net).values():
        neuron.table = None


@contextlib.contextmanager
def exact_inner(net: nn.Module) -> Iterator[nn.Module]:
    """Evaluate ``net`` with the exact inner net inside the block (use for attacks); tables come back after."""
    tables = {name: n.table for name, n in inner_net_neurons(net).items()}
    use_exact_inner(net)
    try:
        yield net
    finally:
        for name, neuron in inner_net_neurons(net).items():
            neuron.table = tables.get(name)
