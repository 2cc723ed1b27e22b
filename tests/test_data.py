"""Data sets: the procedural one, Fashion-MNIST from Debian's package, the host's ImageNet."""

import gzip
import inspect
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from sagan_plugin import host
from sagan_plugin.config import compose, compose_data
from sagan_plugin.data import (
    DEBIAN_FASHION_MNIST,
    HOST_FOLDERS,
    ProceduralShapes,
    build_dataloader,
    build_dataset,
    square_crop_transform,
)
from sagan_plugin.errors import UsageError


def test_procedural_is_deterministic_balanced_and_in_range() -> None:
    data = ProceduralShapes(size=40, resolution=32, num_classes=10)
    first = [data[i] for i in range(len(data))]
    again = ProceduralShapes(size=40, resolution=32, num_classes=10)
    for (image, label), i in zip(first, range(40), strict=True):
        assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1
        assert label == i % 10
        assert torch.equal(image, again[i][0])
    # Different classes differ in colour and shape: class means are far apart.
    means = torch.stack([torch.stack([first[i][0] for i in range(k, 40, 10)]).mean(0)
                         for k in range(10)])
    assert torch.cdist(means.flatten(1), means.flatten(1)).fill_diagonal_(99).min() > 1


def test_dataloader_drops_last_and_refuses_tiny_sets() -> None:
    loader = build_dataloader(ProceduralShapes(10, 32, 2), batch_size=4, num_workers=0)
    assert [len(x) for x, _ in loader] == [4, 4]
    with pytest.raises(UsageError, match="fewer than one batch"):
        build_dataloader(ProceduralShapes(3, 32, 2), batch_size=4, num_workers=0)


def test_a_data_set_of_exactly_one_batch_is_enough() -> None:
    loader = build_dataloader(ProceduralShapes(4, 32, 2), batch_size=4, num_workers=0)
    assert [len(x) for x, _ in loader] == [4]


needs_debian_package = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (make data installs it)")


