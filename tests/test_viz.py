"""`sagan-plugin viz`: the class grid and the attention maps of the paper's Figure 1."""

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from omegaconf import OmegaConf
from PIL import Image
from run_helpers import STEP, make_run

from sagan_plugin import cli, viz
from sagan_plugin.checkpoint import checkpoint_path
from sagan_plugin.config import build_models, compose
from sagan_plugin.runs import load_generator
from sagan_plugin.sample import GRID_PADDING, image_grid, sample, to_uint8


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("viz") / "run")


@pytest.fixture(scope="module")
def run_without_attention(tmp_path_factory) -> Path:
    """A tiny SAGAN trained with model.attention=0: G.attention is None."""
    run_dir = tmp_path_factory.mktemp("viz") / "plain"
    cfg = compose(["model=sagan", "data=procedural", "model.ngf=8", "model.attention=0",
                   f"run_dir={run_dir}"])
    netG, _ = build_models(cfg)
    assert netG.attention is None
    ckpt = checkpoint_path(run_dir, 1)
    ckpt.parent.mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    torch.save({"model_state_dict": netG.state_dict(), "optimizer_state_dict": {},
                "global_step": 1}, ckpt)
    return run_dir


def test_viz_writes_the_grid_and_the_attention_maps(run, tmp_path, capsys):
    out = tmp_path / "viz"
    code = cli.main(["viz", f"run={run}", f"out={out}", "per_class=3", "classes=0,4,9",
                     "images=2", "queries=0.1,0.1;0.5,0.5;0.9,0.2", "scale=2"])
    assert code == 0, capsys.readouterr().err
    tile, pad = 32, GRID_PADDING
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (3 * (tile + pad) + pad, 3 * (tile + pad) + pad)
    with Image.open(out / "attention.png") as figure:
        side = tile * 2
        assert figure.size == (4 * (side + pad) + pad, 2 * (side + pad) + pad)  # image + 3 maps
    maps = np.load(out / "attention.npz")
    size = int(maps["feature_size"])
    assert maps["attention"].shape == (2, size * size, size * size // 4)
    np.testing.assert_allclose(maps["attention"].sum(axis=-1), 1.0, atol=1e-5)
    assert maps["queries"].tolist() == [int(0.1 * size) * size + int(0.1 * size),
                                        (size // 2) * size + size // 2,
                                        int(0.9 * size) * size + int(0.2 * size)]
    assert json.loads((out / "attention.json").read_text())["gamma"] == pytest.approx(0.7 * 0.9)


def test_grid_rows_hold_one_class_each(run):
    netG = load_generator(run).netG
    grid = viz.class_grid(netG, per_class=2, classes=[1, 5], seed=3)
    z = torch.randn(4, netG.nz, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():  # sample() labels image i with classes[i % 2]
        expected = to_uint8(netG(z, torch.tensor([1, 5, 1, 5])))
    pad, r = GRID_PADDING, 32
    for row, col, index in [(0, 0, 0), (0, 1, 2), (1, 0, 1), (1, 1, 3)]:
        top, left = pad + row * (r + pad), pad + col * (r + pad)
        tile = grid[top : top + r, left : left + r].permute(2, 0, 1)
        assert torch.equal(tile, expected[index])


def test_attention_maps_come_from_the_layer_input(run):
    netG = load_generator(run).netG
    z = torch.randn(2, netG.nz, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1])
    images, attention, size = viz.attention_maps(netG, z, y)
    captured = []
    hook = netG.attention.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    with torch.inference_mode():
        netG(z, y)
        expected = netG.attention.attention_weights(captured[0])
    hook.remove()
    assert size == captured[0].shape[-1]
    torch.testing.assert_close(attention, expected)
    assert images.shape == (2, 3, 32, 32)
    assert not netG.attention._forward_pre_hooks  # the hook is removed again


@pytest.mark.parametrize("args, message", [
    (["queries=0.5"], "expected y,x pairs in [0, 1]"),
    (["queries=2,0.5"], "expected y,x pairs in [0, 1]"),
    (["what=grid,loss"], "what=grid,loss"),
    (["classes=12"], "the model has 10 classes"),
    (["per_class=0"], "at least 1"),
])
def test_bad_input_is_a_one_line_error(run, tmp_path, capsys, args, message):
    code = cli.main(["viz", f"run={run}", f"out={tmp_path}", *args])
    err = capsys.readouterr().err
    assert (code, err.count("\n")) == (2, 1) and message in err, err


def test_generator_without_attention_is_refused(run):
    netG = load_generator(run).netG
    netG.attention = None
    with pytest.raises(viz.UsageError, match="no attention layer"):
        viz.attention_maps(netG, torch.zeros(1, netG.nz), None)


def test_default_viz_without_attention_draws_the_grid_and_says_the_maps_are_skipped(
        run_without_attention, tmp_path, capsys):
    out = tmp_path / "viz"
    code = cli.main(["viz", f"run={run_without_attention}", f"out={out}", "per_class=2",
                     "classes=0,1"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["grid.png"]
    assert "attention maps skipped: this generator has no attention layer" in stdout


@pytest.mark.parametrize("what", ["attention", "grid,attention"])
def test_asking_for_attention_maps_without_attention_writes_nothing(
        run_without_attention, tmp_path, capsys, what):
    out = tmp_path / "viz"
    code = cli.main(["viz", f"run={run_without_attention}", f"out={out}", f"what={what}",
                     "per_class=2", "classes=0,1"])
    stdout, err = capsys.readouterr()
    assert (code, err.count("\n"), stdout) == (2, 1, ""), err
    assert f"what={what}: this generator has no attention layer" in err
    assert not out.exists()


def test_a_full_disk_is_one_line_exit_1_and_leaves_no_file(run, tmp_path):
    out = tmp_path / "viz"
    result = run_cli("viz", f"run={run}", f"out={out}", max_file_bytes=2_000)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip() == f"error: {out / 'grid.png'}: File too large"
    assert list(out.iterdir()) == []


def test_an_out_named_like_an_image_is_refused_not_made_a_folder(run, tmp_path, capsys):
    out = tmp_path / "viz.png"
    assert cli.main(["viz", f"run={run}", f"out={out}"]) == 2
    assert capsys.readouterr().err == (f"error: viz: out is a folder for grid.png and "
                                       f"attention.png, got {out}, an image's name; give "
                                       f"out={tmp_path / 'viz'}\n")
    assert list(tmp_path.iterdir()) == []


def test_attention_images_are_drawn_with_their_own_classes(run, tmp_path):
    """Image i of the attention figure is labelled i % classes, not all class 0."""
    out = tmp_path / "viz"
    assert cli.main(["viz", f"run={run}", f"out={out}", "what=attention", "images=3",
                     "seed=5"]) == 0
    netG = load_generator(run).netG
    z = torch.randn(3, netG.nz, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = to_uint8(netG(z, torch.arange(3) % netG.num_classes))
    saved = torch.from_numpy(np.load(out / "attention.npz")["images"])
    torch.testing.assert_close(saved.int(), expected.int(), atol=1, rtol=0)
    with torch.inference_mode():
        all_zero = to_uint8(netG(z, torch.zeros(3, dtype=torch.long)))
    assert (saved[1:].int() - all_zero[1:].int()).abs().max() > 1


def test_the_attention_map_is_drawn_as_row_major_key_positions():
    """Row j of beta is query j's weights over keys y * W + x: a key at (0, 1) lights x, not y."""
    size, scale = 8, 1
    side, cell, pad = 16, 16 // (8 // 2), GRID_PADDING
    images = -torch.ones(1, 3, side, side)  # black: only the heat map shows
    attention = torch.zeros(1, size * size, (size // 2) ** 2)
    query = size * size - 1  # bottom right: its ring is far from the hot key
    attention[0, query, 0 * (size // 2) + 1] = 1.0  # key y=0, x=1
    figure, index = viz.attention_figure(images, attention, size, [(0.99, 0.99)], scale)
    assert index == [query]
    heat = figure[pad : pad + side, 2 * pad + side : 2 * pad + 2 * side].int().sum(-1)
    assert heat[:cell, cell : 2 * cell].min() > 300  # y=0, x=1 is lit
    assert heat[cell : 2 * cell, :cell].max() == 0  # y=1, x=0 (the transpose) is not


def test_an_unconditional_generator_gets_a_row_of_samples(tmp_path):
    """No classes, no class rows: the grid is one row of per_class samples of the recipe."""
    run = make_run(tmp_path / "plain", num_classes=0)
    out = tmp_path / "viz"
    assert cli.main(["viz", f"run={run}", f"out={out}", "what=grid", "per_class=3",
                     "seed=2"]) == 0
    netG = load_generator(run).netG
    expected = image_grid(to_uint8(sample(netG, 3, 2)), cols=3)
    with Image.open(out / "grid.png") as grid:
        assert np.array_equal(np.asarray(grid), expected.numpy())


def test_a_grid_has_one_row_per_class_up_to_20(tmp_path):
    """Without classes=, a model of 25 classes gets a grid of its first 20, a row each."""
    run = tmp_path / "many"
    cfg = compose(["model=sagan", "data=procedural", "data.num_classes=25", "model.ngf=8",
                   f"run_dir={run}"])
    netG, _ = build_models(cfg)
    checkpoint_path(run, 1).parent.mkdir(parents=True)
    OmegaConf.save(cfg, run / "config.yaml")
    torch.save({"model_state_dict": netG.state_dict(), "optimizer_state_dict": {},
                "global_step": 1}, checkpoint_path(run, 1))
    out = tmp_path / "viz"
    assert cli.main(["viz", f"run={run}", f"out={out}", "what=grid", "per_class=1"]) == 0
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (32 + 2 * GRID_PADDING, 20 * (32 + GRID_PADDING) + GRID_PADDING)


def test_queries_on_the_edges_of_the_image_are_accepted():
    """y,x in [0, 1], both ends included: 1 is the last row or column of the map."""
    assert viz.parse_queries("0,0;1,1") == [(0.0, 0.0), (1.0, 1.0)]
    size = 8
    attention = torch.full((1, size * size, (size // 2) ** 2), 1 / 16)
    _, index = viz.attention_figure(-torch.ones(1, 3, 16, 16), attention, size,
                                    [(0, 0), (1, 1), (1, 0)], 1)
    assert index == [0, size * size - 1, (size - 1) * size]


def test_a_uniform_attention_map_is_drawn_as_the_grey_image():
    """A map with no contrast stretches to nothing: the tile is the image in grey (no NaN)."""
    images = torch.zeros(1, 3, 16, 16)  # 128 in every channel
    attention = torch.full((1, 64, 16), 1 / 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure, _ = viz.attention_figure(images, attention, 8, [(0.99, 0.99)], 1)
    pad = GRID_PADDING
    tile = figure[pad : pad + 16, 2 * pad + 16 : 2 * pad + 32]
    assert (tile[:8, :8] == 128).all()  # away from the query's ring


def test_a_grid_that_would_not_fit_in_memory_is_refused_before_anything_is_written(
        run, tmp_path, capsys, monkeypatch):
    from sagan_plugin import machine

    monkeypatch.setattr(machine, "available_memory", lambda: 2**20)
    out = tmp_path / "viz"
    assert cli.main(["viz", f"run={run}", f"out={out}", "what=grid"]) == 2
    assert "a grid of per_class=8 needs about" in capsys.readouterr().err
    assert not out.exists()


def test_attention_json_records_the_step_the_ema_and_the_seed(run, tmp_path):
    out = tmp_path / "viz"
    assert cli.main(["viz", f"run={run}", f"out={out}", "what=attention", "images=1",
                     "seed=4", "ema=false"]) == 0
    record = json.loads((out / "attention.json").read_text())
    assert (record["step"], record["ema"], record["seed"]) == (STEP, False, 4)


def test_attention_maps_that_would_not_fit_in_memory_are_refused(run, tmp_path, capsys,
                                                                 monkeypatch):
    """Each image's maps take (R/2)^4 bytes (H*W queries by H*W/4 keys in float32, H = R/2):
    1000 images at 32 px take 65 MB of maps, more than half of 100 MB with the figure."""
    from sagan_plugin import machine

    monkeypatch.setattr(machine, "available_memory", lambda: 100 * 2**20)
    out = tmp_path / "viz"
    assert cli.main(["viz", f"run={run}", f"out={out}", "what=attention", "images=1000",
                     "scale=1"]) == 2
    assert "attention maps of images=1000 needs about" in capsys.readouterr().err
    assert not out.exists()


def test_a_generator_with_nan_weights_is_drawn_with_one_warning(run, tmp_path, capsys):
    """Loading says the weights are not finite; drawing adds no numpy warning of its own."""
    diverged = tmp_path / "diverged"
    checkpoint = checkpoint_path(diverged, STEP)
    checkpoint.parent.mkdir(parents=True)
    (diverged / "config.yaml").write_bytes((run / "config.yaml").read_bytes())
    state = torch.load(checkpoint_path(run, STEP), weights_only=True)
    for weights in ("model_state_dict", "ema_state_dict"):  # whichever viz loads
        for tensor in (state.get(weights) or {}).values():
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
    torch.save(state, checkpoint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = cli.main(["viz", f"run={diverged}", f"out={tmp_path / 'viz'}", "per_class=1",
                         "images=1"])
    assert code == 0, capsys.readouterr().err
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert re.fullmatch(rf"{re.escape(str(checkpoint))}: \d+ of G's tensors hold NaN or inf "
                        r"\([\w.]+, \.\.\.\), so its images mean nothing \(did the run "
                        r"diverge\?\)", str(caught[0].message)), caught[0].message
    gamma = json.loads((tmp_path / "viz" / "attention.json").read_text())["gamma"]
    assert gamma != gamma  # NaN: what was loaded is what is reported
