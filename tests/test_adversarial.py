"""Adversarial evaluation: attacks on a trained digits model, and sanity checks that catch broken evaluations."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_dendrite.data.corrupt import write_corrupted_set
from lit_dendrite.data.corrupted import CorruptedDataModule
from lit_dendrite.data.datasets import DATASETS, load_arrays
from lit_dendrite.nn import DendriticMLP
from lit_dendrite.nn.tabulated import tabulate_inner, tabulation_report
from lit_dendrite.robustness.adversarial import (
    SanityCheckError,
    UnreliableAttackError,
    check_clean_accuracy,
    check_curves,
    epsilons_for,
    evaluate_attack,
    exact_model,
    predict,
    reported_epsilon,
)
from lit_dendrite.robustness.attacks import ATTACKS, build_attack, default_attacks
from lit_dendrite.robustness.evaluate import corruption_accuracies

EPSILONS = [0.0, 0.1, 0.2, 0.3]
N_ATTACKED = 40


def _pixels(images) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def digits():
    """Test images (pixels in [0,1]) and labels of the embedded digits set, and the training split."""
    train_x, train_y = load_arrays("digits", "unused", train=True)
    test_x, test_y = load_arrays("digits", "unused", train=False)
    return _pixels(train_x), torch.from_numpy(train_y), _pixels(test_x), torch.from_numpy(test_y)


@pytest.fixture(scope="module")
def trained(digits):
    """A small 2-argument DendriticMLP with dropout, trained on digits for a few seconds (eval mode)."""
    train_x, train_y, test_x, test_y = digits
    torch.manual_seed(0)
    spec = DATASETS["digits"]
    net = DendriticMLP(widths=(32, 32), neuron="2arg", dropout=0.2, mean=spec.mean, std=spec.std)
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(6):
        for batch in torch.randperm(len(train_x)).split(100):
            loss = F.cross_entropy(net(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    accuracy = (predict(net, test_x) == test_y).float().mean().item()
    assert accuracy > 0.9, f"fixture model trained badly ({accuracy:.3f})"
    return net, accuracy


@pytest.fixture(scope="module")
def batch(digits):
    _, _, test_x, test_y = digits
    return test_x[:N_ATTACKED], test_y[:N_ATTACKED]


FAST_OVERRIDES = {
    "linf_pgd": dict(steps=10, rel_stepsize=0.1),
    "l2_pgd": dict(steps=10, rel_stepsize=0.1),
    "fgsm": {},
    "linf_deepfool": dict(steps=10, candidates=4),
    "l2_cw": dict(binary_search_steps=3, steps=25, stepsize=0.05, initial_const=1.0),
}


@pytest.mark.parametrize("name", default_attacks())
def test_attacks_lower_accuracy_as_eps_grows(trained, batch, name):
    net, _ = trained
    images, labels = batch
    attack = build_attack(name, **FAST_OVERRIDES[name])
    epsilons = EPSILONS if attack.norm == "linf" else [0.0, 1.0, 2.0, 3.0]
    result = evaluate_attack(net, images, labels, attack, epsilons, batch_size=50, progress=False)
    robust = result["robust_accuracy"]
    assert result["epsilons"] == epsilons
    assert robust[0] == result["clean_accuracy"] > 0.85
    assert all(later <= earlier for earlier, later in zip(robust, robust[1:]))
    assert robust[-1] < robust[0] - 0.3, f"{name} barely hurts: {robust}"
    assert all(worst <= raw for worst, raw in zip(robust, result["robust_accuracy_raw"]))
    assert result["attack"]["name"] == name and result["n"] == N_ATTACKED
    for key, value in FAST_OVERRIDES[name].items():
        assert result["attack"][key] == value


def test_attack_parameters_recorded_with_defaults(trained, batch):
    net, _ = trained
    images, labels = batch
    attack = build_attack("linf_pgd", steps=5, restarts=2)
    result = evaluate_attack(net, images[:20], labels[:20], attack, [0.1], progress=False)
    assert result["epsilons"] == [0.0, 0.1], "eps 0 is always evaluated"
    recorded = result["attack"]
    assert recorded["steps"] == 5 and recorded["restarts"] == 2 and recorded["random_start"] is True
    assert recorded["rel_stepsize"] == pytest.approx(2.5 / 40) and recorded["engine"] == "foolbox"


def test_attacks_use_the_exact_inner_net(trained, batch):
    net, _ = trained
    images, labels = batch
    tabulated = copy.deepcopy(net)
    tabulate_inner(tabulated, input_range=(-5.0, 5.0), grid=5)
    rows_before = {name: table["rows_total"] for name, table in tabulation_report(tabulated).items()}
    exact = evaluate_attack(net, images, labels, build_attack("fgsm"), EPSILONS, progress=False)
    fast = evaluate_attack(tabulated, images, labels, build_attack("fgsm"), EPSILONS, progress=False)
    assert fast["robust_accuracy"] == exact["robust_accuracy"]
    after = tabulation_report(tabulated)
    assert {name: table["rows_total"] for name, table in after.items()} == rows_before, "a table was used"
    assert set(after) == set(rows_before), "the tables come back after the evaluation"


def test_attacks_take_image_gradients_only_and_restore_the_parameter_flags(trained, digits):
    net = copy.deepcopy(trained[0])
    net.inner.requires_grad_(False)  # as after session III
    flags = {name: p.requires_grad for name, p in net.named_parameters()}
    _, _, images, labels = digits  # all 360: enough rows for the fused inner-net kernel

    def image_gradient() -> torch.Tensor:
        x = images.clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(net(x), labels), x)[0]

    reference = image_gradient()
    with exact_model(net):
        assert not any(p.requires_grad for p in net.parameters())
        assert torch.equal(image_gradient(), reference), "freezing the weights changed the image gradients"
    evaluate_attack(net, images[:20], labels[:20], build_attack("linf_pgd", steps=2), [0.1], progress=False)
    assert {name: p.requires_grad for name, p in net.named_parameters()} == flags
    assert all(p.grad is None for p in net.parameters()), "an attack accumulated weight gradients"


class ForcedTrainMode(nn.Module):
    """A broken wrapper: ``eval()`` is ignored, so the wrapped net's dropout stays on."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def train(self, mode: bool = True) -> ForcedTrainMode:
        return super().train(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class HiddenDropout(nn.Module):
    """A broken model whose mode flags say eval but whose forward always drops units."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.dropout(x, 0.3, training=True))


@pytest.mark.parametrize(("broken", "message"), [(ForcedTrainMode, "training mode"), (HiddenDropout, "random")])
def test_dropout_left_on_fails(trained, batch, broken, message):
    net, _ = trained
    images, labels = batch
    with pytest.raises(SanityCheckError, match=message):
        evaluate_attack(broken(net), images, labels, build_attack("fgsm"), EPSILONS, progress=False)
    net.eval()


def test_normalised_inputs_given_to_attack_fail(trained, batch):
    net, _ = trained
    images, labels = batch
    spec = DATASETS["digits"]
    normalised = (images - spec.mean[0]) / spec.std[0]
    with pytest.raises(SanityCheckError, match=r"not pixels in \[0,1\]"):
        evaluate_attack(net, normalised, labels, build_attack("fgsm"), EPSILONS, progress=False)


class NormalisationOutside(nn.Module):
    """A broken model that expects normalised inputs: the net with its normalisation layer removed."""

    def __init__(self, net: DendriticMLP) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.head(self.net.hidden(x.flatten(1)))


def test_normalisation_outside_model_fails_clean_accuracy_check(trained, digits):
    net, recorded = trained
    _, _, images, labels = digits
    check_clean_accuracy((predict(net, images) == labels).float().mean().item(), recorded)
    measured = (predict(NormalisationOutside(net), images) == labels).float().mean().item()
    with pytest.raises(SanityCheckError, match="normalisation outside"):
        check_clean_accuracy(measured, recorded)


class ForgetfulEngine:
    """Wraps a real engine but, at the largest epsilon, reports no success for the first ``forget`` correctly
    classified examples also broken at the second-largest (as a non-nested attack run could)."""

    def __init__(self, inner, forget: int) -> None:
        self.inner, self.forget = inner, forget

    def run(self, model, images, labels, epsilons):
        adversarials, success = self.inner.run(model, images, labels, epsilons)
        correct = predict(model, images) == labels
        forgotten = (success[-1] & success[-2] & correct).nonzero().flatten()[: self.forget]
        success = success.clone()
        success[-1, forgotten] = False
        return adversarials, success


def _with_engine(name: str, engine):
    attack = build_attack(name)
    return type(attack)(attack.name, attack.norm, engine, attack.params)


def test_worst_case_over_smaller_eps_is_reported(trained, batch):
    net, _ = trained
    images, labels = batch
    attack = _with_engine("fgsm", ForgetfulEngine(build_attack("fgsm").engine, forget=1))
    result = evaluate_attack(net, images, labels, attack, EPSILONS, progress=False)
    raw, worst = result["robust_accuracy_raw"], result["robust_accuracy"]
    assert worst[-1] <= raw[-1] - 1 / N_ATTACKED + 1e-9, "the forgotten example still counts as broken"


def test_raw_curve_rising_beyond_tolerance_fails(trained, batch):
    net, _ = trained
    images, labels = batch
    attack = _with_engine("fgsm", ForgetfulEngine(build_attack("fgsm").engine, forget=N_ATTACKED))
    with pytest.raises(UnreliableAttackError, match="rises"):  # the one check a run's evaluation records and survives
        evaluate_attack(net, images, labels, attack, EPSILONS, progress=False)


class LyingEngine:
    """Claims success everywhere with adversarial examples that break one promise each."""

    def __init__(self, flaw: str) -> None:
        self.flaw = flaw

    def run(self, model, images, labels, epsilons):
        adversarials = images.expand(len(epsilons), *images.shape).clone()
        if self.flaw == "too_far":
            adversarials = (adversarials + 0.5).clamp(0, 1)
        elif self.flaw == "outside_box":
            adversarials[..., 0, 0] = -1e-3
        return adversarials, torch.ones(len(epsilons), len(images), dtype=torch.bool)


@pytest.mark.parametrize(
    ("flaw", "message"),
    [("too_far", "from its original"), ("outside_box", r"leave \[0,1\]"), ("unchanged", "classified correctly")],
)
def test_claimed_successes_are_rechecked(trained, batch, flaw, message):
    net, _ = trained
    images, labels = batch
    attack = _with_engine("linf_pgd", LyingEngine(flaw))
    with pytest.raises(SanityCheckError, match=message):
        evaluate_attack(net, images, labels, attack, EPSILONS, progress=False)


def test_eps_zero_must_match_clean_accuracy():
    correct = torch.tensor([True, True, False, False])
    success = torch.tensor([[False, False, True, True], [False, True, True, True]])
    check_curves(correct, success, [0.0, 0.1], rise_tolerance=0.0)
    blind = success.clone()
    blind[0, 2] = False
    with pytest.raises(SanityCheckError, match="eps 0") as refused:
        check_curves(correct, blind, [0.0, 0.1], rise_tolerance=0.0)
    assert not isinstance(refused.value, UnreliableAttackError), "a blind attack is a broken setup: it stops the run"


def test_epsilon_grids():
    assert max(epsilons_for("fashion_mnist", "linf")) == pytest.approx(0.3)
    assert max(epsilons_for("cifar10", "linf")) == pytest.approx(16 / 255)
    assert reported_epsilon("cifar100", "linf") in epsilons_for("cifar100", "linf")
    assert reported_epsilon("digits", "l2") in epsilons_for("digits", "l2")
    with pytest.raises(ValueError, match="no epsilon list"):
        epsilons_for("svhn", "linf")


def test_bad_attack_requests_fail_early():
    with pytest.raises(ValueError, match="unknown attack"):
        build_attack("pgd")
    with pytest.raises(ValueError, match="does not accept"):
        build_attack("linf_pgd", stepz=3)
    with pytest.raises(ValueError, match="random_start"):
        build_attack("fgsm", restarts=3)


@pytest.mark.slow
def test_boundary_attack_breaks_examples(trained, batch):
    net, _ = trained
    images, labels = batch
    # 300 steps from its noisy starting points leave the boundary attack far from minimal (L2 ~ 10 on digits),
    # but within 16 of most images.
    attack = build_attack("boundary", steps=300)
    result = evaluate_attack(net, images[:30], labels[:30], attack, [0.0, 8.0, 16.0], progress=False)
    assert result["robust_accuracy"][-1] < result["robust_accuracy"][0] - 0.3


@pytest.mark.slow
def test_autoattack_is_at_least_as_strong_as_fgsm(trained, batch):
    pytest.importorskip("pyautoattack")
    assert ATTACKS["autoattack_linf"].opt_in
    net, _ = trained
    images, labels = batch
    auto = evaluate_attack(net, images[:40], labels[:40], build_attack("autoattack_linf"), [0.1], progress=False)
    fgsm = evaluate_attack(net, images[:40], labels[:40], build_attack("fgsm"), [0.1], progress=False)
    assert auto["robust_accuracy"][0] == fgsm["robust_accuracy"][0]
    assert auto["robust_accuracy"][1] <= fgsm["robust_accuracy"][1]


class CountingEngine:
    """Wraps a real engine and counts its calls; ``splits_epsilons`` as given."""

    def __init__(self, inner, splits_epsilons: bool) -> None:
        self.inner, self.splits_epsilons, self.calls = inner, splits_epsilons, 0

    def run(self, model, images, labels, epsilons):
        self.calls += 1
        return self.inner.run(model, images, labels, epsilons)


def test_an_interrupted_attack_resumes_from_its_finished_units_and_ends_as_an_uninterrupted_one(trained, batch):
    net, _ = trained
    images, labels = batch
    pgd = build_attack("linf_pgd", **FAST_OVERRIDES["linf_pgd"]).engine
    assert pgd.splits_epsilons and not build_attack("linf_deepfool").engine.splits_epsilons

    def attack(splits: bool):
        return _with_engine("linf_pgd", CountingEngine(pgd, splits))

    def run(engine_attack, **units):
        return evaluate_attack(net, images, labels, engine_attack, EPSILONS, batch_size=16, progress=False, **units)

    torch.manual_seed(0)
    whole = run(attack(False))  # one call per batch over all epsilons, as before units existed
    torch.manual_seed(0)
    split = run(attack(True))
    assert split["robust_accuracy_raw"] == whole["robust_accuracy_raw"]  # the same random starts, epsilon by epsilon

    units = {}

    class Preempted(Exception):
        pass

    def record(key, unit):
        units[key] = unit
        if len(units) == 5:
            raise Preempted

    torch.manual_seed(0)
    with pytest.raises(Preempted):
        run(attack(True), record=record)
    assert len(units) == 5  # 3 batches x 4 epsilons: the interrupted run finished 5 units
    torch.manual_seed(123)  # a new process, whose generator is elsewhere
    resumed_attack = attack(True)
    resumed = run(resumed_attack, finished=dict(units), record=units.__setitem__)
    assert resumed_attack.engine.calls == 12 - 5 and len(units) == 12
    assert resumed["robust_accuracy_raw"] == whole["robust_accuracy_raw"]
    assert resumed["robust_accuracy"] == whole["robust_accuracy"]


def _progress_totals(shown: str) -> set[int]:
    """The totals of the progress bars in ``shown`` (tqdm's ``done/total [``)."""
    return {int(total) for total in re.findall(r"\d+/(\d+) \[", shown)}


def test_attack_progress_counts_images_times_epsilons_times_restarts(trained, batch, capsys):
    """Issue 24 item 7: counted in batches of 500 images, a digits CNN's PGD showed ``0/1`` for half an hour."""
    net, _ = trained
    images, labels = batch
    attack = build_attack("linf_pgd", steps=2, restarts=2)
    evaluate_attack(net, images[:20], labels[:20], attack, [0.0, 0.1, 0.2], batch_size=8)
    shown = capsys.readouterr().err
    assert "linf_pgd, 20 images x 3 epsilons x 2 restarts" in shown
    assert _progress_totals(shown) == {20 * 3 * 2} and "img/s" in shown


def test_corruption_progress_counts_images(trained, tmp_path, capsys):
    net, _ = trained
    images, labels = load_arrays("digits", "unused", train=False)
    corruptions = ["brightness", "contrast"]
    write_corrupted_set(
        images[:6], labels[:6], tmp_path, dataset="digits", num_classes=10, corruptions=corruptions, progress=False
    )
    datamodule = CorruptedDataModule("generated", tmp_path, batch_size=4)
    corruption_accuracies(net, datamodule, torch.device("cpu"), {}, record=lambda name, accuracy: None)
    shown = capsys.readouterr().err
    assert "corrupted sets, 10 sets" in shown  # 2 corruptions x 5 severities
    assert _progress_totals(shown) == {6 * 10} and "img/s" in shown
