"""Surfaces, input regions and the soft-XOR statistics on functions whose answer is known."""

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from scipy.stats import chi2
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from lit_dendrite.analysis.callbacks import SurfaceImageCallback
from lit_dendrite.analysis.plots import save_figure, surface_figure, surface_gallery
from lit_dendrite.analysis.surfaces import (
    PAPER_GRID,
    Grid,
    collect_input_pairs,
    density_region,
    evaluate_surface,
    learned_neurons,
    pixel_batches,
)
from lit_dendrite.analysis.xor import analyse_net, analyse_xor, saddle_statistics
from lit_dendrite.nn import DendriticCNN, DendriticMLP, InnerNet

KNOWN = {
    "xy": (lambda p: p[..., 0] * p[..., 1], True, 2),
    "x2-y2": (lambda p: p[..., 0] ** 2 - p[..., 1] ** 2, True, 2),
    "x2+y2": (lambda p: p[..., 0] ** 2 + p[..., 1] ** 2, False, 0),
    "x+y": (lambda p: p[..., 0] + p[..., 1], False, 1),
}


COVARIANCE = np.array([[1.0, 0.3], [0.3, 0.6]])


@pytest.fixture(scope="module")
def gaussian_region():
    """The 90% region of a correlated Gaussian cloud centred at (0.3, -0.2)."""
    pairs = np.random.default_rng(0).multivariate_normal([0.3, -0.2], COVARIANCE, size=100_000)
    return density_region(pairs)


@pytest.mark.parametrize("name", list(KNOWN))
def test_known_functions_saddle_verdict_and_dominant_harmonic(name, gaussian_region):
    fn, saddle, dominant = KNOWN[name]
    analysis = analyse_xor(evaluate_surface(fn), gaussian_region)
    assert analysis.fit.is_saddle is saddle
    assert analysis.fit.r_squared == pytest.approx(1.0, abs=1e-9)
    assert analysis.harmonics.dominant == dominant


@pytest.mark.parametrize("name", list(KNOWN))
def test_harmonics_of_known_functions_around_the_origin(name):
    fn, _, dominant = KNOWN[name]
    region = density_region(np.random.default_rng(1).multivariate_normal([0, 0], COVARIANCE, size=50_000))
    fraction = analyse_xor(evaluate_surface(fn), region).harmonics.fraction
    assert fraction[dominant] > 0.9  # the rest is radial variation within a ring
    assert np.delete(fraction, dominant).max() < 0.05


def test_planar_and_curved_surfaces_differ_in_their_gain_over_a_plane(gaussian_region):
    plane = analyse_xor(evaluate_surface(KNOWN["x+y"][0]), gaussian_region).fit
    saddle = analyse_xor(evaluate_surface(KNOWN["xy"][0]), gaussian_region).fit
    assert plane.r_squared - plane.linear_r_squared == pytest.approx(0.0, abs=1e-9)
    assert saddle.r_squared - saddle.linear_r_squared > 0.8


def test_quadratic_fit_recovers_coefficients(gaussian_region):
    coefficients = np.array([0.5, -1.5, 2.0, 0.3, -0.7, 1.1])
    surface = evaluate_surface(
        lambda p: (
            0.5 * p[..., 0] ** 2
            - 1.5 * p[..., 1] ** 2
            + 2.0 * p[..., 0] * p[..., 1]
            + 0.3 * p[..., 0]
            - 0.7 * p[..., 1]
            + 1.1
        )
    )
    fit = analyse_xor(surface, gaussian_region).fit
    np.testing.assert_allclose(fit.coefficients, coefficients, atol=1e-9)
    assert fit.discriminant == pytest.approx(4 * 0.5 * -1.5 - 4.0)


def test_gaussian_region_has_the_analytic_area(gaussian_region):
    expected = math.pi * chi2.ppf(0.9, 2) * math.sqrt(np.linalg.det(COVARIANCE))
    assert gaussian_region.area == pytest.approx(expected, rel=0.05)
    assert gaussian_region.centre == pytest.approx((0.3, -0.2), abs=0.05)
    assert gaussian_region.density[gaussian_region.mask].sum() == pytest.approx(0.9, abs=0.01)


def test_region_rejects_pairs_mostly_off_the_grid():
    pairs = np.random.default_rng(0).normal(0, 10, size=(10_000, 2))
    with pytest.raises(ValueError, match="wider Grid"):
        density_region(pairs)
    assert density_region(pairs, Grid(-50, 50, 201)).mask.any()


