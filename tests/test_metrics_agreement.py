"""Agreement with the reference tool: this project's FID of two image folders equals
`python -m pytorch_fid DIR_A DIR_B` with the same weights; FID of a set against itself is ~0
and grows with added noise; generated images skip the PNG round trip without changing a pixel.
"""

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from inception_helpers import converted_weights, with_classifier
from PIL import Image

from sagan_plugin.data import ProceduralShapes
from sagan_plugin.errors import UsageError
from sagan_plugin.metrics.features import (
    IMAGE_EXTENSIONS,
    FeatureExtractor,
    dataset_batches,
    folder_batches,
    folder_files,
)
from sagan_plugin.metrics.scores import frechet_distance
from sagan_plugin.sample import to_uint8, write_images

pytestmark = pytest.mark.slow

# pytorch-fid's module entry point, after the shim that lets torchvision import on this torch.
PYTORCH_FID_CLI = ("from sagan_plugin.compat import ensure_host_importable; "
                   "ensure_host_importable(); import runpy; "
                   "runpy.run_module('pytorch_fid', run_name='__main__', alter_sys=True)")


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor(converted_weights(), device="cpu", batch_size=50)


def _shapes(first: int, n: int) -> torch.Tensor:
    data = ProceduralShapes(first + n, 32, 10)
    return torch.stack([data[i][0] for i in range(first, first + n)])


def _features(extractor, images: torch.Tensor) -> np.ndarray:
    return extractor.extract([to_uint8(images)]).features


def test_fid_of_two_folders_equals_pytorch_fid_cli(tmp_path, extractor):
    write_images(_shapes(0, 8), f"{tmp_path / 'a'}/")
    noise = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    noisy = _shapes(8, 8) + 0.2 * noise
    write_images(noisy, f"{tmp_path / 'b'}/")
    # pytorch-fid finds this file in its torch.hub cache and so never downloads.
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = torch.load(converted_weights(), weights_only=True)
    torch.save(with_classifier(state), checkpoints / "pt_inception-2015-12-05-6726825d.pth")
    result = subprocess.run(
        [sys.executable, "-c", PYTORCH_FID_CLI, str(tmp_path / "a"), str(tmp_path / "b"),
         "--device", "cpu", "--num-workers", "0"],
        capture_output=True, text=True, timeout=600,
        env={"TORCH_HOME": str(tmp_path / "torch"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reference = float(re.search(r"FID:\s+(\S+)", result.stdout).group(1))

    features = [extractor.extract(folder_batches(folder_files(tmp_path / d), 50)).features
                for d in ("a", "b")]
    assert frechet_distance(*features) == pytest.approx(reference, abs=1e-3)
    assert reference > 1  # two different sets: the agreement is not 0 == 0


def test_generated_images_skip_the_png_round_trip_unchanged(tmp_path, extractor):
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2.2 - 1.1
    write_images(images, f"{tmp_path}/")
    from_png = torch.cat(list(folder_batches(folder_files(tmp_path), 50)))
    assert torch.equal(from_png, to_uint8(images))
    in_memory = _features(extractor, images)
    assert np.abs(extractor.extract([from_png]).features - in_memory).max() < 1e-5


def test_a_folder_of_several_sizes_is_scored_image_by_image(tmp_path, extractor):
    small = _shapes(0, 3)
    large = torch.nn.functional.interpolate(_shapes(3, 2), size=48, mode="bilinear")
    in_name_order = [small[0], large[0], small[1], small[2], large[1]]
    for i, image in enumerate(in_name_order):
        pixels = to_uint8(image[None])[0].permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    batched = extractor.extract(folder_batches(folder_files(tmp_path), 50)).features
    one_by_one = np.concatenate([_features(extractor, image[None]) for image in in_name_order])
    assert np.abs(batched - one_by_one).max() < 1e-5


def test_an_image_that_does_not_decode_is_one_line_naming_it(tmp_path):
    write_images(_shapes(0, 2), f"{tmp_path}/")
    whole = sorted(tmp_path.iterdir())[1]
    whole.write_bytes(whole.read_bytes()[:60])  # the header survives, the pixels do not
    with pytest.raises(UsageError, match=f"cannot read image {whole}: "):
        list(folder_batches(folder_files(tmp_path), 50))


def test_fid_is_zero_against_itself_and_grows_with_noise(extractor):
    clean = _shapes(0, 16)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    reference = _features(extractor, clean)
    fids = [frechet_distance(reference, _features(extractor, clean + s * noise))
            for s in (0.0, 0.1, 0.3, 0.6)]
    assert abs(fids[0]) < 1e-3
    assert all(a < b for a, b in zip(fids, fids[1:], strict=False)), fids


def test_a_folder_holds_the_files_and_pixels_pytorch_fid_reads(tmp_path):
    """Every extension pytorch-fid's CLI picks up, and each image as its RGB conversion (a
    PNG with alpha, a grey one): what pytorch-fid feeds its Inception."""
    from sagan_plugin.compat import ensure_host_importable

    ensure_host_importable()
    from pytorch_fid.fid_score import IMAGE_EXTENSIONS as PYTORCH_FID_EXTENSIONS

    assert set(IMAGE_EXTENSIONS) == PYTORCH_FID_EXTENSIONS
    pixels = to_uint8(_shapes(0, 1))[0].permute(1, 2, 0).numpy()
    for ext in IMAGE_EXTENSIONS:
        Image.fromarray(pixels).convert("L" if ext == "pgm" else "RGB").save(tmp_path / f"a.{ext}")
    (tmp_path / "notes.txt").write_text("not an image")
    assert folder_files(tmp_path) == sorted(tmp_path / f"a.{ext}" for ext in IMAGE_EXTENSIONS)
    for path in tmp_path.iterdir():
        path.unlink()
    Image.fromarray(pixels).convert("RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(pixels).convert("L").save(tmp_path / "grey.png")
    files = folder_files(tmp_path)
    batch = torch.cat(list(folder_batches(files, 50)))
    expected = [np.asarray(Image.open(f).convert("RGB")).transpose(2, 0, 1) for f in files]
    assert batch.dtype == torch.uint8 and torch.equal(batch, torch.from_numpy(np.stack(expected)))


def test_real_images_reach_inception_as_the_uint8_of_their_png_in_the_order_asked():
    """A data set's images are quantised as `sample` writes PNGs (the FID of a run compares
    like with like), batch after batch in the order of the indices."""
    data = ProceduralShapes(12, 32, 10)
    order = [7, 2, 11, 5, 0, 9, 3, 8]
    batches = list(dataset_batches(data, order, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 2]
    expected = to_uint8(torch.stack([data[i][0] for i in order]))
    assert torch.equal(torch.cat(batches), expected)


def test_features_are_float64_and_no_images_is_a_usage_error(extractor):
    features = extractor.extract([to_uint8(_shapes(0, 2))])
    assert features.features.dtype == np.float64 and features.features.shape == (2, 2048)
    with pytest.raises(UsageError, match="^no images to evaluate$"):
        extractor.extract([])
