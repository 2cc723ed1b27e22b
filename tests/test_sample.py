"""The Python sampling recipe that the C++ sampler mirrors, and `sagan-plugin sample`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image
from run_helpers import make_run

from sagan_plugin import sample as sampling
from sagan_plugin.errors import UsageError
from sagan_plugin.runs import load_generator


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("sample") / "run")


@pytest.fixture(scope="module")
def netG(run):
    return load_generator(run).netG


def test_class_labels_cycle_through_the_given_classes():
    assert sampling.class_labels(7, [0, 3, 7], 10).tolist() == [0, 3, 7, 0, 3, 7, 0]
    assert sampling.class_labels(5, [4], 10).tolist() == [4] * 5
    assert sampling.class_labels(12, None, 10).tolist() == [*range(10), 0, 1]
    assert sampling.class_labels(3, None, 0).tolist() == [0, 0, 0]
    assert sampling.class_labels(3, None, 0).dtype == torch.int64


@pytest.mark.parametrize("n, classes, num_classes, message", [
    (0, None, 10, "n must be a positive"),
    (-2, None, 10, "n must be a positive"),
    (4, [10], 10, "class 10 is out of range"),
    (4, [-1], 10, "class -1 is out of range"),
    (4, [1], 0, "unconditional"),
])
def test_class_labels_refuse_bad_input(n, classes, num_classes, message):
    with pytest.raises(UsageError, match=message):
        sampling.class_labels(n, classes, num_classes)


def test_sample_follows_the_recipe(netG):
    n, seed, classes = 10, 5, [2, 9, 5]  # three classes: batches of 4 start at each of them
    torch.manual_seed(seed)  # the recipe's generator draws what the global one would
    z = torch.randn(n, netG.nz)
    y = torch.tensor(classes * 4)[:n]
    with torch.inference_mode():
        expected = torch.cat([netG(z[:4], y[:4]), netG(z[4:8], y[4:8]), netG(z[8:], y[8:])])
    got = sampling.sample(netG, n, seed, classes, batch=4)
    assert got.shape == (n, 3, 32, 32)
    assert torch.equal(got, expected)
    # z is drawn for all n at once, so the batch size changes only rounding.
    torch.testing.assert_close(sampling.sample(netG, n, seed, classes, batch=3), got,
                               rtol=0, atol=1e-5)
    assert not torch.allclose(sampling.sample(netG, n, seed + 1, classes, batch=4), got)
    for other in ([9, 2, 5], [2]):  # the labels matter, image by image
        differs = (sampling.sample(netG, n, seed, other, batch=4) - got).abs().amax((1, 2, 3))
        assert (differs > 1e-3).tolist() == [a != b for a, b in zip(
            (other * n)[:n], y.tolist(), strict=True)]


def test_uint8_mapping_and_grid_layout():
    assert sampling.to_uint8(torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0])).tolist() == [
        0, 0, 128, 255, 255]
    images = torch.arange(1, 6, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 3, 4, 2)
    grid = sampling.image_grid(images)
    assert grid.shape == (2 * 6 + 2, 3 * 4 + 2, 3)  # ceil(sqrt(5)) = 3 columns, 2 rows
    for i in range(5):
        top, left = 2 + (i // 3) * 6, 2 + (i % 3) * 4
        assert (grid[top:top + 4, left:left + 2] == i + 1).all()
    assert int(grid.sum()) == 3 * 8 * sum(range(1, 6))  # black everywhere else


def test_grid_with_given_columns_fills_row_by_row():
    images = torch.arange(1, 7, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 3, 4, 2)
    grid = sampling.image_grid(images, cols=2)
    assert grid.shape == (3 * 6 + 2, 2 * 4 + 2, 3)
    for i in range(6):
        top, left = 2 + (i // 2) * 6, 2 + (i % 2) * 4
        assert (grid[top:top + 4, left:left + 2] == i + 1).all()


def test_sample_command_writes_the_recipe_as_png(run, netG, tmp_path):
    result = run_cli("sample", f"run={run}", "n=5", "seed=3", "classes=1,4", "batch=2",
                     f"out={tmp_path}/one/")
    assert result.returncode == 0, result.stderr
    assert "images/s" in result.stdout
    expected = sampling.to_uint8(sampling.sample(netG, 5, 3, [1, 4], 2)).permute(0, 2, 3, 1)
    for i in range(5):
        png = np.asarray(Image.open(tmp_path / "one" / f"{i:06d}.png"))
        assert np.array_equal(png, expected[i].numpy())


def test_sample_main_writes_a_grid(run, netG, tmp_path):
    sampling.main([f"run={run}", "n=3", "class=7", f"out={tmp_path}/new/folder/grid.png"])
    expected = sampling.image_grid(sampling.to_uint8(sampling.sample(netG, 3, 0, [7])))
    png = Image.open(tmp_path / "new" / "folder" / "grid.png")  # missing folders are made
    assert np.array_equal(np.asarray(png), expected.numpy())


@pytest.mark.parametrize("argv, message", [
    (["n=4"], "run=... is required"),
    (["run={run}", "n=0"], "n must be at least 1"),
    (["run={run}", "n=many"], "bad override for n"),
    (["run={run}", "steps=7"], r"sample: unknown key 'steps' \(did you mean step\?\); keys: run, "),
    (["run={run}", "class=10"], "class 10 is out of range"),
    (["run={run}", "class=1", "classes=2"], "not both"),
    (["run={run}", "classes=a,b"], "classes must be integers"),
    (["run={run}", "out={tmp}/x.jpg"], "must end in .png"),
    (["run={run}", "out=/dev/null/x.png"], "/dev/null is not a folder"),
    (["run={run}", "out=/proc/x.png"], "cannot write"),
    (["run={run}", "device=cuda:7"] if not torch.cuda.is_available() else ["run={run}", "n=-1"],
     "no usable GPU|n must be"),
    (["run={run}", "batch=0"], "batch must be at least 1"),
])
def test_bad_sample_input_is_a_usage_error(run, tmp_path, argv, message):
    argv = [a.format(run=run, tmp=tmp_path) for a in argv]
    with pytest.raises(UsageError, match=message):
        sampling.main(argv)
    assert not list(tmp_path.iterdir())


def test_a_full_disk_is_one_line_exit_1_and_leaves_no_file(run, tmp_path):
    out = tmp_path / "out" / "grid.png"
    result = run_cli("sample", f"run={run}", "n=64", f"out={out}", max_file_bytes=20_000)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip() == f"error: {out}: File too large"
    assert list(tmp_path.rglob("*")) == [out.parent]  # the folder it made, empty


@pytest.mark.parametrize("n, nz, batch", [(9000, 3, 64), (4097, 3, 64), (4101, 5, 5000)])
def test_noise_drawn_in_chunks_is_the_one_shot_draw(n, nz, batch):
    """Step 1 at any n: the batches hold randn(n, nz) of one generator drawn at once, as the
    C++ sampler draws it (a chunk of other than a multiple of 16 values, or a remainder of
    fewer than 16, would draw other numbers)."""
    expected = torch.randn(n, nz, generator=torch.Generator().manual_seed(5))
    chunks = list(sampling.noise_batches(n, nz, 5, batch))
    assert [len(c) for c in chunks] == [min(batch, n - i) for i in range(0, n, batch)]
    assert torch.equal(torch.cat(chunks), expected)


def test_sampled_images_hold_no_autograd_graph(netG):
    """Sampling runs in inference mode: images that kept their graph would hold every
    activation of every batch in memory."""
    images = sampling.sample(netG, 3, batch=2)
    assert not images.requires_grad and images.grad_fn is None


def test_grid_columns_are_the_ceiling_of_the_square_root():
    for n, cols in [(1, 1), (4, 2), (5, 3), (9, 3), (10, 4), (64, 8), (65, 9)]:
        grid = sampling.image_grid(torch.zeros(n, 1, 1, 1, dtype=torch.uint8))
        assert grid.shape[1] == cols * (1 + 2) + 2, n


def test_sample_defaults_are_64_images_of_seed_0_in_an_8x8_grid(run, netG, tmp_path,
                                                                  monkeypatch):
    """The defaults the C++ sampler shares: n=64, seed=0, labels i % classes, samples.png."""
    monkeypatch.chdir(tmp_path)
    sampling.main([f"run={run}"])
    png = np.asarray(Image.open(tmp_path / "samples.png"))
    assert png.shape == (8 * (32 + 2) + 2, 8 * (32 + 2) + 2, 3)
    expected = sampling.image_grid(sampling.to_uint8(sampling.sample(netG, 64, 0)))
    assert np.array_equal(png, expected.numpy())


def test_an_existing_folder_named_without_a_slash_gets_one_png_per_image(run, tmp_path):
    folder = tmp_path / "existing"
    folder.mkdir()
    sampling.main([f"run={run}", "n=2", f"out={folder}"])
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "000001.png"]


def test_a_bad_out_is_refused_before_the_generator_is_loaded(run, tmp_path, monkeypatch):
    from sagan_plugin import runs

    def load_generator(*args, **kwargs):
        raise AssertionError("the generator was loaded before out= was checked")

    monkeypatch.setattr(runs, "load_generator", load_generator)
    with pytest.raises(UsageError, match="out must end in .png"):
        sampling.main([f"run={run}", f"out={tmp_path}/x.jpg"])


def test_a_batch_of_zero_is_refused_by_its_name(netG):
    with pytest.raises(UsageError, match="batch must be a positive number of images, got 0"):
        sampling.sample(netG, 4, batch=0)
