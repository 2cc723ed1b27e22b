"""`data=folder`: layout, labels, centre crop, unreadable files, bad input, training, FID cache."""

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli
from PIL import Image
from run_helpers import overridden

from sagan_plugin.cli import main as cli_main
from sagan_plugin.config import compose
from sagan_plugin.data import build_dataset
from sagan_plugin.errors import UsageError
from sagan_plugin.image_folder import FolderImages
from sagan_plugin.metrics.real_stats import real_features

COLOURS = {"zebra": (0, 0, 255), "ant": (255, 0, 0), "moth": (0, 255, 0)}


def _image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _classes_folder(root: Path) -> Path:
    """Three classes, made in unsorted order, with images nested at several depths and in
    every format; a stray text file and a hidden folder that are not images."""
    for name, colour in COLOURS.items():  # zebra, ant, moth: not in sorted order
        _image(root / name / "a.png", colour)
        _image(root / name / "2024" / "jan" / "b.JPEG", colour)
        _image(root / name / "2024" / "c.webp", colour)
    (root / "notes.txt").write_text("not an image")
    _image(root / ".thumbnails" / "x.png", (9, 9, 9))
    return root


def _folder_cfg(root: Path, *extra: str):
    return compose(["data=folder", f"data.root={root}", "data.resolution=32", *extra])


def test_labels_are_the_sorted_class_sub_folders(tmp_path: Path) -> None:
    cfg = _folder_cfg(_classes_folder(tmp_path / "images"))
    assert list(cfg.data.classes) == ["ant", "moth", "zebra"]
    assert cfg.data.num_classes == cfg.model.num_classes == 3
    data = build_dataset(cfg.data)
    assert len(data) == 9
    for i in range(len(data)):
        image, label = data[i]
        assert image.shape == (3, 32, 32) and -1 <= image.min() and image.max() <= 1
        # Each class has its own colour: the label must be that class's sorted position.
        colour = tuple(round(v) for v in ((image.mean((1, 2)) + 1) * 127.5).tolist())
        name = next(n for n, c in COLOURS.items() if max(map(abs, np.subtract(c, colour))) < 8)
        assert label == ["ant", "moth", "zebra"].index(name), (i, data.files[i])


def test_the_folder_s_class_count_may_be_given(tmp_path: Path) -> None:
    """data.num_classes=3 for three class sub-folders agrees with them (0: read them)."""
    cfg = _folder_cfg(_classes_folder(tmp_path / "images"), "data.num_classes=3")
    assert cfg.data.num_classes == cfg.model.num_classes == 3


def test_a_class_added_after_the_configuration_was_written_is_refused(tmp_path: Path) -> None:
    """Labels are positions in data.classes: a new sub-folder would shift them under a run."""
    root = _classes_folder(tmp_path / "images")
    cfg = _folder_cfg(root)
    _image(root / "bee" / "a.png", (1, 2, 3))
    with pytest.raises(UsageError, match=r"the class sub-folders of data folder .* changed since "
                                         r"the configuration was written: \['ant', 'moth', "
                                         r"'zebra'\] -> \['ant', 'bee', 'moth', 'zebra'\]"):
        build_dataset(cfg.data)


@pytest.mark.parametrize("layout", ["loose", "one sub-folder"])
def test_a_folder_without_class_sub_folders_is_unlabelled(tmp_path: Path, layout: str) -> None:
    base = tmp_path / "images" / ("only" if layout == "one sub-folder" else "")
    for i in range(3):
        _image(base / f"{i}.png", (40 * i, 0, 0))
    # Loose images next to a sub-folder of images would be a mix (an error, tested below).
    _image(base / ("deeper/3.jpg" if layout == "one sub-folder" else "3.jpg"), (0, 99, 0))
    cfg = _folder_cfg(tmp_path / "images")
    assert list(cfg.data.classes) == [] and cfg.data.num_classes == cfg.model.num_classes == 0
    data = build_dataset(cfg.data)
    assert len(data) == 4 and {data[i][1] for i in range(4)} == {0}


@pytest.mark.parametrize("size", [(90, 60), (60, 90)], ids=["landscape", "portrait"])
def test_centre_square_is_cropped_then_resized(tmp_path: Path, size: tuple[int, int]) -> None:
    """Blue margins outside the centred square, red inside it, a green square at its centre:
    after the crop no blue is left, and the green square keeps its place and size."""
    image = Image.new("RGB", size, (0, 0, 255))
    side = min(size)
    left, top = (size[0] - side) // 2, (size[1] - side) // 2
    image.paste((255, 0, 0), (left, top, left + side, top + side))
    image.paste((0, 255, 0), (left + 20, top + 20, left + 40, top + 40))  # the middle third
    (tmp_path / "images").mkdir()
    image.save(tmp_path / "images" / "one.png")
    x, _ = FolderImages(tmp_path / "images", [], 48)[0]
    assert x.shape == (3, 48, 48) and -1 <= x.min() and x.max() <= 1
    assert x[2].max() < -0.95  # no blue anywhere
    red, green = torch.tensor([1.0, -1, -1]), torch.tensor([-1.0, 1, -1])
    assert torch.allclose(x[:, 17:31, 17:31], green[:, None, None], atol=0.02)  # 16..32, inset
    for border in (x[:, :15, :], x[:, 33:, :], x[:, :, :15], x[:, :, 33:]):
        assert torch.allclose(border, red[:, None, None], atol=0.02)


