"""MultiMAE (visarl.mae): shapes, masking sampler, patchify, loss, training, gradients, frozen encoder, checkpoints."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from visarl.mae import (
    FrozenEncoder,
    MultiMAE,
    ReconstructionLoss,
    WeightedMSE,
    allocate_budget,
    build_multimae,
    dirichlet_masks,
    load_encoder,
    load_model,
    masked_error,
    masked_mse,
    patchify,
    sample_dirichlet,
    save_checkpoint,
    unpatchify,
    visible_ids,
)
from visarl.mae.masking import sample_gamma
from visarl.mae.stage import PretrainConfig

B = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def images(b: int = B, seed: int = 0, modalities: tuple[str, ...] = ("rgb", "saliency")) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"rgb": torch.rand(b, 3, 64, 64, generator=g), "saliency": torch.rand(b, 1, 64, 64, generator=g)}
    return {m: out[m] for m in modalities}


def tiny(modalities: tuple[str, ...] = ("rgb", "saliency"), **kw) -> MultiMAE:
    torch.manual_seed(0)
    return build_multimae("tiny", modalities, **kw)


# ---------------------------------------------------------------- patches


@pytest.mark.parametrize("c,h,w", [(3, 64, 64), (1, 64, 64), (2, 16, 40)])
def test_unpatchify_inverts_patchify(c, h, w):
    x = torch.randn(2, c, h, w)
    p = patchify(x, 8)
    assert p.shape == (2, (h // 8) * (w // 8), 64 * c)
    grid = None if h == w else (h // 8, w // 8)
    assert torch.equal(unpatchify(p, 8, grid), x)


def test_patchify_layout_matches_numpy():
    x = torch.randn(2, 3, 16, 24)
    p = patchify(x, 8).numpy()
    xn = x.numpy()
    for i in range(2):
        for j in range(3):
            # patch (i, j) is row-major number i * 3 + j, flattened as (row, col, channel)
            expect = xn[:, :, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8].transpose(0, 2, 3, 1).reshape(2, -1)
            np.testing.assert_array_equal(p[:, i * 3 + j], expect)


# ---------------------------------------------------------------- masking sampler


def test_gamma_sampler_moments():
    g = torch.Generator().manual_seed(0)
    for a in (0.3, 1.0, 4.0):
        s = sample_gamma((20000,), a, g)
        assert s.min() > 0
        assert abs(s.mean().item() - a) < 0.05 * a + 0.02
        assert abs(s.var().item() - a) < 0.1 * a + 0.02


def test_dirichlet_two_modalities_alpha1_is_uniform_split():
    # Dirichlet(1, 1) on two modalities: the first share is Uniform(0, 1)
    shares = sample_dirichlet(20000, 2, 1.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(shares.sum(1), torch.ones(20000))
    hist = torch.histc(shares[:, 0], bins=10, min=0, max=1) / 20000
    assert (hist - 0.1).abs().max() < 0.015


@pytest.mark.parametrize("alpha", [0.2, 1.0, 5.0])
@pytest.mark.parametrize("caps,budget", [((64, 64), 32), ((64, 64), 100), ((64, 16, 64), 70), ((8, 8), 16)])
def test_budget_exact_and_capped(alpha, caps, budget):
    shares = sample_dirichlet(2000, len(caps), alpha, torch.Generator().manual_seed(2))
    counts = allocate_budget(shares, budget, caps)
    assert (counts.sum(1) == budget).all()
    assert (counts >= 0).all() and (counts <= torch.tensor(caps)).all()
    # rounding moves each count by less than one token from its share, unless capping shifted tokens
    if budget * 1.0 <= min(caps):
        assert ((counts - shares * budget).abs() < 1.0).all()


def test_budget_rejects_impossible():
    with pytest.raises(ValueError, match="budget"):
        allocate_budget(torch.full((2, 2), 0.5), 200, (64, 64))


def test_masks_over_many_draws():
    hidden_rgb, hidden_sal = dirichlet_masks(5000, (64, 64), 32, 1.0, torch.Generator().manual_seed(3))
    vis_rgb, vis_sal = (~hidden_rgb).sum(1), (~hidden_sal).sum(1)
    assert ((vis_rgb + vis_sal) == 32).all()  # exactly the budget, every sample
    assert (vis_rgb > 0).float().mean() > 0.9 and (vis_sal > 0).float().mean() > 0.9
    lopsided = ((vis_rgb >= 29) | (vis_sal >= 29)).float().mean()
    assert 0.1 < lopsided < 0.3  # P(share > 28.5/32 for one of two) = 2 * 3.5/32 ~ 0.22 under Uniform shares
    assert abs(vis_rgb.float().mean().item() - 16) < 0.5
    # uniform inside a modality: every token position is visible about equally often
    freq = (~hidden_rgb).float().mean(0)
    assert (freq - freq.mean()).abs().max() < 0.05


def test_masks_reproducible_with_generator():
    a = dirichlet_masks(8, (64, 64), 32, 1.0, torch.Generator().manual_seed(7))
    b = dirichlet_masks(8, (64, 64), 32, 1.0, torch.Generator().manual_seed(7))
    c = dirichlet_masks(8, (64, 64), 32, 1.0, torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_visible_ids_rejects_ragged_masks():
    hidden = torch.ones(2, 10, dtype=torch.bool)
    hidden[0, :3] = False
    hidden[1, :4] = False
    with pytest.raises(ValueError, match="same number of visible"):
        visible_ids(hidden)


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("modalities", [("rgb",), ("rgb", "saliency")])
def test_shapes(modalities):
    model = tiny(modalities)
    x = images(modalities=modalities)
    out = model(x, num_visible=32, generator=torch.Generator().manual_seed(0))
    chans = {"rgb": 3, "saliency": 1}
    assert set(out.preds) == set(modalities)
    for m in modalities:
        assert out.preds[m].shape == (B, 64, 64 * chans[m])
        assert out.masks[m].shape == (B, 64) and out.masks[m].dtype == torch.bool
        assert torch.isfinite(out.preds[m]).all()
    assert out.ids_visible.shape == (B, 32)
    assert model.forward_features(x).shape == (B, 1 + 64 * len(modalities), 64)  # the global token first


def test_global_token_and_norm_rgb_output_shapes():
    model = tiny(global_token=True, norm_rgb_output=True)
    x = images()
    out = model(x)
    assert set(out.preds) == {"rgb", "saliency", "rgb_norm"}
    assert out.preds["rgb_norm"].shape == (B, 64, 192)
    assert model.forward_features(x).shape == (B, 1 + 128, 64)


@pytest.mark.parametrize("modalities,visible", [(("rgb", "saliency"), 32), (("rgb",), 16)])
def test_default_masking_hides_three_quarters_of_this_models_tokens(modalities, visible):
    """Without num_visible, the model masks as the pretrain stage does by default (75%): an rgb-only model sees 16
    of its 64 tokens, not the 32 an rgb + saliency model sees."""
    model = tiny(modalities)
    out = model(images(modalities=modalities), generator=torch.Generator().manual_seed(1))
    assert out.ids_visible.shape == (B, visible)
    assert PretrainConfig(modalities=list(modalities)).num_visible == visible


def test_masks_consistent_with_visible_ids():
    model = tiny()
    out = model(images(), generator=torch.Generator().manual_seed(4))
    hidden = torch.cat([out.masks["rgb"], out.masks["saliency"]], dim=1)
    for b in range(B):
        assert out.ids_visible[b].tolist() == torch.nonzero(~hidden[b]).flatten().tolist()
    assert ((~hidden).sum(1) == 32).all()


def test_hidden_patches_do_not_reach_the_model():
    """Changing the pixels of hidden patches leaves every prediction unchanged; a visible patch changes them."""
    model = tiny().eval()
    x = images()
    masks = model.sample_masks(B, 32, 1.0, torch.Generator().manual_seed(5))
    ref = model(x, masks=masks).preds
    y = {m: v.clone() for m, v in x.items()}
    for m in y:
        # overwrite all hidden patches with noise
        patches = patchify(y[m], 8)
        patches[masks[m]] = torch.randn_like(patches[masks[m]])
        y[m] = unpatchify(patches, 8)
    for m, pred in model(y, masks=masks).preds.items():
        torch.testing.assert_close(pred, ref[m])
    b, tok = torch.nonzero(~masks["rgb"])[0].tolist()
    z = {m: v.clone() for m, v in x.items()}
    r, c = divmod(tok, 8)
    z["rgb"][b, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] += 0.5
    assert not torch.allclose(model(z, masks=masks).preds["saliency"][b], ref["saliency"][b])


def test_decoder_puts_visible_tokens_in_place():
    """With cross-attention, MLP and blocks silenced, a decoder's output at a patch depends only on what sits there:
    the projected encoder token of a visible patch, or the mask token, plus that patch's embeddings (the decoder
    with a residual around its cross-attention, so that the query passes through)."""
    model = tiny(global_token=False, decoder_residual=True).eval()
    dec = model.decoders["saliency"]  # queries are the second modality block
    for lin in (dec.cross_attn.proj, dec.mlp.fc2):
        torch.nn.init.zeros_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
    dec.blocks = torch.nn.Sequential()
    g = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randperm(128, generator=g)[:32].sort().values for _ in range(B)])
    encoded = torch.randn(B, 32, 64, generator=g)
    with torch.no_grad():
        out = dec(encoded, ids)
        emb = dec.pos_embed[0] + dec.modality_embed[0, 1, 0]  # [64, d] embeddings of the saliency block
        for b in range(B):
            for tok in range(64):
                where = (ids[b] == 64 + tok).nonzero()
                q = dec.proj_context(encoded[b, where[0, 0]]) if len(where) else dec.mask_token[0, 0]
                torch.testing.assert_close(out[b, tok], dec.head(dec.norm(q + emb[tok])))


def test_fused_and_eager_attention_agree():
    model = tiny().eval()
    x = images()
    masks = model.sample_masks(B, 32, 1.0, torch.Generator().manual_seed(6))
    fused = model(x, masks=masks).preds
    model.set_fused_attn(False)
    assert all(not m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    eager = model(x, masks=masks).preds
    for m in fused:
        torch.testing.assert_close(fused[m], eager[m], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("global_token", [False, True])
def test_bf16_autocast_trains(global_token):
    model = tiny(global_token=global_token)
    x = images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, generator=torch.Generator().manual_seed(0))
        loss = WeightedMSE.for_model(model)(out.preds, x, out.masks).total
    loss.backward()
    assert out.preds["rgb"].dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_inputs_are_named():
    model = tiny()
    with pytest.raises(ValueError, match="saliency"):
        model({"rgb": torch.rand(2, 3, 64, 64), "saliency": torch.rand(2, 3, 64, 64)})
    with pytest.raises(ValueError, match="missing"):
        model({"rgb": torch.rand(2, 3, 64, 64)})
    with pytest.raises(ValueError, match="masks need"):
        model(images(), masks={"rgb": torch.zeros(B, 64, dtype=torch.bool)})
    with pytest.raises(ValueError, match="depth"):
        model.forward_features({"depth": torch.rand(2, 1, 64, 64)})


@pytest.mark.parametrize("kw", [{}, {"global_token": True, "norm_rgb_output": True}])
def test_every_parameter_gets_a_gradient(kw):
    model = tiny(**kw)
    x = images(b=8)
    out = model(x, generator=torch.Generator().manual_seed(0))
    loss = WeightedMSE.for_model(model)(out.preds, x, out.masks).total
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []


def test_paper_size_parameter_count():
    both = sum(p.numel() for p in build_multimae("paper", ("rgb", "saliency")).parameters())
    rgb = sum(p.numel() for p in build_multimae("paper", ("rgb",)).parameters())
    assert 8e6 < both < 16e6, both  # Table II: about 12M
    assert 5e6 < rgb < both


# ---------------------------------------------------------------- loss


def test_masked_mse_matches_numpy():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 5, 6, generator=g), torch.randn(3, 5, 6, generator=g)
    hidden = torch.rand(3, 5, generator=g) > 0.5
    p, t, h = pred.numpy(), target.numpy(), hidden.numpy()
    expect = ((p - t) ** 2).mean(-1)[h].mean()
    assert masked_mse(pred, target, hidden).item() == pytest.approx(float(expect), rel=1e-5)


def test_loss_ignores_visible_patches():
    model = tiny()
    x = images()
    out = model(x, generator=torch.Generator().manual_seed(9))
    loss_fn = WeightedMSE(8, {"rgb": 1.0, "saliency": 2.0}, normalize=("rgb",))
    base = loss_fn(out.preds, x, out.masks)
    for m in ("rgb", "saliency"):
        for hidden_patch, changes in ((False, False), (True, True)):
            b, tok = torch.nonzero(out.masks[m] == hidden_patch)[0].tolist()
            r, c = divmod(tok, 8)
            y = {k: v.clone() for k, v in x.items()}
            y[m][b, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = torch.rand(y[m].shape[1], 8, 8)
            new = loss_fn(out.preds, y, out.masks)
            assert (new.terms[m] != base.terms[m]).item() is changes
    total = base.terms["rgb"] + 2.0 * base.terms["saliency"]
    torch.testing.assert_close(base.total, total)


def test_normalized_rgb_targets():
    x = images()
    t = WeightedMSE(8, normalize=("rgb",)).target("rgb", x)
    torch.testing.assert_close(t.mean(-1), torch.zeros(B, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.std(-1, unbiased=True), torch.ones(B, 64), atol=1e-3, rtol=0)  # MAE's .var()
    raw = WeightedMSE(8, normalize=()).target("rgb", x)
    assert torch.equal(raw, patchify(x["rgb"], 8))
    assert torch.allclose(WeightedMSE(8, normalize=()).target("rgb_norm", x), t)


def test_loss_falls_with_adamw():
    # 32x32 images (16 tokens a modality, 8 visible) keep this fast on a shared CPU; same code as 64x64
    model = tiny(image_size=32)
    g = torch.Generator().manual_seed(1)
    x = {"rgb": torch.rand(8, 3, 32, 32, generator=g), "saliency": torch.rand(8, 1, 32, 32, generator=g)}
    # smooth images so there is something to learn beyond memorising noise
    x = {m: torch.nn.functional.avg_pool2d(v, 9, 1, 4) for m, v in x.items()}
    loss_fn = WeightedMSE.for_model(model)
    eval_masks = model.sample_masks(8, 8, 1.0, torch.Generator().manual_seed(100))

    def eval_loss() -> float:
        with torch.no_grad():
            return loss_fn(model(x, masks=eval_masks).preds, x, eval_masks).total.item()

    before = eval_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        out = model(x, num_visible=8, generator=g)
        loss = loss_fn(out.preds, x, out.masks).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.5 * before, (before, after)


# ---------------------------------------------------------------- frozen encoder and checkpoints


def test_frozen_encoder():
    model = tiny()
    enc = FrozenEncoder.from_model(model)
    x = images()
    assert enc.out_dim == 64 and not enc.training
    assert all(not p.requires_grad for p in enc.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the model itself stays trainable
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    y = enc(x)
    assert y.shape == (B, 64) and not y.requires_grad
    assert torch.equal(y, enc(x["rgb"], x["saliency"]))  # positional form, deterministic
    with torch.no_grad():
        torch.testing.assert_close(y, model.forward_features(x)[:, 1:].mean(1))  # the global token left out
    with pytest.raises(ValueError, match="missing"):
        enc(x["rgb"])


def test_checkpoint_round_trip(tmp_path):
    model = tiny(global_token=True).eval()
    path = tmp_path / "mae.pt"
    save_checkpoint(model, path)
    x = images()
    with torch.no_grad():
        feats = model.forward_features(x)  # [B, 1 + 128, D]
        rgb_feats = model.forward_features({"rgb": x["rgb"]})
    torch.testing.assert_close(load_encoder(path)(x), feats[:, 1:].mean(1))
    torch.testing.assert_close(load_encoder(path, pooling="global")(x), feats[:, 0])
    # pretrain-only variant: rgb alone at RL time, saliency (if passed) is ignored
    po = load_encoder(path, modalities=("rgb",))
    assert isinstance(po, FrozenEncoder) and po.modalities == ("rgb",)
    torch.testing.assert_close(po(x), rgb_feats[:, 1:].mean(1))
    torch.testing.assert_close(po(x["rgb"]), rgb_feats[:, 1:].mean(1))
    # the whole model too
    again = load_model(path).eval()
    masks = model.sample_masks(B, 32, 1.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(again(x, masks=masks).preds["rgb"], model(x, masks=masks).preds["rgb"])


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_checkpoint_files(tmp_path):
    files = {
        "noise.pt": lambda p: p.write_bytes(b"\x00garbage" * 10),
        "other.pt": lambda p: torch.save({"state_dict": {}, "epoch": 3}, p),
        "tensor.pt": lambda p: torch.save(torch.zeros(3), p),
        "pickle.pt": lambda p: p.write_bytes(pickle.dumps(_Evil())),
        "objects.pt": lambda p: torch.save({"format": "visarl-multimae", "obj": _Evil()}, p),
    }
    for name, write in files.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(ValueError, match="not a visarl-multimae checkpoint") as info:
            load_encoder(path)
        assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="no such"):
        load_encoder(tmp_path / "missing.pt")
    # right format, wrong weights
    model = tiny()
    path = tmp_path / "wrong.pt"
    save_checkpoint(model, path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["hparams"]["dim"] = 32
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="does not fit") as info:
        load_encoder(path)
    assert str(path) in str(info.value)


def test_frozen_encoder_rejects_bad_options():
    model = tiny()
    with pytest.raises(ValueError, match="subset"):
        FrozenEncoder.from_model(model, modalities=("depth",))
    with pytest.raises(ValueError, match="global token"):
        FrozenEncoder.from_model(tiny(global_token=False), pooling="global")
    with pytest.raises(ValueError, match="pooling"):
        FrozenEncoder.from_model(model, pooling="max")


# ---------------------------------------------------------------- the authors' recipe: loss kinds, encoder, versions


@pytest.mark.parametrize("kind", ["mse", "l1"])
@pytest.mark.parametrize("reduction", ["per_example", "pooled"])
def test_masked_error_matches_a_hand_computation(kind, reduction):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 6, 5, generator=g), torch.randn(4, 6, 5, generator=g)
    hidden = torch.rand(4, 6, generator=g) > 0.5
    hidden[2] = False  # an example hiding nothing is skipped by the per-example mean (MultiMAE's nanmean)
    hidden[0, :5] = True
    p, t, h = pred.numpy().astype(np.float64), target.numpy().astype(np.float64), hidden.numpy()
    err = (p - t) ** 2 if kind == "mse" else np.abs(p - t)  # [B, N, P]
    per_patch = err.mean(-1)
    if reduction == "pooled":
        expect = per_patch[h].mean()
    else:
        expect = np.mean([per_patch[b][h[b]].mean() for b in range(4) if h[b].any()])
    assert masked_error(pred, target, hidden, kind, reduction).item() == pytest.approx(float(expect), rel=1e-5)
    assert masked_error(pred, target, torch.zeros_like(hidden), kind, reduction).item() == 0.0


def test_l1_and_mse_differ_as_by_hand():
    pred = torch.zeros(1, 2, 4)
    target = torch.tensor([[[0.5, -0.5, 2.0, 0.0], [9.0, 9.0, 9.0, 9.0]]])
    hidden = torch.tensor([[True, False]])  # the second patch is visible: never scored
    assert masked_error(pred, target, hidden, "l1").item() == pytest.approx((0.5 + 0.5 + 2.0) / 4)
    assert masked_error(pred, target, hidden, "mse").item() == pytest.approx((0.25 + 0.25 + 4.0) / 4)


def test_table_loss_is_the_authors_rgb_mse_saliency_l1_times_10():
    """The default loss of a model, term by term against numpy: rgb MSE and rgb_norm MSE on ImageNet-standardised
    targets (rgb_norm per patch), saliency L1 weighted 10, each a per-example mean over hidden patches."""
    model = tiny(norm_rgb_output=True)
    x = images()
    out = model(x, generator=torch.Generator().manual_seed(2))
    loss_fn = ReconstructionLoss.for_model(model)
    assert loss_fn.kind("rgb") == "mse" and loss_fn.kind("rgb_norm") == "mse" and loss_fn.kind("saliency") == "l1"
    loss = loss_fn(out.preds, x, out.masks)
    mean, std = np.array([0.485, 0.456, 0.406])[:, None, None], np.array([0.229, 0.224, 0.225])[:, None, None]
    rgb = (x["rgb"].numpy().astype(np.float64) - mean) / std

    def patches(img: np.ndarray) -> np.ndarray:  # [B, C, 64, 64] -> [B, 64, 8*8*C], (row, col, channel) order
        b, c = img.shape[:2]
        return img.reshape(b, c, 8, 8, 8, 8).transpose(0, 2, 4, 3, 5, 1).reshape(b, 64, 64 * c)

    def term(pred: torch.Tensor, target: np.ndarray, hidden: torch.Tensor, l1: bool) -> float:
        d = pred.detach().numpy().astype(np.float64) - target
        per_patch = (np.abs(d) if l1 else d**2).mean(-1)
        h = hidden.numpy()
        return float(np.mean([per_patch[b][h[b]].mean() for b in range(len(h)) if h[b].any()]))

    t = patches(rgb)
    t_norm = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)
    expect = {
        "rgb": term(out.preds["rgb"], t, out.masks["rgb"], False),
        "rgb_norm": term(out.preds["rgb_norm"], t_norm, out.masks["rgb"], False),
        "saliency": term(out.preds["saliency"], patches(x["saliency"].numpy()), out.masks["saliency"], True),
    }
    for name, value in expect.items():
        assert loss.terms[name].item() == pytest.approx(value, rel=1e-4), name
    total = expect["rgb"] + expect["rgb_norm"] + 10 * expect["saliency"]
    assert loss.total.item() == pytest.approx(total, rel=1e-4)


def test_encoder_has_a_global_token_and_no_final_norm():
    model = tiny()
    enc = model.encoder
    assert enc.global_token is not None and enc.num_global == 1
    assert isinstance(enc.norm, torch.nn.Identity)
    assert not any(k.startswith("encoder.norm.") for k in model.state_dict())
    x = images()
    with torch.no_grad():
        tokens = enc.tokenize(x, ["rgb", "saliency"])
        by_hand = enc.blocks(torch.cat([enc.global_token.expand(B, -1, -1), tokens], dim=1))  # last block's output
        torch.testing.assert_close(model.forward_features(x), by_hand)
        # the frozen encoder's state: the mean of the 128 patch tokens, finite without a final norm
        state = FrozenEncoder.from_model(model)(x)
    torch.testing.assert_close(state, by_hand[:, 1:].mean(1))
    assert torch.isfinite(state).all()
    assert tiny(final_norm=True).encoder.norm.__class__ is torch.nn.LayerNorm


def test_rgb_enters_the_encoder_standardised_with_imagenet_statistics():
    model = tiny()
    plain = tiny(input_norm="none")
    plain.load_state_dict(model.state_dict())
    x = images()
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_features(x), plain.forward_features({**x, "rgb": (x["rgb"] - mean) / std})
        )
    with pytest.raises(ValueError, match="input_norm"):
        tiny(input_norm="zscore")


def test_version_1_checkpoints_still_load_and_future_ones_fail_clearly(tmp_path):
    # what a checkpoint written before the recipe change held: a final norm, [0, 1] rgb, residual decoders, no
    # global token, format version 1 and none of the new hparams
    old = tiny(global_token=False, final_norm=True, input_norm="none", decoder_residual=True).eval()
    path = tmp_path / "v1.pt"
    save_checkpoint(old, path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["version"] = 1
    for key in ("final_norm", "input_norm", "decoder_residual"):
        del ckpt["hparams"][key]
    torch.save(ckpt, path)
    x = images()
    with torch.no_grad():
        expect = old.forward_features(x).mean(1)
        masks = old.sample_masks(B, 32, 1.0, torch.Generator().manual_seed(0))
        preds = old(x, masks=masks).preds
    torch.testing.assert_close(load_encoder(path)(x), expect)
    again = load_model(path).eval()
    assert again.encoder.input_norm == "none" and again.hparams["final_norm"] is True
    with torch.no_grad():
        torch.testing.assert_close(again(x, masks=masks).preds["saliency"], preds["saliency"])
    ckpt["version"] = 99
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="version 99") as info:
        load_encoder(path)
    assert str(path) in str(info.value)
