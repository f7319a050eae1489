"""The data sets a sweep's jobs read: a submission refuses when one is missing where a job will read it, and
`sweep.py fetch-data` plans and fetches them with the published md5s checked (downloads injected: tests never
download)."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import load_launcher

from lit_dendrite.data.corrupted import MNIST_C_CORRUPTIONS, MNIST_C_IDENTITY, RELEASES, Release
from lit_dendrite.data.fetch import fetch, missing, plan, unpack
from lit_dendrite.sweeps.cluster import ClusterConfig
from lit_dendrite.sweeps.launch import submit_sweep
from lit_dendrite.sweeps.plan import RunData, data_needs, missing_data, refusal
from lit_dendrite.sweeps.spec import SweepError, load_sweep

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "configs" / "experiment"
SWEEPS = REPO / "configs" / "sweep"


def test_a_submission_refuses_when_a_runs_clean_data_set_is_missing_where_its_job_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)  # data.root is `data`, read from the directory the sweep is submitted from
    path = tmp_path / "mnist.yaml"
    spec = {"experiments": [str(EXPERIMENTS / "mlp_mnist_relu.yaml"), str(EXPERIMENTS / "mlp_digits_relu.yaml")],
            "seeds": [1, 2], "overrides": {"trainer.max_epochs": 1}}  # fmt: skip
    path.write_text(yaml.safe_dump(spec))
    message = (
        rf"1 data set\(s\) missing where the jobs will read them; nothing was submitted:\n"
        rf"  mnist \(clean, read by 2 run\(s\)\) under {tmp_path / 'data'}: missing\n"
        rf"fetch them first .*: python launch/sweep\.py fetch-data --sweep mnist\.yaml$"
    )
    with pytest.raises(SweepError, match=message):
        submit_sweep(load_sweep(path), "local", ClusterConfig(), tmp_path / "runs", echo=lambda _: None)
    assert not (tmp_path / "runs").exists()
    launcher = load_launcher()
    with pytest.raises(SystemExit) as stopped:
        launcher.main(["--sweep", str(path), "--cluster", "local", "--out", str(tmp_path / "runs")])
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert "error: 1 data set(s) missing" in captured.err and "digits" not in captured.err
    assert not (tmp_path / "runs").exists()


def test_fetch_data_plans_each_data_set_of_a_sweep_where_its_jobs_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    launcher = load_launcher()
    downloads = []
    assert launcher.fetch_main(["--sweep", str(SWEEPS / "paper.yaml"), "--dry-run"], download=downloads.append) == 0
    lines = capsys.readouterr().out.splitlines()
    data = tmp_path / "data"
    assert lines == [
        f"mnist under {data}: fetch (missing: from https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-"
        "ubyte.gz, https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz, https://ossci-datasets"
        ".s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz, https://ossci-datasets.s3.amazonaws.com/mnist/t10k-"
        "labels-idx1-ubyte.gz (md5 checked))",
        f"cifar10 under {data}: fetch (missing: from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
        "(md5 checked))",
        f"mnist_c under {data}: fetch (missing: from https://zenodo.org/records/3239543/files/mnist_c.zip "
        "(md5 checked))",
        f"cifar10_c under {data}: fetch (missing: from https://zenodo.org/records/2535967/files/CIFAR-10-C.tar "
        "(md5 checked))",
    ]
    # the digits reproduction: its clean set is embedded, its corrupted set is made by the local generator
    assert launcher.fetch_main(["--sweep", str(SWEEPS / "digits_repro.yaml"), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"digits under {data}: present (embedded in the package)",
        f"generated under {data / 'digits_c'}: generate (missing: python -m lit_dendrite.data.corrupt --dataset "
        f"digits --root {data} --out {data / 'digits_c'})",
    ]
    assert downloads == [] and not data.exists()
    assert launcher.fetch_main(["mnist_d"]) == 2
    assert "unknown data set 'mnist_d'; choose one of ['digits', 'mnist'," in capsys.readouterr().err


def mnist_c_archive(directory: Path) -> Path:
    """A small zip in MNIST-C's published layout: mnist_c/<corruption>/test_{images,labels}.npy."""
    rng = np.random.default_rng(0)
    archive = directory / "mnist_c.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for corruption in (MNIST_C_IDENTITY, *MNIST_C_CORRUPTIONS):
            for name, array in (("test_images.npy", rng.integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)),
                                ("test_labels.npy", np.arange(4, dtype=np.int64))):  # fmt: skip
                npy = directory / name
                np.save(npy, array)
                handle.write(npy, f"mnist_c/{corruption}/{name}")
    return archive


