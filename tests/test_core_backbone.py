import pytest
import torch

from napari_mdm.backbone import (
    POOLED_ATTENTION_TOKENS,
    PRESETS,
    Attention,
    UNetConfig,
    build_backbone,
    count_parameters,
    pooled_attention,
)


def test_presets_fit_their_budgets():
    assert count_parameters(build_backbone("tiny")) <= 2_000_000
    small = count_parameters(build_backbone("small"))
    assert small <= 8_000_000
    assert small * 2 <= 16 * 2**20  # float16 weights fit in 16 MiB
    paper = PRESETS["paper"]
    assert paper.base_channels == 192 and paper.channel_mult == (1, 1, 2, 2, 4, 4) and paper.num_res_blocks == 2


def test_forward_keeps_image_shape_and_decoder_blocks_are_addressable():
    torch.manual_seed(0)
    model = build_backbone("tiny").eval()
    x, t = torch.randn(2, 3, 32, 48), torch.tensor([0, 999])
    assert model(x, t).shape == x.shape
    blocks = tuple(range(len(model.output_blocks)))
    feats = model.decoder_features(x, t, blocks)
    assert sorted(feats) == list(blocks)
    for b, f in feats.items():
        assert f.shape[1] == model.block_channels[b]
        assert f.shape[-2:] == (32 // model.block_scale(b), 48 // model.block_scale(b))


def test_decoder_features_stop_early_and_match_full_pass():
    torch.manual_seed(0)
    model = build_backbone("tiny").eval()
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([50])
    last = len(model.output_blocks) - 1
    with torch.no_grad():
        partial = model.decoder_features(x, t, (2,))[2]
        full = model.decoder_features(x, t, (2, last))[2]
    torch.testing.assert_close(partial, full)


def test_bad_sizes_and_blocks_are_clear_errors():
    model = build_backbone("tiny")
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.randn(1, 3, 30, 32), torch.tensor([1]))
    with pytest.raises(ValueError, match="do not exist"):
        model.decoder_features(torch.randn(1, 3, 32, 32), torch.tensor([1]), (99,))
    with pytest.raises(ValueError, match="unknown preset"):
        build_backbone("huge")


def test_config_round_trips_through_dict():
    cfg = PRESETS["small"]
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown settings"):
        UNetConfig.from_dict({**cfg.to_dict(), "wings": 2})


def test_the_shipped_backbone_is_the_default_and_says_how_it_was_made():
    import json

    from napari_mdm import cli
    from napari_mdm.checkpoint import default_backbone_name, load_backbone, shipped_backbones

    path = shipped_backbones()["histology"]
    assert default_backbone_name() == "histology"
    assert path.stat().st_size <= 16 * 2**20  # float16, within the size a release may carry
    backbone = load_backbone()
    made = backbone.provenance
    assert made["preset"] == "small" and backbone.corruption.mode == "mdm"
    for key in ("total_steps", "batch_size", "crop", "data", "device", "wall_seconds", "command", "benchmark"):
        assert made[key], key
    assert json.loads(path.with_suffix(".json").read_text())["provenance"] == made
    # the CLI's --backbone accepts it by name, and omitting --backbone gives the same weights
    args = cli.build_parser().parse_args(
        ["reconstruct", "--backbone", "histology", "--image", "x.png", "--out", "y.tif", "--device", "cpu"]
    )
    named = cli._backbone(args)
    assert named.digest == backbone.digest


def _attention_with_output() -> Attention:
    torch.manual_seed(0)
    layer = Attention(64, 32).eval()
    torch.nn.init.normal_(layer.proj.weight, std=0.2)  # built zeroed, as an untrained network's
    return layer


def test_pooled_attention_attends_to_cell_means_and_only_on_large_maps():
    layer = _attention_with_output()
    side = int(POOLED_ATTENTION_TOKENS**0.5)
    smooth = torch.randn(1, 64, side // 2, side // 2).repeat_interleave(2, -1).repeat_interleave(2, -2)
    rough = torch.randn(1, 64, side, side)
    with torch.no_grad():
        exact_smooth, exact_rough = layer(smooth), layer(rough)
        with pooled_attention(2):
            pooled_smooth, pooled_rough = layer(smooth), layer(rough)
            small = torch.randn(1, 64, side // 2, side // 2)
            torch.testing.assert_close(layer(small), _attention_with_output()(small))  # too small to pool
        torch.testing.assert_close(layer(rough), exact_rough)  # exact again outside the block
    # keys repeated over 2 x 2 cells weigh alike in the softmax: their means are the same attention
    torch.testing.assert_close(pooled_smooth, exact_smooth, atol=1e-4, rtol=1e-4)
    # on detail finer than a cell the output differs, and only a little
    change = (pooled_rough - exact_rough).norm() / (exact_rough - rough).norm()
    assert 1e-3 < change < 0.5, change


def test_pooled_attention_is_set_per_thread():
    import threading

    layer, x = _attention_with_output(), torch.randn(1, 64, 64, 64)
    with torch.no_grad():
        exact = layer(x)
        seen = {}
        with pooled_attention(2):
            thread = threading.Thread(target=lambda: seen.update(out=layer(x)))
            thread.start()
            thread.join()
    torch.testing.assert_close(seen["out"], exact)  # another thread's pass stays exact