@needs_debian_package
@pytest.mark.parametrize("fit", ["pad", "resize"])
def test_fashion_mnist_from_debian_package(tmp_path: Path, monkeypatch, fit: str) -> None:
    monkeypatch.setenv("SAGAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # no ./datasets here
    cfg = compose(["data=fashion_mnist", f"data.fit={fit}"])
    data = build_dataset(cfg.data)
    assert len(data) == 60000 and cfg.model.num_classes == 10
    image, label = data[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 10
    assert image.min() >= -1 and image.max() <= 1
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey as RGB
    if fit == "pad":  # a 2-pixel frame of background around the 28x28 picture
        assert torch.all(image[:, :2, :] == -1) and torch.all(image[:, :, -2:] == -1)
    assert sorted({data.targets[i].item() for i in range(0, 60000, 97)}) == list(range(10))


@needs_debian_package
def test_fashion_mnist_from_a_root_with_gzip_files(tmp_path: Path, monkeypatch) -> None:
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in DEBIAN_FASHION_MNIST.glob("t*-idx*-ubyte.gz"):
        shutil.copy(path, raw / path.name)
    monkeypatch.setenv("SAGAN_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose(["data=fashion_mnist", f"data.root={tmp_path / 'data'}", "data.split=test"])
    data = build_dataset(cfg.data)
    assert len(data) == 10000
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz") as f:
        assert data[0][1] == f.read()[8]  # the idx label file's first label
    assert len(list((tmp_path / "cache").glob("fashion_mnist/*/FashionMNIST/raw/"
                                              "t10k-labels-idx1-ubyte"))) == 1


def _idx(source: Path, count: int, start: int = 0) -> bytes:
    """Items start to start + count of a gzip idx file (images or labels), as an idx file."""
    with gzip.open(source) as f:
        data = f.read()
    header = 16 if data[3] == 3 else 8  # idx3 (images): 4 ints; idx1 (labels): 2
    item = 28 * 28 if header == 16 else 1
    return (data[:4] + count.to_bytes(4, "big") + data[8:header]
            + data[header + start * item:header + (start + count) * item])


def _idx_gz(source: Path, target: Path, count: int) -> None:
    target.write_bytes(gzip.compress(_idx(source, count)))


@needs_debian_package
def test_each_data_root_with_gzip_files_is_read_from_its_own_files(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """Unpacked copies are cached per source folder: a second data.root with other gzip files
    is not served the first one's images (nor Debian's, unpacked before it)."""
    monkeypatch.setenv("SAGAN_CACHE_DIR", str(tmp_path / "cache"))
    sizes = {}
    for root, count in (("first", 300), ("second", 200)):
        raw = tmp_path / root / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for kind in ("images-idx3", "labels-idx1"):
            for split in ("train", "t10k"):
                _idx_gz(DEBIAN_FASHION_MNIST / f"t10k-{kind}-ubyte.gz",
                        raw / f"{split}-{kind}-ubyte.gz", count)
        sizes[root] = len(build_dataset(compose_data(
            "fashion_mnist", {"root": str(tmp_path / root)})))
    assert sizes == {"first": 300, "second": 200}


@needs_debian_package
def test_a_data_root_without_fashion_mnist_is_refused_not_replaced(tmp_path: Path) -> None:
    """Debian's copy is the fallback of an unset data.root only: config.yaml records the root,
    and a run must have read what it says."""
    cfg = compose(["data=fashion_mnist", f"data.root={tmp_path / 'empty'}"])
    with pytest.raises(UsageError, match=re.escape(
            f"Fashion-MNIST not found: expected {tmp_path / 'empty'}/FashionMNIST/raw/"
            "train-images-idx3-ubyte[.gz] (and the other three idx files), or leave data.root "
            "unset to use Debian's dataset-fashion-mnist")):
        build_dataset(cfg.data)


@needs_debian_package
def test_real_statistics_follow_fashion_mnist_files_replaced_in_place(tmp_path: Path) -> None:
    """The FID cache knows Fashion-MNIST by its idx files' contents: files of other images,
    of the very same size, under the same data.root get their own statistics."""
    from test_folder_data import _FakeExtractor

    from sagan_plugin.metrics.real_stats import real_features

    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for kind in ("images-idx3", "labels-idx1"):
        for split in ("train", "t10k"):
            (raw / f"{split}-{kind}-ubyte").write_bytes(
                _idx(DEBIAN_FASHION_MNIST / f"t10k-{kind}-ubyte.gz", 20))
    cfg, extractor = compose_data("fashion_mnist", {"root": str(raw.parents[1])}), _FakeExtractor()

    def cached() -> Path:
        return real_features(cfg, build_dataset(cfg), 4, extractor, tmp_path / "cache")[1]

    first = cached()
    assert cached() == first and extractor.calls == 1
    (raw / "train-images-idx3-ubyte").write_bytes(
        _idx(DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz", 20, start=20))
    assert cached() != first and extractor.calls == 2


def _fake_imagenet(root: Path, wnids: list[str], per_class: int) -> None:
    """ImageNet's on-disk layout as Mimicry reads it: meta.bin and train/<wnid>/*.JPEG."""
    from PIL import Image

    folder = root / "imagenet"
    for k, wnid in enumerate(wnids):
        (folder / "train" / wnid).mkdir(parents=True)
        for i in range(per_class):
            colour = (40 * k, 255 - 40 * k, 17 * i)
            Image.new("RGB", (256, 240), colour).save(folder / "train" / wnid / f"{i}.JPEG")
    torch.save(({w: (f"class {w}",) for w in wnids}, wnids), folder / "meta.bin")


def test_host_imagenet_loader_reads_the_standard_layout(tmp_path: Path) -> None:
    _fake_imagenet(tmp_path, ["n01440764", "n01443537"], per_class=3)
    cfg = compose(["data=imagenet_128", f"data.root={tmp_path}"])
    assert cfg.model.num_classes == 1000 and cfg.train.batch_size == 256
    data = build_dataset(cfg.data)
    assert len(data) == 6
    image, label = data[4]
    assert image.shape == (3, 128, 128) and label == 1
    assert -1 <= image.min() and image.max() <= 1


def test_host_data_sets_are_known_to_the_fid_cache_by_their_files(tmp_path: Path) -> None:
    """A host data set's fingerprint (the real-image statistics' cache key) follows its files'
    names and sizes under data.root: a file replaced by another image changes it."""
    from PIL import Image

    _fake_imagenet(tmp_path, ["n01440764"], per_class=2)
    cfg = compose(["data=imagenet_128", f"data.root={tmp_path}"]).data
    first = build_dataset(cfg).fingerprint()
    assert build_dataset(cfg).fingerprint() == first
    Image.new("RGB", (300, 200), (9, 9, 9)).save(tmp_path / "imagenet/train/n01440764/1.JPEG")
    assert build_dataset(cfg).fingerprint() != first


def test_a_host_data_sets_fingerprint_reads_through_a_linked_folder(tmp_path: Path) -> None:
    """data.root/imagenet/train a link to the images elsewhere, as the loader follows it."""
    from PIL import Image

    _fake_imagenet(tmp_path / "store", ["n01440764"], per_class=2)
    (tmp_path / "root" / "imagenet").mkdir(parents=True)
    shutil.move(tmp_path / "store/imagenet/meta.bin", tmp_path / "root/imagenet/meta.bin")
    (tmp_path / "root/imagenet/train").symlink_to(tmp_path / "store/imagenet/train")
    cfg = compose(["data=imagenet_128", f"data.root={tmp_path / 'root'}"]).data
    data = build_dataset(cfg)
    first = data.fingerprint()
    assert len(data) == 2
    Image.new("RGB", (300, 200), (9, 9, 9)).save(tmp_path / "store/imagenet/train/n01440764/1.JPEG")
    assert build_dataset(cfg).fingerprint() != first


def test_a_fingerprint_is_the_hash_that_cached_statistics_are_keyed_by(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sha256 of "name under root, NUL, size" per file, in sorted depth-first order, hidden
    files left out, -1 for one that cannot be read: the key of every cache written so far, so
    a faster walk must give the same hash, from a folder named by any path."""
    import hashlib

    from sagan_plugin.files import files_fingerprint, walk_files
    from sagan_plugin.image_folder import FolderImages

    root = tmp_path / "images"
    for name, size in [("b/2.png", 3), ("b/10.png", 7), ("a/x/1.png", 5), ("0.png", 1),
                       (".hidden.png", 2), ("a/.cache/9.png", 4)]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\0" * size)
    (root / "b/gone.png").symlink_to(root / "nowhere.png")
    lines = ["0.png\x001", "a/x/1.png\x005", "b/10.png\x007", "b/2.png\x003", "b/gone.png\x00-1"]
    expected = hashlib.sha256("".join(f"{line}\n" for line in lines).encode()).hexdigest()

    assert files_fingerprint(root, walk_files(root)) == expected
    monkeypatch.chdir(tmp_path)  # a relative root, and files named other than under it
    for spelling in ("./images", "images//", "images/.", "images/"):
        assert files_fingerprint(Path(spelling), walk_files(spelling)) == expected, spelling
        assert files_fingerprint(Path("images"), walk_files(spelling)) == expected, spelling
    assert files_fingerprint(Path("images"), map(Path, walk_files("images"))) == expected
    images = FolderImages.__new__(FolderImages)
    images.root, images.files = Path("images"), list(walk_files("images"))
    assert images.fingerprint() == expected


def test_host_data_set_with_a_wrong_resolution_is_refused(tmp_path: Path) -> None:
    (tmp_path / "imagenet").mkdir()
    cfg = OmegaConf.create({"name": "imagenet_32", "root": str(tmp_path), "resolution": 64,
                            "num_classes": 1000, "split": "train"})
    with pytest.raises(UsageError, match="imagenet_32 is 32x32"):
        build_dataset(cfg)


def test_host_imagenet_128_items_are_the_largest_centred_square_of_each_file(
        tmp_path: Path) -> None:
    """data.crop=square (imagenet_128's default) replaces the host's 224-pixel centre crop with
    the reference's largest centred square, resized bilinearly; data.crop=mimicry keeps it."""
    from PIL import Image

    _fake_imagenet(tmp_path, ["n01440764"], per_class=1)
    file = tmp_path / "imagenet" / "train" / "n01440764" / "0.JPEG"
    pixels = torch.randint(0, 256, (240, 320, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.numpy()).save(file)  # not square, and different everywhere
    with Image.open(file) as image:
        picture = image.convert("RGB")
    cfg = compose(["data=imagenet_128", f"data.root={tmp_path}"])
    assert cfg.data.crop == "square"
    image, _ = build_dataset(cfg.data)[0]
    torch.testing.assert_close(image, square_crop_transform(128)(picture), rtol=0, atol=0)
    host, _ = build_dataset(compose(["data=imagenet_128", f"data.root={tmp_path}",
                                     "data.crop=mimicry"]).data)[0]
    assert host.shape == image.shape and (host - image).abs().mean() > 0.1


def _fake_imagenet_val(root: Path, wnids: list[str], per_class: int) -> None:
    """The val/<wnid>/*.JPEG folder beside train/, of another colour."""
    from PIL import Image

    for wnid in wnids:
        (root / "imagenet" / "val" / wnid).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (256, 240), (0, 0, 255)).save(root / "imagenet" / "val" / wnid /
                                                         f"{i}.JPEG")


def test_host_imagenet_val_split_reads_the_val_folder(tmp_path: Path) -> None:
    wnids = ["n01440764", "n01443537"]
    _fake_imagenet(tmp_path, wnids, per_class=3)
    _fake_imagenet_val(tmp_path, wnids, per_class=2)
    cfg = compose(["data=imagenet_32", f"data.root={tmp_path}", "data.split=val"])
    data = build_dataset(cfg.data)
    assert len(data) == 4 and data[3][1] == 1
    assert data[0][0][2].mean() > 0.9 and data[0][0][0].mean() < -0.9  # the blue val images


# data=NAME, data.split -> the split Mimicry's loader must read (its own name for it).
HOST_SPLIT_CASES = [
    ("imagenet_32", "train", "train"), ("imagenet_128", "val", "val"),
    ("cifar10", "train", "train"), ("cifar10", "test", "test"), ("cifar100", "test", "test"),
    ("stl10_48", "train", "unlabeled"), ("stl10_48", "test", "test"),
    ("celeba_64", "train", "all"), ("celeba_128", "train", "all"),
    ("lsun_bedroom_128", "train", None),  # its loader takes no split: bedroom_train alone
]


@pytest.mark.parametrize(("name", "split", "loaded"), HOST_SPLIT_CASES)
def test_host_loaders_read_the_split_asked_for(name: str, split: str, loaded: str | None,
                                               tmp_path: Path, monkeypatch) -> None:
    from torch_mimicry.datasets import data_utils

    calls = []

    def load_dataset(root: str, name: str, **kwargs) -> SimpleNamespace:
        calls.append(kwargs)
        return SimpleNamespace()

    monkeypatch.setattr(host, "load_dataset", load_dataset)
    (tmp_path / HOST_FOLDERS[name]).mkdir()
    build_dataset(compose_data(name, {"root": str(tmp_path), "split": split}))  # no model: 48 px
    # What the loader reads: the split passed, else its own default (CelebA's is "all").
    loader = {"imagenet": data_utils.load_imagenet_dataset, "stl10": data_utils.load_stl10_dataset,
              "celeba": data_utils.load_celeba_dataset, "cifar10": data_utils.load_cifar10_dataset,
              "cifar100": data_utils.load_cifar100_dataset,
              "lsun": data_utils.load_lsun_bedroom_dataset}[HOST_FOLDERS[name]]
    parameters = inspect.signature(loader).parameters
    default = parameters["split"].default if "split" in parameters else None
    assert [call.get("split", default) for call in calls] == [loaded]
    assert loaded is not None or "split" not in parameters  # LSUN's: no split to ask for


@pytest.mark.parametrize(("name", "split"), [("fashion_mnist", "val"), ("procedural", "test"),
                                             ("cifar10", "val"), ("celeba_64", "test")])
def test_a_hand_made_data_config_with_a_split_the_data_set_lacks_is_refused(
        name: str, split: str, tmp_path: Path) -> None:
    # Saved and hand-made configurations are not composed, so building checks again: Fashion-
    # MNIST's val was its test set, and CelebA's test would be faces it trains on.
    cfg = OmegaConf.create({"name": name, "root": str(tmp_path), "resolution": 32,
                            "num_classes": 10, "split": split, "size": 8, "fit": "pad"})
    with pytest.raises(UsageError, match=f"^data.split={split}: {name} has "):
        build_dataset(cfg)


def test_procedural_images_follow_their_seed_and_unlabelled_ones_have_label_0() -> None:
    """Another seed is another data set (item i is still always the same); without classes
    the shapes vary but every label is 0, as an unconditional G expects."""
    a, again, other = (ProceduralShapes(6, 32, 5, seed=s) for s in (0, 0, 7))
    assert all(torch.equal(a[i][0], again[i][0]) for i in range(6))
    assert not any(torch.equal(a[i][0], other[i][0]) for i in range(6))
    assert [ProceduralShapes(12, 32, 0)[i][1] for i in range(12)] == [0] * 12