def test_fetch_checks_the_published_md5_unpacks_and_verifies_what_is_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    published = mnist_c_archive(tmp_path)
    md5 = hashlib.md5(published.read_bytes()).hexdigest()
    monkeypatch.setitem(RELEASES, "mnist_c", Release("https://zenodo.invalid/records/1/files/mnist_c.zip", md5))
    urls = []

    def download(url: str, path: Path) -> None:
        urls.append(url)
        path.write_bytes(published.read_bytes())

    root = tmp_path / "data"
    assert plan("mnist_c", root).action == "fetch" and missing("mnist_c", root) == "missing"
    fetch("mnist_c", root, download=download, echo=lambda _: None)
    assert urls == ["https://zenodo.invalid/records/1/files/mnist_c.zip"] and missing("mnist_c", root) is None
    assert (root / "mnist_c" / "shear" / "test_images.npy").is_file()
    assert plan("mnist_c", root).detail == "verified: 1 file(s) match their published md5"
    fetch("mnist_c", root, download=download, echo=lambda _: None)
    assert len(urls) == 1  # present and verified: nothing downloaded again

    (root / "mnist_c.zip").write_bytes(published.read_bytes() + b"x")  # a damaged or other archive
    with pytest.raises(ValueError, match=rf"checksum mismatch: {root / 'mnist_c.zip'}: md5 [0-9a-f]{{32}}, "
                                         rf"published {md5}\. .*delete it"):  # fmt: skip
        plan("mnist_c", root)
    (root / "mnist_c.zip").unlink()
    assert plan("mnist_c", root).detail.startswith("not verified: its archive was removed")

    (root / "mnist_c" / "shear" / "test_labels.npy").unlink()
    assert missing("mnist_c", root).startswith("incomplete: 1 of 32 files missing")

    def truncated(url: str, path: Path) -> None:
        path.write_bytes(published.read_bytes()[:1000])

    with pytest.raises(ValueError, match=rf"mnist_c.zip downloaded from .* has md5 [0-9a-f]{{32}}, but {md5} is "
                                         "published; the download was deleted"):  # fmt: skip
        fetch("mnist_c", root, download=truncated, echo=lambda _: None)
    assert not (root / "mnist_c.zip").exists()

    launcher = load_launcher()  # the command: a named set into --root, downloads injected
    assert launcher.fetch_main(["mnist_c", "--root", str(root)], download=download) == 0
    out = capsys.readouterr().out
    assert f"mnist_c under {root}: fetch (incomplete: 1 of 32 files missing" in out
    assert f"{root / 'mnist_c.zip'}: md5 {md5} verified" in out and missing("mnist_c", root) is None


def test_runs_that_download_their_data_set_are_not_refused_but_the_plan_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "download.yaml"
    spec = {"experiments": [str(EXPERIMENTS / "mlp_mnist_relu.yaml")], "seeds": [1],
            "overrides": {"data.download": True, "data.root": "shared"}}  # fmt: skip
    path.write_text(yaml.safe_dump(spec))
    lines = []
    submit_sweep(load_sweep(path), "slurm", ClusterConfig(), tmp_path / "runs", dry_run=True, echo=lines.append)
    shown = rf"  mnist +clean +1 runs  {tmp_path / 'shared'}  missing \(each job downloads it: data.download true\)"
    assert any(re.fullmatch(shown, line) for line in lines), lines
    assert not any("fetch-data" in line for line in lines)
    needs = data_needs({"a": RunData("mnist", "shared", download=True)}, None)
    assert refusal(missing_data(needs), path) is None


def test_unpacking_writes_gz_members_beside_the_archive_and_refuses_tar_members_outside_the_folder(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(b"labels")
    unpack(raw / "t10k-labels-idx1-ubyte.gz", raw)
    assert (raw / "t10k-labels-idx1-ubyte").read_bytes() == b"labels"
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as handle:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 4
        handle.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(tarfile.OutsideDestinationError):
        unpack(archive, tmp_path / "into")
    assert not (tmp_path / "outside.txt").exists()
