"""PiCANet: shapes, ranges, gradients, the stride-8 layout, attention invariants, weight files, a loss that falls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visarl.saliency.picanet import (
    GlobalPiCANet,
    LocalPiCANet,
    PiCANet,
    PiCANetOutput,
    deep_supervision_loss,
    load_picanet,
    save_picanet,
    side_strides,
)

TINY = 1 / 16  # width_mult of the test-size model: VGG channels 4..32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


STRIDES = {"authors": (8, 4, 2, 1), "full": (8, 8, 8, 4, 2, 1)}  # side outputs, coarse to fine


def _check_output(out: PiCANetOutput, batch: int, size: int, decoder: str = "authors") -> None:
    assert isinstance(out, PiCANetOutput)
    assert len(out.sides) == len(STRIDES[decoder])
    for side, div in zip(out.sides, STRIDES[decoder], strict=True):
        s = size // div
        assert side.shape == (batch, 1, s, s)
        assert torch.isfinite(side).all()
        assert side.min() >= 0 and side.max() <= 1
    assert out.final is out.sides[-1]


def test_side_strides() -> None:
    assert side_strides("authors") == STRIDES["authors"] and side_strides("full") == STRIDES["full"]
    with pytest.raises(ValueError, match="decoder"):
        side_strides("global")
    with pytest.raises(ValueError, match="decoder"):
        PiCANet(32, decoder="global", width_mult=TINY)


@pytest.mark.parametrize("decoder", ["authors", "full"])
@pytest.mark.parametrize("size", [32, 64, 128, 224])
def test_tiny_shapes_and_range(size: int, decoder: str) -> None:
    torch.manual_seed(0)
    model = PiCANet(size, decoder=decoder, width_mult=TINY).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    _check_output(out, 2, size, decoder)


def _torchvision_vgg16_features() -> torch.nn.Sequential:
    import torchvision

    return torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])


def test_authors_decoder_is_the_default() -> None:
    """The ViSaRL authors' decoder (their picanet_cfg[2]): VGG-16 up to conv4_3, no fc6/fc7; cells on conv4_3,
    conv3_3, conv2_2 (local attention, 7x7 logit convs of 128 channels) and conv1_2 (no attention, side output off
    F); Dec channels 256, 128, 64."""
    torch.manual_seed(0)
    model = PiCANet(64).eval()
    assert model.hparams["decoder"] == "authors" and model.fc is None
    vgg = _torchvision_vgg16_features()[:23]  # torchvision's VGG-16 features through conv4_3 + ReLU
    assert len(model.encoder) == 23
    assert sum(p.numel() for p in model.encoder.parameters()) == sum(p.numel() for p in vgg.parameters())
    assert [model.encoder[i].stride for i in (4, 9, 16)] == [2, 2, 2]  # pool1..pool3
    assert [type(cell.context).__name__ for cell in model.decoder] == ["LocalPiCANet"] * 3 + ["NoneType"]
    assert [cell.bn_en.num_features for cell in model.decoder] == [512, 256, 128, 64]
    assert [cell.bn_out.num_features for cell in model.decoder[:3]] == [256, 128, 64]
    last = model.decoder[-1]
    assert last.out is None and last.bn_out is None and last.side.in_channels == 64
    assert model.decoder[0].fuse is None and all(cell.fuse is not None for cell in model.decoder[1:])
    assert [cell.context.logits[0].out_channels for cell in model.decoder[:3]] == [128] * 3
    with torch.no_grad():
        feats = model.features(torch.rand(1, 3, 64, 64))
        out = model(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(512, 8, 8), (256, 16, 16), (128, 32, 32), (64, 64, 64)]
    _check_output(out, 1, 64, "authors")


def test_full_decoder_is_liu_et_al() -> None:
    """The full PiCANet of Liu et al.: VGG-16 at stride 8 (pool4/pool5 stride 1, conv5 dilated 2), fc6/fc7 convs of
    1024 channels (fc6 dilated 12), global cells on fc7 and conv5_3, local on conv4_3, conv3_3, conv2_2, none at
    conv1_2."""
    torch.manual_seed(0)
    model = PiCANet(64, decoder="full").eval()
    vgg = _torchvision_vgg16_features()
    assert sum(p.numel() for p in model.encoder.parameters()) == sum(p.numel() for p in vgg.parameters())
    fc6, fc7 = model.fc[0], model.fc[3]
    assert (fc6.in_channels, fc6.out_channels, fc6.kernel_size, fc6.dilation) == (512, 1024, (3, 3), (12, 12))
    assert (fc7.in_channels, fc7.out_channels, fc7.kernel_size) == (1024, 1024, (1, 1))
    assert [model.encoder[i].stride for i in (4, 9, 16, 23, 30)] == [2, 2, 2, 1, 1]  # pool1..pool5
    assert all(model.encoder[i].dilation == (2, 2) for i in (24, 26, 28))  # conv5_1..5_3
    assert all(model.encoder[i].dilation == (1, 1) for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21))
    assert [cell.bn_en.num_features for cell in model.decoder] == [1024, 512, 512, 256, 128, 64]
    assert [cell.bn_out.num_features for cell in model.decoder[:5]] == [512, 512, 256, 128, 64]
    kinds = [type(cell.context).__name__ for cell in model.decoder]
    assert kinds == ["GlobalPiCANet"] * 2 + ["LocalPiCANet"] * 3 + ["NoneType"]
    assert [cell.out.in_channels for cell in model.decoder[:5]] == [2048, 1024, 1024, 512, 256]  # [F, context]
    assert model.decoder[-1].out is None
    assert model.decoder[0].fuse is None and all(cell.fuse is not None for cell in model.decoder[1:])
    with torch.no_grad():
        feats = model.features(torch.rand(1, 3, 64, 64))
        out = model(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (1024, 8, 8),
        (512, 8, 8),
        (512, 8, 8),
        (256, 16, 16),
        (128, 32, 32),
        (64, 64, 64),
    ]
    _check_output(out, 1, 64, "full")


def test_local_hidden_width_is_a_number() -> None:
    model = PiCANet(32, width_mult=TINY, local_hidden=256)
    assert [cell.context.logits[0].out_channels for cell in model.decoder[:3]] == [16] * 3  # 256 * TINY
    assert model.hparams["local_hidden"] == 256


@pytest.mark.parametrize("decoder", ["authors", "full"])
def test_every_parameter_gets_a_gradient(decoder: str) -> None:
    torch.manual_seed(0)
    model = PiCANet(64, decoder=decoder, width_mult=TINY).train()
    x = torch.rand(2, 3, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.7).float()
    deep_supervision_loss(model(x).sides, target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_imagenet_normalisation_inside() -> None:
    model = PiCANet(64, width_mult=TINY).eval()
    seen = {}

    def hook(module, inputs, output) -> None:
        seen["x"] = inputs[0]

    model.encoder[0].register_forward_hook(hook)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(seen["x"], (x - mean) / std)


def test_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        PiCANet(100, width_mult=TINY)
    model = PiCANet(64, width_mult=TINY)
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        model(torch.rand(1, 3, 128, 128))


def test_local_attention_sums_to_one_and_matches_unfold() -> None:
    torch.manual_seed(0)
    k, d = 7, 2
    module = LocalPiCANet(6, kernel_size=k, dilation=d, hidden=8)
    x = torch.randn(2, 6, 11, 13)
    attn = module.attention(x)  # [B, K*K, H, W]
    assert attn.shape == (2, k * k, 11, 13)
    torch.testing.assert_close(attn.sum(1), torch.ones(2, 11, 13))
    assert (attn >= 0).all()
    # Pixel (0, 0): window offsets (i, j) with i < 3 or j < 3 fall above/left of the map and get no weight.
    corner = attn[0, :, 0, 0].view(k, k)
    assert corner[:3].abs().max() == 0 and corner[:, :3].abs().max() == 0
    assert corner[3:, 3:].sum().item() == pytest.approx(1.0, abs=1e-6)
    # The shifted-view implementation equals the textbook unfold + weighted sum.
    pad = d * (k - 1) // 2
    unfolded = F.unfold(x, k, dilation=d, padding=pad).view(2, 6, k * k, 11 * 13)
    expected = (unfolded * attn.view(2, 1, k * k, 11 * 13)).sum(2).view_as(x)
    torch.testing.assert_close(module(x), expected)


def test_global_attention_matches_explicit_sum() -> None:
    torch.manual_seed(0)
    module = GlobalPiCANet(5, size=7, dilation=2, hidden=6)
    x = torch.randn(2, 5, 7, 7)
    attn = module.attention(x)  # [B, n*n, H, W], n = 4: rows/cols 0, 2, 4, 6
    assert attn.shape == (2, 16, 7, 7)
    torch.testing.assert_close(attn.sum(1), torch.ones(2, 7, 7))
    expected = torch.zeros_like(x)
    for m in range(4):
        for n in range(4):
            expected += attn[:, m * 4 + n, None] * x[:, :, 2 * m, 2 * n, None, None]
    torch.testing.assert_close(module(x), expected)
    with pytest.raises(ValueError, match="7x7"):
        module(torch.randn(1, 5, 8, 8))


def test_renet_context_is_global() -> None:
    """A change at one corner reaches the attention logits of the opposite corner (rows then columns)."""
    torch.manual_seed(0)
    module = GlobalPiCANet(3, size=6, hidden=4)
    x = torch.randn(1, 3, 6, 6)
    y = x.clone()
    y[0, :, 0, 0] += 1.0
    with torch.no_grad():
        a, b = module.renet(x), module.renet(y)
    assert (a[0, :, 5, 5] - b[0, :, 5, 5]).abs().max() > 1e-6


def _numpy_area_down(t: np.ndarray, s: int) -> np.ndarray:
    h = t.shape[-1]
    f = h // s
    return t.reshape(t.shape[0], s, f, s, f).mean(axis=(2, 4))


def test_deep_supervision_loss_against_numpy() -> None:
    rng = np.random.default_rng(0)
    target = rng.random((2, 16, 16)).astype(np.float32)
    sizes = (1, 2, 4, 8, 16)
    sides = [rng.uniform(0.05, 0.95, (2, 1, s, s)).astype(np.float32) for s in sizes]
    weights = (0.5, 0.8, 1.0)  # fewer than sides: the coarse ones take 0.5
    expected_bce, expected_mse, expected_wmse = 0.0, 0.0, 0.0
    for side, w in zip(sides, (0.5, 0.5, 0.5, 0.8, 1.0), strict=True):
        t = _numpy_area_down(target, side.shape[-1])
        p = side[:, 0].astype(np.float64)
        expected_bce += w * np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
        expected_mse += w * np.mean((p - t) ** 2)
        expected_wmse += w * np.mean((1 / (1.05 - t)) * (p - t) ** 2)  # the authors' train_picanet.py formula
    torch_sides = [torch.from_numpy(s) for s in sides]
    default = deep_supervision_loss(torch_sides, torch.from_numpy(target), weights)
    bce = deep_supervision_loss(torch_sides, torch.from_numpy(target), weights, kind="bce")
    mse = deep_supervision_loss(torch_sides, torch.from_numpy(target)[:, None], weights, kind="mse")
    assert default.item() == pytest.approx(expected_wmse, rel=1e-5)  # Table III's WeightedMSE is the default
    assert bce.item() == pytest.approx(expected_bce, rel=1e-5)
    assert mse.item() == pytest.approx(expected_mse, rel=1e-5)
    with pytest.raises(ValueError, match="kind"):
        deep_supervision_loss(torch_sides, torch.from_numpy(target), kind="l1")
    with pytest.raises(ValueError, match="6 weights for 5"):
        deep_supervision_loss(torch_sides, torch.from_numpy(target), (1.0,) * 6)


@pytest.mark.parametrize("decoder", ["authors", "full"])
def test_deep_supervision_loss_of_each_decoder(decoder: str) -> None:
    """The default weights give the authors' loss ratios (0.5, 0.8, 0.8, 1) over their four side outputs and
    PiCANet's (0.5, 0.5, 0.5, 0.8, 0.8, 1) over the full decoder's six: checked against numpy BCE per side."""
    torch.manual_seed(0)
    model = PiCANet(32, decoder=decoder, width_mult=TINY).eval()
    target = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        sides = model(torch.rand(2, 3, 32, 32)).sides
        loss = deep_supervision_loss(sides, target, kind="bce").item()
    weights = {"authors": (0.5, 0.8, 0.8, 1.0), "full": (0.5, 0.5, 0.5, 0.8, 0.8, 1.0)}[decoder]
    expected = 0.0
    for side, w in zip(sides, weights, strict=True):
        t = _numpy_area_down(target[:, 0].numpy().astype(np.float64), side.shape[-1])
        p = side[:, 0].double().numpy()
        expected += w * np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
    assert loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("decoder", ["authors", "full"])
def test_loss_falls_on_blob_targets(decoder: str) -> None:
    """30 Adam steps on 4 fixed 64x64 images whose target is a bright blob: the loss must fall well below
    that of the best constant prediction (the blob's area fraction), i.e. the net localises the blobs."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    images, targets = [], []
    for cy, cx in ((20, 20), (40, 44), (16, 48), (48, 18)):
        blob = (((yy - cy) ** 2 + (xx - cx) ** 2) < 10**2).float()
        img = 0.2 * torch.rand(3, 64, 64) + 0.6 * blob  # the salient thing is brighter
        images.append(img.clamp(0, 1))
        targets.append(blob[None])
    x, target = torch.stack(images), torch.stack(targets)
    prior = [torch.full((4, 1, 64 // d, 64 // d), target.mean().item()) for d in STRIDES[decoder]]
    constant_loss = deep_supervision_loss(prior, target).item()

    model = PiCANet(64, decoder=decoder, width_mult=1 / 8).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = deep_supervision_loss(model(x).sides, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    final = np.mean(losses[-3:])
    assert final < 0.4 * losses[0], losses
    assert final < 0.8 * constant_loss, (final, constant_loss)


def test_local_weights_file(tmp_path) -> None:
    """A local state dict (torchvision's full-model keys or the bare features) is loaded with weights_only."""
    torch.manual_seed(0)
    source = PiCANet(64, width_mult=TINY)
    state = {f"features.{k}": v + 1.0 for k, v in source.encoder.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # ignored
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    model = PiCANet(64, width_mult=TINY, backbone_weights=path)
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(v, state[f"features.{k}"])

    bare = tmp_path / "features.pth"
    torch.save({k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}, bare)
    model = PiCANet(64, width_mult=TINY, backbone_weights=bare)
    torch.testing.assert_close(model.encoder[0].weight, state["features.0.weight"])

    with pytest.raises(ValueError, match="does not match"):
        PiCANet(64, width_mult=TINY / 2, backbone_weights=path)  # other widths
    pickled = tmp_path / "object.pth"
    torch.save({"x": np.arange(3)}, pickled)  # needs full unpickling: refused by weights_only
    with pytest.raises(ValueError, match="object.pth"):
        PiCANet(64, width_mult=TINY, backbone_weights=pickled)


VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision's indices of VGG-16's 13 convs


def _random_torchvision_vgg16_state() -> dict[str, torch.Tensor]:
    """A randomly initialised torchvision VGG-16 state dict (``features.*`` and ``classifier.*`` keys), with the
    102M-parameter classifier shrunk: the encoder ignores it, and the test stays light."""
    import torchvision

    torch.manual_seed(1)
    with torch.device("meta"):
        layout = torchvision.models.vgg16().state_dict()  # key names only: nothing allocated, nothing downloaded
    state = {f"features.{k}": v for k, v in _torchvision_vgg16_features().state_dict().items()}
    state.update({k: torch.zeros(2) for k in layout if k.startswith("classifier.")})
    assert set(state) == set(layout)
    return state


@pytest.mark.parametrize("decoder", ["authors", "full"])
def test_backbone_weights_from_a_torchvision_vgg16_file(tmp_path, decoder: str) -> None:
    """A torchvision VGG-16 state dict saved to a file and given as ``backbone_weights``: every VGG conv the
    encoder builds (10 up to conv4_3 for the authors' decoder, all 13 for the full one) holds that layer's tensors,
    and the encoder's convs keep their stride-8 dilations."""
    state = _random_torchvision_vgg16_state()
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    model = PiCANet(32, decoder=decoder, backbone_weights=str(path))
    built = [i for i in VGG16_CONVS if i < len(model.encoder)]
    assert len(built) == {"authors": 10, "full": 13}[decoder]
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.encoder) == len(built)
    for i in built:
        conv = model.encoder[i]
        torch.testing.assert_close(conv.weight, state[f"features.{i}.weight"], rtol=0, atol=0)
        torch.testing.assert_close(conv.bias, state[f"features.{i}.bias"], rtol=0, atol=0)
    assert model.encoder[24 if decoder == "full" else 21].dilation == ((2, 2) if decoder == "full" else (1, 1))
    with pytest.raises(ValueError, match="no such VGG-16 weights file"):
        PiCANet(32, width_mult=TINY, backbone_weights=str(tmp_path / "missing.pth"))


def _offline_hub(monkeypatch, hub_dir) -> list[str]:
    """Point the torch hub cache at ``hub_dir`` and make every download fail; returns the URLs asked for."""
    import urllib.error

    asked: list[str] = []

    def no_network(url: str, *args, **kwargs) -> None:
        asked.append(url)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub_dir))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return asked


def test_imagenet_weights_offline_is_a_clear_error(tmp_path, monkeypatch) -> None:
    """Offline with an empty cache: the error names the file to place and the torch hub checkpoints dir."""
    asked = _offline_hub(monkeypatch, tmp_path / "hub")
    with pytest.raises(ValueError) as err:
        PiCANet(32, width_mult=TINY, backbone_weights="imagenet")
    msg = str(err.value)
    assert "vgg16-397923af.pth" in msg and str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in msg
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in msg
    assert asked == ["https://download.pytorch.org/models/vgg16-397923af.pth"]  # one try, through torchvision


def test_imagenet_weights_come_from_the_hub_cache(tmp_path, monkeypatch) -> None:
    """With the file in the torch hub cache, 'imagenet' loads it through torchvision without any download."""
    asked = _offline_hub(monkeypatch, tmp_path / "hub")
    state = _random_torchvision_vgg16_state()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth")
    model = PiCANet(32, backbone_weights="imagenet")
    assert asked == []
    torch.testing.assert_close(model.encoder[21].weight, state["features.21.weight"], rtol=0, atol=0)


def test_weights_file_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = PiCANet(32, decoder="full", width_mult=TINY, local_hidden=64, dropout=0.1).eval()
    path = save_picanet(model, tmp_path / "picanet.pt")
    blob = torch.load(path, weights_only=True)
    assert blob["format"] == "visarl-picanet" and blob["hparams"] == model.hparams
    loaded = load_picanet(path)
    assert not loaded.training and loaded.hparams == model.hparams
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).final, model(x).final)


def test_weights_file_errors_name_the_file(tmp_path) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match=r"foreign\.pt.*not a visarl PiCANet"):
        load_picanet(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "visarl-picanet", "x": np.arange(3)}, pickled)  # needs full unpickling: refused
    with pytest.raises(ValueError, match=r"pickled\.pt"):
        load_picanet(pickled)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        load_picanet(text)
    with pytest.raises(ValueError, match=r"missing\.pt"):
        load_picanet(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    state = PiCANet(32, width_mult=TINY).state_dict()
    torch.save(
        {
            "format": "visarl-picanet",
            "hparams": {"input_size": 32, "decoder": "authors", "width_mult": TINY * 2},
            "state_dict": state,
        },
        bad,
    )
    with pytest.raises(ValueError, match=r"bad\.pt.*corrupt"):
        load_picanet(bad)


def test_old_format_weights_without_decoder_metadata_are_refused(tmp_path) -> None:
    """A picanet.pt from before the `decoder` entry (six cells, `global_cells`) is refused by name, not misloaded."""
    model = PiCANet(32, width_mult=TINY)
    old = {k: v for k, v in model.hparams.items() if k != "decoder"}
    for name, hparams in (
        ("six_cells.pt", {**old, "global_cells": [True, True, False, False, False, False]}),
        ("no_decoder.pt", old),
    ):
        path = tmp_path / name
        torch.save({"format": "visarl-picanet", "hparams": hparams, "state_dict": model.state_dict()}, path)
        with pytest.raises(ValueError, match=rf"{name.replace('.', chr(92) + '.')}.*older visarl.*retrain"):
            load_picanet(path)


def test_local_aggregate_gradients_match_unfold() -> None:
    """The hand-written backward of the local attention's weighted sum equals autograd through F.unfold."""
    from visarl.saliency.picanet import _LocalAggregate

    torch.manual_seed(0)
    k, d = 3, 2
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    attn = torch.rand(2, k * k, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _LocalAggregate.apply(a, b, k, d), (x, attn))
    g = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    gx, ga = torch.autograd.grad(_LocalAggregate.apply(x, attn, k, d), (x, attn), g)
    unfolded = F.unfold(x, k, dilation=d, padding=d * (k - 1) // 2).view(2, 3, k * k, 30)
    ref = (unfolded * attn.view(2, 1, k * k, 30)).sum(2).view_as(x)
    rx, ra = torch.autograd.grad(ref, (x, attn), g)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(ga, ra)