def test_surface_of_an_inner_net_on_a_custom_grid():
    inner = InnerNet(2)
    grid = Grid(-1, 2, 7)
    surface = evaluate_surface(inner, grid)
    assert surface.values.shape == (7, 7)
    x, y = grid.axis[3], grid.axis[5]  # values[iy, ix]
    expected = inner(torch.tensor([[x, y]], dtype=torch.float32)).item()
    assert surface.values[5, 3] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="two-argument"):
        evaluate_surface(InnerNet(1))


def test_collected_pairs_are_what_the_inner_net_sees():
    torch.manual_seed(0)
    net = DendriticMLP(widths=(8, 6), dropout=0.0)
    images = torch.rand(20, 1, 28, 28)
    seen = []
    original = net.inner.evaluate
    net.inner.evaluate = lambda x, dim: (seen.append(x.movedim(dim, -1).reshape(-1, 2)), original(x, dim))[1]
    pairs = collect_input_pairs(net, [images])
    assert list(pairs) == ["hidden.0.neuron", "hidden.1.neuron"]
    assert pairs["hidden.0.neuron"].shape == (20 * 8, 2)
    assert sorted(map(tuple, pairs["hidden.1.neuron"])) == sorted(map(tuple, seen[1].numpy()))
    assert net.training, "the net's mode is restored"


def test_pair_cap_samples_uniformly_across_batches_and_layers_can_be_chosen():
    net = DendriticCNN(in_shape=(1, 28, 28), widths=(4, 4), kernels=(3,), mean=(0.5,), std=(0.5,))
    batches = [torch.full((5, 1, 28, 28), 0.0), torch.rand(5, 1, 28, 28)]
    names = list(learned_neurons(net))
    pairs = collect_input_pairs(net, batches, layers=names[:1], max_pairs=500, seed=1)
    assert list(pairs) == names[:1] and pairs[names[0]].shape == (500, 2)
    # half of all groups come from the blank batch (a handful of distinct pairs); a uniform sample keeps about half
    blank = np.unique(collect_input_pairs(net, batches[:1], layers=names[:1])[names[0]], axis=0)
    assert len(blank) <= 4
    from_constant = np.isclose(pairs[names[0]][:, None], blank[None]).all(axis=2).any(axis=1).mean()
    assert 0.35 < from_constant < 0.65
    with pytest.raises(ValueError, match="unknown learned-neuron layers"):
        collect_input_pairs(net, batches, layers=["nope"])
    with pytest.raises(ValueError, match="no learned neurons"):
        collect_input_pairs(DendriticMLP(neuron="relu"), batches)


def test_saddle_statistics_binomial_test():
    stats = saddle_statistics([True] * 9 + [False])
    assert stats.fraction == 0.9 and stats.n == 10
    assert stats.p_value == pytest.approx(22 / 1024)
    assert saddle_statistics([True, False]).p_value == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one"):
        saddle_statistics([])


def test_analyse_net_and_gallery(tmp_path):
    torch.manual_seed(0)
    net = DendriticMLP(widths=(16, 16))
    images = (np.random.default_rng(0).random((64, 28, 28, 1)) * 255).astype(np.uint8)
    assert next(iter(pixel_batches(images))).shape == (64, 1, 28, 28)
    analysis = analyse_net(net, images)
    assert analysis.surface.grid == PAPER_GRID and analysis.region.mask.any()
    path = save_figure(
        surface_gallery([("a", analysis), ("b", analysis), ("c", analysis)], columns=2), tmp_path / "g.png"
    )
    assert path.read_bytes()[:4] == b"\x89PNG"
    save_figure(surface_figure(analysis.surface, analysis.region, analysis.fit, show_density=True), tmp_path / "s.png")
    with pytest.raises(ValueError, match="two-argument inner net"):
        analyse_net(DendriticMLP(neuron="1arg"), images)


class _TinyModule(pl.LightningModule):
    def __init__(self, neuron: str) -> None:
        super().__init__()
        self.net = DendriticMLP(in_shape=(1, 4, 4), widths=(3,), neuron=neuron)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize(
    "neuron, tag", [("2arg", "inner/surface"), ("relu", None), ("1arg", "inner/curve"), ("pau", "inner/curve")]
)
def test_surface_callback_logs_one_image_per_epoch(tmp_path, neuron, tag):
    data = DataLoader(TensorDataset(torch.rand(8, 1, 4, 4)), batch_size=4)
    trainer = pl.Trainer(
        max_epochs=2,
        logger=TensorBoardLogger(tmp_path, name="", version=""),
        callbacks=[SurfaceImageCallback(grid=Grid(-5, 5, 21))],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_TinyModule(neuron), data)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert events.Tags()["images"] == ([tag] if tag else [])
    if tag:
        assert len(events.Images(tag)) == 2  # one per epoch
