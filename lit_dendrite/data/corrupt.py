"""Generate corrupted test sets in the CIFAR-10-C layout for data sets that have no released one.

    python -m lit_dendrite.data.corrupt --dataset NAME --root DIR --out DIR [--seed S] [--corruptions ...] [--n N]

NAME is digits, mnist, fashion_mnist, cifar10, cifar100 (their test split, via `load_arrays`) or `imagefolder:PATH`.
Writes `<out>/<corruption>.npy` uint8 (5N, H, W, C) with severities 1..5 in blocks of N, `<out>/labels.npy` (5N,)
and `<out>/metadata.json`; `CorruptedDataModule("generated", out)` reads it. The 19 corruptions (15 benchmark + 4
extra) come from `imagecorruptions` (the ImageNet-C parameters, not CIFAR-10-C's retuned ones).

Determinism: each image gets its own seed, drawn by `numpy.random.SeedSequence` from (seed, the corruption's index in
`imagecorruptions`' list, image index), the same at every severity (common random numbers: severity 4 of an image is
severity 3's noise, frost crop or displacement field made stronger, not a fresh draw). It seeds numpy's global
generator, which most corruptions draw from, and is passed as `seed=` to glass_blur and impulse_noise, which use their
own generators. A set therefore depends only on the seed and the clean images, not on the corruptions chosen, `--n`,
or the order of work.

Small images: `imagecorruptions` rejects sides under 32 pixels. Such an image is enlarged, keeping its aspect ratio,
until its shorter side is 32, by nearest-neighbour resizing (torchvision's NEAREST_EXACT), corrupted, and shrunk back
the same way. For a clean image this round trip is exact (each original pixel is copied, then one of its copies is
picked back), and per-pixel noise keeps its strength (nothing is averaged). Spatial parameters (blur radii,
pixelation, zoom) act on the enlarged image, so they are 32/side times weaker relative to the original (digits and
MNIST: 32/28).

Grayscale: the channel is replicated to RGB, corrupted, and turned back by luminance (ITU-R 601 weights, rounded),
exact for gray images; per-channel noise is averaged by it, so its standard deviation shrinks to about 2/3, and
`saturate` leaves gray images unchanged at severities 1-3 (it scales a saturation of zero).

An interrupted run resumes: finished corruption files are kept when the arguments match those in metadata.json.
"""

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from imagecorruptions import corruption_dict, get_corruption_names
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F
from tqdm import tqdm

from lit_dendrite.commandline import argument_parser, directory, positive_int
from lit_dendrite.data.corrupted import LABELS_FILE, METADATA_FILE, SEVERITIES, read_metadata
from lit_dendrite.errors import DataError, MissingFile, run_command
from lit_dendrite.io import atomic_path, write_json_atomic

CORRUPTIONS = tuple(get_corruption_names("all"))
MIN_SIDE = 32
COMMAND = "python -m lit_dendrite.data.corrupt"
LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float64)
_OWN_SEED = ("glass_blur", "impulse_noise")


def image_seed(seed: int, corruption: str, index: int) -> int:
    """The seed of one image's corruption, shared by its five severities (see the module docstring)."""
    return int(np.random.SeedSequence([seed, CORRUPTIONS.index(corruption), index]).generate_state(1)[0])