@pytest.mark.parametrize("rank", ["0", "1"])  # a rank warns of the files its batches hit
def test_an_unreadable_file_is_skipped_with_one_warning(tmp_path: Path, recwarn, rank: str,
                                                        monkeypatch) -> None:
    monkeypatch.setenv("RANK", rank)
    root = tmp_path / "images"
    for i in range(4):
        _image(root / f"{i}.png", (60 * i, 0, 0))
    (root / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # corrupt, after 0.png
    truncated = (root / "3.png").read_bytes()
    (root / "3.png").write_bytes(truncated[: len(truncated) // 2])
    data = build_dataset(_folder_cfg(root).data)
    assert len(data) == 4
    items = [data[i] for i in range(4) for _ in range(2)]  # every index, twice
    assert all(x.shape == (3, 32, 32) for x, _ in items)
    messages = sorted(str(w.message) for w in recwarn if "skipping" in str(w.message))
    assert len(messages) == 2, messages
    assert messages[0] == (f"skipping {root / '1.png'}: not a readable image (cannot identify "
                           f"image file '{root / '1.png'}')")
    assert messages[1].startswith(f"skipping {root / '3.png'}: not a readable image (")
    # The next readable file stands in: 1 -> 2, and 3 -> 0 (wrapping around).
    assert torch.equal(data[1][0], data[2][0]) and torch.equal(data[3][0], data[0][0])


def test_hidden_files_are_not_images(tmp_path: Path, recwarn) -> None:
    """macOS leaves ._NAME resource forks beside copied images: neither counted nor warned of."""
    for i in range(3):
        _image(tmp_path / "images" / f"{i}.png", (40 * i, 0, 0))
        (tmp_path / "images" / f"._{i}.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    data = build_dataset(_folder_cfg(tmp_path / "images").data)
    assert [Path(p).name for p in data.files] == ["0.png", "1.png", "2.png"]
    assert [data[i][1] for i in range(3)] == [0, 0, 0]
    assert not [w for w in recwarn if "skipping" in str(w.message)]


def test_a_folder_of_unreadable_files_is_an_error(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"nothing here")
    cfg = _folder_cfg(tmp_path)  # composing reads names only
    with pytest.warns(UserWarning, match="skipping"), \
            pytest.raises(UsageError, match=f"data folder {tmp_path} has no readable image"):
        build_dataset(cfg.data)


def _mixed(root: Path) -> Path:
    _image(root / "loose.png", (1, 2, 3))
    _image(root / "cats" / "a.png", (1, 2, 3))
    return root


def _bad_folders(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(id, arguments, the message's expected part) for each bad input."""
    empty, text_only, tiny = tmp / "empty", tmp / "text_only", tmp / "tiny"
    empty.mkdir(parents=True)
    text_only.mkdir()
    (text_only / "readme.txt").write_text("no images")
    (text_only / "sub").mkdir()
    _classes_folder(tmp / "classes")
    for i in range(3):
        _image(tiny / f"{i}.png", (9, 9, 9))
    return [
        ("missing", [f"data.root={tmp / 'nope'}"], f"data folder {tmp / 'nope'} does not exist"),
        ("no root", [], "data=folder needs data.root=DIR"),
        ("empty", [f"data.root={empty}"], f"data folder {empty} holds no images; expected PNG"),
        ("no images", [f"data.root={text_only}"], f"data folder {text_only} holds no images"),
        ("mixed", [f"data.root={_mixed(tmp / 'mixed')}"],
         f"data folder {tmp / 'mixed'} mixes loose images (loose.png, ...) with class "
         "sub-folders (cats)"),
        ("class count", [f"data.root={tmp / 'classes'}", "model.num_classes=5"],
         f"model.num_classes=5 does not match data folder at {tmp / 'classes'} (3 classes)"),
        ("class count, unlabelled", [f"data.root={tiny}", "model.num_classes=3"],
         f"model.num_classes=3 does not match data folder at {tiny} (0 classes): it has no "
         "labels, use 0"),
        ("data class count", [f"data.root={tmp / 'classes'}", "data.num_classes=2"],
         f"data.num_classes=2 does not match data folder {tmp / 'classes'}: 3 class"),
        ("classes", [f"data.root={tmp / 'classes'}", "data.classes=[ant,zebra]"],
         "data.classes=['ant', 'zebra'] does not match the class sub-folders"),
        ("fewer than a batch", [f"data.root={tiny}", "train.batch_size=4"],
         f"data folder {tiny} has 3 images, fewer than one batch (4)"),
        ("split", [f"data.root={tiny}", "data.split=test"],
         "data.split=test: folder has one split, train"),
    ]


def test_bad_folders_are_one_line_errors_and_write_nothing(tmp_path: Path, capsys) -> None:
    for case, args, message in _bad_folders(tmp_path / "data"):
        run_dir = tmp_path / "run"
        code = cli_main(["train", "data=folder", "data.resolution=32", "data.num_workers=0",
                         f"run_dir={run_dir}", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (case, err)
        assert message in err[0], (case, err[0])
        assert not run_dir.exists(), case


TINY = ["model=sagan", "data=folder", "data.resolution=32", "model.ngf=8", "model.ndf=8",
        "train.batch_size=5", "train.steps=2", "train.log_steps=1"]


def test_workers_decode_and_warn_once_in_all(tmp_path: Path) -> None:
    """Two DataLoader workers, eight epochs: the broken file is met in each (by one worker or
    the other) and warned about once, by whichever met it first. In a process of its own: under
    pytest, forked workers would record their warnings rather than print them."""
    root = _classes_folder(tmp_path / "images")
    bad = root / "moth" / "2024" / "broken.png"
    bad.write_bytes(b"broken")
    code = textwrap.dedent(f"""
        from sagan_plugin.config import compose
        from sagan_plugin.data import build_dataloader, build_dataset
        cfg = compose(["data=folder", "data.root={root}", "data.resolution=32"])
        loader = build_dataloader(build_dataset(cfg.data), batch_size=5, num_workers=2)
        print(sum(len(labels) for _ in range(8) for _, labels in loader))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.split() == ["80"], result.stderr
    assert result.stderr.count(f"skipping {bad}") == 1, result.stderr


def test_two_training_steps_on_a_folder(tmp_path: Path, capsys) -> None:
    root = _classes_folder(tmp_path / "images")
    bad = root / "moth" / "2024" / "broken.png"
    bad.write_bytes(b"broken")
    args = [*TINY, f"data.root={root}", f"run_dir={tmp_path / 'run'}", "data.num_workers=0"]
    result = run_cli("train", *args)  # 2 batches of 5: all 10 files, the broken one included
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(f"skipping {bad}") == 1, result.stderr
    # one line, as the errors are: no file and line of the code that warned, no source line
    warned = [line for line in result.stderr.splitlines() if f"skipping {bad}" in line]
    assert warned[0].startswith(f"warning: skipping {bad}: not a readable image ("), warned
    assert "Warning" not in result.stderr, result.stderr
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["classes"] == ["ant", "moth", "zebra"]
    assert saved["data"]["num_classes"] == saved["model"]["num_classes"] == 3

    # A resumed run whose folder gained a class is refused: the labels would mean other things.
    _image(root / "bee" / "a.png", (7, 7, 7))
    assert cli_main(["train", *overridden(args, ["train.steps=3"])]) == 2
    err = capsys.readouterr().err
    assert "was started with another configuration" in err and "data.classes" in err

    # Sampling reads the classes from config.yaml: the folder is not needed any more.
    root.rename(tmp_path / "gone")
    from sagan_plugin.runs import load_generator

    assert load_generator(tmp_path / "run").netG.num_classes == 3


class _FakeExtractor:
    """Stands in for the Inception network: counts the real-feature computations."""

    weights = SimpleNamespace(sha256="0" * 64)
    batch_size = 2

    def __init__(self) -> None:
        self.calls = 0

    def extract(self, batches, total, desc):
        self.calls += 1
        return SimpleNamespace(features=np.stack([b.float().mean().repeat(4).numpy()
                                                  for batch in batches for b in batch]))


def test_fid_cache_is_keyed_by_the_folder_files_and_sizes(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for i in range(3):
        _image(root / f"{i}.png", (50 * i, 0, 0))
    cache, extractor = tmp_path / "cache", _FakeExtractor()

    def features_path() -> Path:
        cfg = _folder_cfg(root)
        return real_features(cfg.data, build_dataset(cfg.data), 3, extractor, cache)[1]

    first = features_path()
    assert features_path() == first and extractor.calls == 1  # the same files: reused
    _image(root / "3.png", (0, 0, 0))
    added = features_path()
    _image(root / "3.png", (0, 0, 0), size=(64, 64))  # same name, another size
    resized = features_path()
    assert len({first, added, resized}) == 3 and extractor.calls == 3
