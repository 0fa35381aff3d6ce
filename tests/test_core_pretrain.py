import numpy as np
import pytest
import torch

from napari_mdm.checkpoint import load_backbone, read_tensors
from napari_mdm.corruption import CorruptionConfig, corrupt_batch
from napari_mdm.objectives import pretraining_loss
from napari_mdm.pretrain import PretrainConfig, pretrain, state_path


def _images(n=2, size=64, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for _ in range(n):
        f = rng.uniform(2, 6, 3)
        img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (f[c] * xx + f[(c + 1) % 3] * yy)) for c in range(3)], -1)
        out.append(img.astype(np.float32))
    return out


def _fixed_batch_loss(model, images, corruption):
    x0 = torch.from_numpy(np.stack([im[:32, :32].transpose(2, 0, 1) for im in images]) * 2 - 1)
    c = corrupt_batch(x0, corruption, torch.Generator().manual_seed(123))
    with torch.no_grad():
        return pretraining_loss(model(c.x_t, c.t), x0, c, corruption).item()


def test_pretraining_lowers_the_loss(tmp_path):
    images = _images()
    corruption = CorruptionConfig()
    cfg = PretrainConfig(steps=40, batch_size=4, crop=32, lr=2e-3, seed=0)
    result = pretrain(images, tmp_path / "bb.safetensors", "tiny", corruption, cfg, device="cpu")
    assert result.step == 40 and not result.cancelled and len(result.losses) == 40
    untrained = pretrain(images, None, "tiny", corruption, PretrainConfig(steps=0, crop=32), device="cpu")
    before = _fixed_batch_loss(untrained.backbone.model, images, corruption)
    after = _fixed_batch_loss(result.backbone.model, images, corruption)
    assert after < 0.8 * before
    loaded = load_backbone(tmp_path / "bb.safetensors")
    assert loaded.provenance["steps"] == 40 and loaded.corruption == corruption


@pytest.mark.parametrize("mode", ["ddpm", "umd", "maskdm"])
def test_other_modes_train(mode):
    result = pretrain(
        _images(1),
        None,
        "tiny",
        CorruptionConfig(mode=mode),
        PretrainConfig(steps=3, batch_size=2, crop=32),
        device="cpu",
    )
    assert result.step == 3 and all(np.isfinite(result.losses))


def test_resume_continues_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    images = _images()
    cfg = PretrainConfig(steps=12, batch_size=2, crop=32, lr=1e-3, checkpoint_every=5)
    pretrain(images, tmp_path / "a.safetensors", "tiny", None, cfg, device="cpu")

    calls = {"n": 0}

    def stop_after_seven():
        calls["n"] += 1
        return calls["n"] > 7

    first = pretrain(images, tmp_path / "b.safetensors", "tiny", None, cfg, device="cpu", should_stop=stop_after_seven)
    assert first.cancelled and first.step == 7
    resumed = pretrain(images, tmp_path / "b.safetensors", "tiny", None, cfg, device="cpu", resume=True)
    assert resumed.step == 12 and len(resumed.losses) == 5
    a, meta_a = read_tensors(state_path(tmp_path / "a.safetensors"))
    b, meta_b = read_tensors(state_path(tmp_path / "b.safetensors"))
    assert meta_a["step"] == meta_b["step"] == 12
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_resume_refuses_other_settings(tmp_path):
    from napari_mdm.checkpoint import CheckpointError

    cfg = PretrainConfig(steps=2, batch_size=2, crop=32)
    pretrain(_images(1), tmp_path / "c.safetensors", "tiny", None, cfg, device="cpu")
    with pytest.raises(CheckpointError, match="differ"):
        pretrain(
            _images(1),
            tmp_path / "c.safetensors",
            "tiny",
            CorruptionConfig(mode="ddpm"),
            cfg,
            device="cpu",
            resume=True,
        )


def test_progress_reports_every_step_and_fine_tuning_starts_from_init():
    seen = []
    base = pretrain(_images(1), None, "tiny", None, PretrainConfig(steps=2, batch_size=2, crop=32), device="cpu")
    tuned = pretrain(
        _images(1),
        None,
        "tiny",
        None,
        PretrainConfig(steps=0, crop=32),
        device="cpu",
        init=base.backbone,
        progress=lambda d, t, info: seen.append((d, t, info)),
    )
    for key, value in base.backbone.model.state_dict().items():
        torch.testing.assert_close(tuned.backbone.model.state_dict()[key], value)
    # chained runs keep their history: total steps and the provenance of what they started from
    again = pretrain(
        _images(1),
        None,
        "tiny",
        None,
        PretrainConfig(steps=1, batch_size=2, crop=32),
        device="cpu",
        init=tuned.backbone,
    ).backbone.provenance
    assert again["steps"] == 1 and again["total_steps"] == 3
    assert again["init_provenance"]["init_provenance"] == base.backbone.provenance
    pretrain(
        _images(1),
        None,
        "tiny",
        None,
        PretrainConfig(steps=3, batch_size=2, crop=32),
        device="cpu",
        progress=lambda d, t, info: seen.append((d, t, info)),
    )
    assert [s[0] for s in seen] == [1, 2, 3] and all("loss=" in s[2] and "eta=" in s[2] for s in seen)


def test_ema_past_its_warm_up_is_torchs_averaged_model():
    """Our EMA (warm-up from the Python step, no device counter) equals torch's EMA once warmed up."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from napari_mdm.pretrain import EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GroupNorm(2, 8), torch.nn.Linear(8, 2))
    ours = EMA(model, decay=0.9)
    theirs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    theirs.update_parameters(model)  # torch's first update copies the weights
    for step in range(100, 105):  # past the warm-up, (1 + step) / (10 + step) > 0.9
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ours.update(model, step)
        theirs.update_parameters(model)
    for name, value in theirs.module.state_dict().items():
        torch.testing.assert_close(ours.shadow[name], value)