def _resize_nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    tensor = torch.tensor(image).permute(2, 0, 1)
    resized = F.resize(tensor, list(size), interpolation=InterpolationMode.NEAREST_EXACT, antialias=False)
    return resized.permute(1, 2, 0).numpy()


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """Corrupt one uint8 (H, W, C) image, C = 1 or 3, of any size; returns the same shape and dtype. numpy's global
    generator is seeded with `seed` for the call and restored afterwards."""
    height, width, channels = image.shape
    scale = MIN_SIDE / min(height, width)
    rgb = np.repeat(image, 3, axis=2) if channels == 1 else np.ascontiguousarray(image)
    if scale > 1:
        rgb = _resize_nearest(rgb, (math.ceil(height * scale), math.ceil(width * scale)))
    extra = {"seed": seed} if corruption in _OWN_SEED else {}
    caller_state = np.random.get_state()
    np.random.seed(seed)
    try:
        with np.errstate(invalid="ignore"):
            out = np.asarray(corruption_dict[corruption](Image.fromarray(rgb), severity, **extra), dtype=np.float64)
    finally:
        np.random.set_state(caller_state)
    # spatter divides by the maximum of its water layer, 0/0 when no drop reaches the threshold (about 3% of 32x32
    # images at severity 1): nothing is spattered then, so the clean pixel is the right value, not NaN cast to 0.
    out = np.where(np.isnan(out), rgb, out)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if scale > 1:
        out = _resize_nearest(out, (height, width))
    if channels == 1:
        out = np.clip(np.rint(out @ LUMINANCE), 0, 255).astype(np.uint8)[..., None]
    return out


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def _check_inputs(images: np.ndarray, labels: np.ndarray, num_classes: int, corruptions: Sequence[str]) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3) or not len(images):
        raise DataError(f"expected uint8 images (N, H, W, 1 or 3) with N > 0, found {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"expected {len(images)} integer labels of shape (N,), found {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"expected labels in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown or not corruptions:
        raise DataError(f"unknown corruptions {unknown}; valid: {', '.join(CORRUPTIONS)}")
    if images.shape[3] == 1 and "saturate" in corruptions:
        raise DataError("saturate leaves grayscale images unchanged at severities 1-3; leave it out for gray images")


def default_corruptions(images: np.ndarray) -> tuple[str, ...]:
    """All 19 corruptions, without saturate for grayscale (N, H, W, 1) images."""
    return tuple(c for c in CORRUPTIONS if images.shape[3] == 3 or c != "saturate")


def write_corrupted_set(
    images: np.ndarray,
    labels: np.ndarray,
    out: str | Path,
    *,
    dataset: str,
    num_classes: int,
    corruptions: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Corrupt uint8 (N, H, W, C) images at severities 1..5 and write them to `out` in the CIFAR-10-C layout
    (all corruptions of `default_corruptions` if None)."""
    corruptions = default_corruptions(images) if corruptions is None else corruptions
    _check_inputs(images, labels, num_classes, corruptions)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(images.tobytes() + labels.astype(np.int64).tobytes()).hexdigest()
    metadata = {
        "dataset": dataset,
        "corruptions": list(dict.fromkeys(corruptions)),
        "severities": list(SEVERITIES),
        "images_per_severity": len(images),
        "image_shape": list(images.shape[1:]),
        "num_classes": num_classes,
        "seed": seed,
        "clean_sha256": digest,
        "generator": "lit_dendrite.data.corrupt with imagecorruptions (see its docstring for seeding and resizing)",
    }
    done = _resumable(out, metadata)
    metadata["corruptions"] = list(dict.fromkeys([*done, *metadata["corruptions"]]))
    write_json_atomic(out / METADATA_FILE, metadata)
    _write_npy(out / LABELS_FILE, np.tile(labels.astype(np.int64), len(SEVERITIES)))
    todo = [c for c in metadata["corruptions"] if c not in done]
    bar = tqdm(total=len(todo) * len(SEVERITIES) * len(images), unit="img", desc="corrupting", disable=not progress)
    for corruption in todo:
        bar.set_postfix_str(corruption)
        with atomic_path(out / f"{corruption}.npy") as tmp:
            _write_corruption(tmp, images, corruption, seed, bar)
    bar.close()
    return out


def _write_corruption(path: Path, images: np.ndarray, corruption: str, seed: int, bar: tqdm) -> None:
    """Write the five severity blocks of one corruption to a .npy file through a memory map."""
    count = len(images)
    corrupted = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.uint8, shape=(len(SEVERITIES) * count, *images.shape[1:])
    )
    for block, severity in enumerate(SEVERITIES):
        for index, image in enumerate(images):
            corrupted[block * count + index] = corrupt_image(
                image, corruption, severity, image_seed(seed, corruption, index)
            )
            bar.update()
    corrupted.flush()


def _resumable(out: Path, metadata: dict) -> list[str]:
    """Corruptions already written in `out` by a run with the same arguments; an error if `out` holds another set."""
    path = out / METADATA_FILE
    if not path.is_file():
        return []
    try:
        previous = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})", f"choose another --out or delete {out}") from None
    if not isinstance(previous, dict):
        raise DataError(f"{path}: holds {type(previous).__name__}, not a set's metadata", f"delete {out}")
    differing = [k for k in metadata if k != "corruptions" and previous.get(k) != metadata[k]]
    if differing:
        raise DataError(
            f"{out} already holds a corrupted set made with other {differing}; choose another --out or delete {out}"
        )
    return [c for c in previous.get("corruptions", []) if (out / f"{c}.npy").is_file()]


def load_source_images(dataset: str, root: str | Path, size: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Clean test images uint8 (N, H, W, C), labels and class count of a named set or of `imagefolder:PATH`."""
    kind, _, folder = dataset.partition(":")
    if kind == "imagefolder":
        return _load_image_folder(Path(folder), size)
    if size is not None:
        raise DataError("--size applies to imagefolder:PATH only; named data sets keep their own size")
    from lit_dendrite.data.datasets import dataset_spec, load_arrays

    num_classes = dataset_spec(dataset).num_classes
    images, labels = load_arrays(dataset, root, train=False)
    return images, labels, num_classes


def _load_image_folder(folder: Path, size: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Every image of an ImageFolder tree (class folders of images) as RGB, resized and centre-cropped if `size`."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    if not folder.is_dir():
        raise MissingFile(f"{folder}: not a directory; pass imagefolder:PATH with PATH/<class>/<image> files")
    steps = [v2.PILToTensor()] + ([v2.Resize(size), v2.CenterCrop(size)] if size else [])
    try:
        data = ImageFolder(str(folder), transform=v2.Compose(steps))
    except FileNotFoundError as error:
        raise MissingFile(f"{folder}: no images in class folders ({error})") from error
    tensors = []
    for index, (path, _) in enumerate(data.samples):
        tensor = data[index][0]
        if tensors and tensor.shape != tensors[0].shape:
            raise DataError(
                f"{path}: size {tuple(tensor.shape[1:])} differs from {data.samples[0][0]}'s "
                f"{tuple(tensors[0].shape[1:])}; pass --size S to resize and centre-crop all images to S x S"
            )
        tensors.append(tensor)
    images = np.stack([t.permute(1, 2, 0).numpy() for t in tensors])
    return images, np.array(data.targets, dtype=np.int64), len(data.classes)


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point; returns the output directory (a bad input: a short error, see
    :func:`lit_dendrite.errors.run_command`)."""
    return run_command(lambda: generate(argv), COMMAND)


def generate(argv: Sequence[str] | None) -> Path:
    """Parse the arguments and write the corrupted set."""
    parser = argument_parser(COMMAND, __doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help="digits|mnist|fashion_mnist|cifar10|cifar100|imagefolder:PATH")
    parser.add_argument("--root", default="data", help="folder holding the clean data sets (default: data)")
    parser.add_argument("--out", type=directory, required=True, help="output directory of the corrupted set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--corruptions", nargs="+", choices=CORRUPTIONS, metavar="NAME", help="default: all (without saturate if gray)"
    )
    parser.add_argument("--n", type=positive_int, default=None, help="corrupt only the first N test images")
    parser.add_argument(
        "--size", type=positive_int, default=None, help="imagefolder only: resize and centre-crop to S x S"
    )
    args = parser.parse_args(argv)
    images, labels, num_classes = load_source_images(args.dataset, args.root, args.size)
    if args.n is not None:
        images, labels = images[: args.n], labels[: args.n]
    out = write_corrupted_set(
        images,
        labels,
        args.out,
        dataset=args.dataset,
        num_classes=num_classes,
        corruptions=args.corruptions,
        seed=args.seed,
    )
    count = len(read_metadata(out)["corruptions"])
    print(f"wrote {count} corruptions x {len(SEVERITIES)} severities x {len(images)} images to {out}")
    return out


if __name__ == "__main__":
    main()
