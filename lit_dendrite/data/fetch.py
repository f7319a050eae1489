"""Getting data sets onto disk before runs read them: whether a set is complete under a root, where it is published
with its checksums, and fetching it with those checked (``python launch/sweep.py fetch-data``).

A data set is named as a run or an ``evaluate:`` section names it: a clean set of
:data:`~lit_dendrite.data.datasets.DATASETS` under its ``data.root``, a released corrupted set (``mnist_c``,
``cifar10_c``, ``cifar100_c``) under its ``corruptions.root``, or ``generated`` with the generated set's own directory
as its root. Archives are downloaded next to the data and kept (as torchvision does), so that a later fetch verifies
them again; a set whose archive was removed is reported present but not verified.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lit_dendrite.data.corrupted import RELEASES, open_source
from lit_dendrite.data.datasets import DATASETS, data_files
from lit_dendrite.io import atomic_path

GENERATED = "generated"
NAMES = (*DATASETS, *RELEASES)
"""The data sets that can be named to fetch (a generated set is made from a sweep's runs, see :func:`fetch`)."""
EMBEDDED = ("digits",)
"""Data sets shipped with the package: always present, nothing to fetch."""
DOWNLOAD_TIMEOUT_S = 60
CHUNK = 1 << 20

Download = Callable[[str, Path], None]
"""Writes the file at a URL to a path (raising OSError when it cannot)."""


@dataclass(frozen=True)
class Archive:
    """A published file of a data set: its URLs (mirrors, tried in order), its published md5, and the folder under
    the root where it is saved and unpacked."""

    urls: tuple[str, ...]
    filename: str
    md5: str
    folder: str = ""

    def path(self, root: Path) -> Path:
        return root / self.folder / self.filename


def archives(name: str) -> tuple[Archive, ...]:
    """The published archives of the data set ``name`` with their md5s (torchvision's for the clean sets, the Zenodo
    records' for the corrupted ones); none for the embedded and generated sets."""
    from torchvision import datasets

    if name in ("mnist", "fashion_mnist"):
        cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
        folder = f"{cls.__name__}/raw"
        return tuple(Archive(tuple(m + f for m in cls.mirrors), f, md5, folder) for f, md5 in cls.resources)
    if name in ("cifar10", "cifar100"):
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        return (Archive((cls.url,), cls.filename, cls.tgz_md5),)
    if name in RELEASES:
        return (Archive((RELEASES[name].url,), RELEASES[name].filename, RELEASES[name].md5),)
    check_name(name)
    return ()


def file_checksums(name: str, root: Path) -> dict[Path, str]:
    """Published md5s of the unpacked files the loaders read (CIFAR's batches, as torchvision lists them)."""
    from torchvision import datasets

    if name not in ("cifar10", "cifar100"):
        return {}
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    return {root / cls.base_folder / f: md5 for f, md5 in [*cls.train_list, *cls.test_list]}


def check_name(name: str, known: tuple[str, ...] = (*NAMES, GENERATED)) -> None:
    """Raise, listing the names, unless ``name`` is one of ``known`` (default: every data set this module can find
    and fetch)."""
    if name not in known:
        raise ValueError(f"unknown data set {name!r}; choose one of {list(NAMES)}")


def files(name: str, root: str | Path) -> list[Path]:
    """Every file the runs read of ``name`` under ``root``; raises FileNotFoundError when a corrupted set's folder
    (or a generated set's metadata) is missing, ValueError when its metadata is malformed."""
    check_name(name)
    if name in DATASETS:
        return data_files(name, root, True) + data_files(name, root, False)
    source = open_source(name, root)
    return [path for corruption in source.corruptions for path in source.files(corruption)]


def missing(name: str, root: str | Path) -> str | None:
    """None when the data set ``name`` is complete under ``root`` (every file its readers open exists), else what is
    wrong, in a few words: the one check that decides whether a sweep may be submitted."""
    try:
        expected = files(name, root)
    except FileNotFoundError:
        return "missing"
    except ValueError as error:
        return f"unreadable: {error}"
    absent = [path for path in expected if not path.is_file()]
    if not absent:
        return None
    if len(absent) == len(expected):
        return "missing"
    return f"incomplete: {len(absent)} of {len(expected)} files missing, e.g. {absent[0]}"


def md5(path: Path) -> str:
    """The md5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)  # a checksum, not security: allowed on FIPS systems too
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_problems(name: str, root: Path) -> tuple[list[str], int]:
    """(the files whose md5 differs from the published one, the number of files checked): the unpacked files that
    have published md5s, and the archives still on disk."""
    expected = file_checksums(name, root) | {a.path(root): a.md5 for a in archives(name) if a.path(root).is_file()}
    wrong = [f"{path}: md5 {found}, published {md5sum}" for path, md5sum in expected.items()
             if path.is_file() and (found := md5(path)) != md5sum]  # fmt: skip
    return wrong, sum(path.is_file() for path in expected)


@dataclass(frozen=True)
class Step:
    """What fetching one data set does: ``action`` is ``present`` (nothing to do), ``fetch`` (download, check,
    unpack) or ``generate`` (the local generator); ``detail`` says what was verified or where it comes from."""

    name: str
    root: Path
    action: str
    detail: str

    @property
    def line(self) -> str:
        """The step as a person reads it."""
        return f"{self.name} under {self.root}: {self.action} ({self.detail})"


def plan(name: str, root: str | Path, made_from: str | None = None, clean_root: str | Path = "data") -> Step:
    """What :func:`fetch` would do for ``name`` under ``root`` (``made_from`` under ``clean_root``: the clean set a
    generated set is made from); a present set's published checksums are verified here. Raises ValueError, naming
    the files and the fix, when a present file's checksum differs."""
    root = Path(root).resolve()
    problem = missing(name, root)
    if problem is None:
        if name in EMBEDDED:
            return Step(name, root, "present", "embedded in the package")
        if name == GENERATED:
            return Step(name, root, "present", "generated here; no published checksum")
        wrong, checked = checksum_problems(name, root)
        if wrong:
            raise ValueError(
                f"data set {name!r} under {root}: checksum mismatch: {'; '.join(wrong)}. The file is corrupt or "
                "another version: delete it (and the files unpacked from it) and fetch again"
            )
        if checked:
            return Step(name, root, "present", f"verified: {checked} file(s) match their published md5")
        return Step(name, root, "present", "not verified: its archive was removed, and no checksum of the unpacked "
                    "files is published")  # fmt: skip
    if problem.startswith("unreadable"):
        raise ValueError(f"data set {name!r} under {root}: {problem}")
    if name == GENERATED:
        if made_from is None:
            raise ValueError(f"the generated set {root} is {problem} and no run says which data set to make it from")
        return Step(name, root, "generate", f"{problem}: {generate_command(made_from, root, clean_root)}")
    sources = ", ".join(a.urls[0] for a in archives(name))
    return Step(name, root, "fetch", f"{problem}: from {sources} (md5 checked)")


def generate_command(made_from: str, out: Path, clean_root: str | Path) -> str:
    """The command that generates a corrupted set of ``made_from``'s test images into ``out``."""
    return f"python -m lit_dendrite.data.corrupt --dataset {made_from} --root {clean_root} --out {out}"


def download_url(url: str, path: Path) -> None:
    """Download ``url`` to ``path`` atomically (a stopped download leaves nothing behind)."""
    with (
        urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        atomic_path(path) as tmp,
        open(tmp, "wb") as handle,
    ):
        shutil.copyfileobj(response, handle, CHUNK)


def fetch_archive(archive: Archive, root: Path, download: Download, echo: Callable[[str], None]) -> Path:
    """The archive under ``root``, downloaded unless a copy with the published md5 is there already; a download
    with another md5 is deleted and raises ValueError."""
    path = archive.path(root)
    if path.is_file() and md5(path) == archive.md5:
        echo(f"  {path}: present, md5 verified")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in archive.urls:
        echo(f"  downloading {url} -> {path}")
        try:
            download(url, path)
            break
        except OSError as error:
            errors.append(f"{url}: {error}")
    else:
        raise OSError(f"could not download {archive.filename}: {'; '.join(errors)}")
    found = md5(path)
    if found != archive.md5:
        path.unlink()
        raise ValueError(
            f"{archive.filename} downloaded from {url} has md5 {found}, but {archive.md5} is published; the download "
            "was deleted. Run the command again (a proxy or a truncated transfer changes the file)"
        )
    echo(f"  {path}: md5 {found} verified")
    return path


def unpack(archive: Path, into: Path) -> None:
    """Unpack a .zip, .tar(.gz) or .gz file into the folder ``into`` (tar members outside it are refused)."""
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(into)
    elif archive.suffix == ".gz" and not archive.name.endswith(".tar.gz"):
        with gzip.open(archive, "rb") as source, atomic_path(into / archive.stem) as tmp, open(tmp, "wb") as target:
            shutil.copyfileobj(source, target, CHUNK)
    else:
        with tarfile.open(archive) as handle:
            handle.extractall(into, filter="data")


def fetch(
    name: str,
    root: str | Path,
    made_from: str | None = None,
    clean_root: str | Path = "data",
    download: Download = download_url,
    echo: Callable[[str], None] = print,
) -> Step:
    """Make the data set ``name`` complete under ``root``: download its archives, check their published md5s, unpack
    them (a generated set: run the generator on ``made_from``'s test images under ``clean_root``). Returns what was
    planned; raises when the set is still incomplete afterwards."""
    step = plan(name, root, made_from, clean_root)
    echo(step.line)
    if step.action == "present":
        return step
    if step.action == "generate":
        from lit_dendrite.data.corrupt import main as generate

        generate(["--dataset", str(made_from), "--root", str(clean_root), "--out", str(step.root)])
    else:
        for archive in archives(name):
            path = fetch_archive(archive, step.root, download, echo)
            echo(f"  unpacking {path.name} into {path.parent}")
            unpack(path, path.parent)
    if problem := missing(name, step.root):
        raise ValueError(f"data set {name!r} under {step.root} is still {problem} after fetching; report this")
    return step
