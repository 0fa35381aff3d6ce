"""The benchmark harness: its label and split helpers on synthetic masks, and its quick mode
end to end on two tiny crops of the real data (skipped cleanly where ../shared/data is absent)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is a folder of the repo, not installed

from benchmarks import data  # noqa: E402
from benchmarks.labels import BACKGROUND, FOREGROUND, full_labels, scribble_labels  # noqa: E402
from benchmarks.run import PixelStore, main, pick_tests, plans  # noqa: E402


def gland_mask() -> np.ndarray:
    yy, xx = np.mgrid[:120, :160]
    mask = ((yy - 40) ** 2 + (xx - 50) ** 2 < 30**2) | ((yy - 80) ** 2 + (xx - 120) ** 2 < 25**2)
    return mask.astype(np.uint8)


def test_scribbles_are_sparse_inside_their_class_and_reproducible():
    mask = gland_mask()
    labels = scribble_labels(mask, seed=3)
    assert set(np.unique(labels)) == {0, BACKGROUND, FOREGROUND}
    assert (mask[labels == FOREGROUND] == 1).all() and (mask[labels == BACKGROUND] == 0).all()
    assert 0.002 < (labels > 0).mean() < 0.1
    np.testing.assert_array_equal(labels, scribble_labels(mask, seed=3))
    np.testing.assert_array_equal(full_labels(mask), np.where(mask > 0, FOREGROUND, BACKGROUND))


def test_plans_pick_seeded_subsets_and_all_images_for_full_shots():
    runs = plans(10, (3, 10, 50), (0, 1))
    assert [(n, s) for n, s, _ in runs] == [(3, 0), (3, 1), (10, 0), (10, 1), (10, 0), (10, 1)]
    assert runs[0][2] != runs[1][2] and len(set(runs[0][2])) == 3
    assert runs[0][2] == plans(10, (3,), (0,))[0][2]
    assert runs[2][2] == tuple(range(10))


def test_pixel_store_keeps_the_budget_fixed_across_shot_counts():
    store = PixelStore(budget=60)
    for i in range(3):
        labels = np.zeros((10, 10), np.uint8)
        labels[:3], labels[-3:] = BACKGROUND, FOREGROUND
        feats = {"f": np.arange(200, dtype=np.float16).reshape(2, 10, 10) + i}
        store.add(i, "full", labels, feats, cap=60)
    feats, labels = store.take((0, 1, 2), "full", lambda b: b["f"])
    assert [f.shape for f in feats] == [(2, 1, 40)] * 3  # 20 per class and image, 60 per class in all
    assert all((lab == BACKGROUND).sum() == (lab == FOREGROUND).sum() == 20 for lab in labels)
    assert store.fraction((0, 1), "full") == pytest.approx(0.6)


def test_pick_tests_spreads_over_the_list():
    samples = tuple(data.Sample(str(i), None, None) for i in range(80))
    assert [s.name for s in pick_tests(samples, 3)] == ["0", "40", "79"]
    assert len(pick_tests(samples, None)) == 80


@pytest.mark.slow
@pytest.mark.skipif(not data.available(), reason=f"benchmark data not found under {data.DATA_ROOT}")
def test_quick_mode_end_to_end(tmp_path, monkeypatch):
    import benchmarks.run

    kept = benchmarks.run._keep_partial
    partials = []  # what a run stopped after each test image would have left

    def spy(path, records):
        kept(path, records)
        partials.append(json.loads(path.read_text()))

    monkeypatch.setattr(benchmarks.run, "_keep_partial", spy)
    result = main(
        [
            "--quick",
            "--max-size",
            "96",
            "--shots",
            "1",
            "--test-limit",
            "2",
            "--unet-steps",
            "5",
            "--head-steps",
            "20",
            "--no-shipped",
            "--no-speed",
            "--out",
            str(tmp_path),
            "--name",
            "ci",
        ]
    )
    saved = json.loads((tmp_path / "ci.json").read_text())
    assert saved["command"].startswith("python -m benchmarks.run --quick")
    assert (tmp_path / "ci.md").read_text().startswith("# Benchmark `ci`")
    assert (tmp_path / "ci.png").read_bytes()[:4] == b"\x89PNG"
    methods = {"mlp(filters)", "mlp(random)", "mlp(random+filters)", "rf(filters)", "unet(supervised)"}
    rows = saved["summary"]
    assert {(r["method"], r["protocol"]) for r in rows} == {(m, p) for m in methods for p in ("full", "scribble")}
    for row in rows:
        assert row["dataset"] == "glas" and row["shots"] == 1 and row["seeds"] == 1 and row["test_images"] == 2
        assert 0 <= row["mean"] <= 100 and row["std"] == 0
        assert row["label_fraction"] == 1.0 if row["protocol"] == "full" else 0 < row["label_fraction"] < 0.3
    records = [r for r in saved["records"] if "method" in r]
    assert all(len(r["per_image"]) == 2 and all(0 <= d <= 1 for d in r["per_image"].values()) for r in records)
    # the filter bank alone separates glands from stroma on real crops far better than chance
    assert max(r["mean"] for r in rows if r["method"] == "rf(filters)") > 50
    assert saved["summary"] == result["summary"] and saved["peak_rss_mib"] > 0
    assert [{r["test_images"] for r in p["summary"]} for p in partials] == [{1}, {2}]
    assert partials[-1]["summary"] == rows and not (tmp_path / "ci.partial.json").exists()


def test_throughput_measures_the_core_training_loop_and_writes_its_table(tmp_path):
    from benchmarks import throughput

    result = throughput.main(
        [
            "--presets",
            "tiny",
            "--batch-size",
            "2",
            "--crop",
            "32",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--no-compile",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ]
    )
    (row,) = result["rows"]  # fp32 only: the core trains in fp32 on a CPU
    assert row["preset"] == "tiny" and row["precision"] == "fp32" and row["timed_steps"] == 2
    assert row["images_per_s"] > 0 and row["params_M"] < 2
    saved = json.loads((tmp_path / "throughput_cpu.json").read_text())
    assert saved["rows"] == [row] and "| tiny | " in (tmp_path / "throughput_cpu.md").read_text()


def test_fast_path_variants_share_one_feature_pass_per_knob_setting():
    from benchmarks.methods import base_configs
    from benchmarks.run import parse_variant
    from napari_mdm.checkpoint import random_backbone

    backbones = {"random": random_backbone("tiny")}
    p8 = parse_variant("p8=random:blocks=2-4:project=8", backbones)
    p16 = parse_variant("p16=random:blocks=2-4:project=16:filters", backbones)
    half = parse_variant("half=random:project=8:scale=0.5:bf16", backbones)
    assert p8.name == "mlp(p8)" and p8.blocks == (2, 3, 4) and p16.filters and half.bfloat16
    configs = base_configs([p8, p16, half], backbones)
    assert p8.base == p16.base != half.base  # nested components: one pass at the larger projection
    assert configs[p8.base].project == 16 and configs[half.base].scale == 0.5
    pooled = parse_variant("pooled=random:project=8:pool=2", backbones)
    assert pooled.base != p8.base and base_configs([pooled], backbones)[pooled.base].attention_pool == 2
    assert configs[p8.base].attention_pool == 1  # the shared passes stay exact
    every_pixel = parse_variant("c1=random:blocks=2-4:project=8:coarse=1:batch=256", backbones)
    assert every_pixel.head_coarse_stride == 1 and every_pixel.head_batch == 256
    assert every_pixel.base == p8.base  # head knobs: the same pass
    with pytest.raises(SystemExit, match="unknown option"):
        parse_variant("x=random:speed=11", backbones)


@pytest.mark.slow
def test_loop_benchmark_writes_every_stage_per_method(tmp_path):
    from benchmarks import loop

    result = loop.main(
        [
            "--sizes",
            "128",
            "--protocols",
            "scribble",
            "--methods",
            "forest",
            "default",
            "--backbone",
            "random-tiny",
            "--out",
            str(tmp_path),
            "--name",
            "ci",
        ]
    )
    saved = json.loads((tmp_path / "ci.json").read_text())
    assert saved["rows"] == result["rows"] and [r["method"] for r in saved["rows"]] == ["forest", "default"]
    for row in saved["rows"]:
        assert row["size"] == 128 and row["protocol"] == "scribble" and 0 < row["labelled_percent"] < 50
        assert row["first_s"] == pytest.approx(row["features_s"] + row["fit_s"] + row["predict_s"], abs=0.02)
        assert row["retrain_s"] > 0 and row["peak_rss_mib"] >= row["rss_before_mib"] > 0 and 0 <= row["dice"] <= 100
    from napari_mdm.checkpoint import load_backbone
    from napari_mdm.features import FeatureConfig, num_channels

    assert [r["channels"] for r in saved["rows"]] == [144, num_channels(load_backbone("random-tiny"), FeatureConfig())]
    assert "| 128² | scribble" in (tmp_path / "ci.md").read_text()


def test_repeated_loop_runs_report_the_median_run_and_the_range():
    from benchmarks import loop

    runs = [{"first_s": s, "fit_s": s / 10} for s in (2.5, 1.5, 2.0)]
    middle = loop.median_run(runs)
    assert middle == {"first_s": 2.0, "fit_s": 0.2, "first_s_runs": [1.5, 2.0, 2.5]}  # one real run, whole
    assert loop._first(middle) == "2.0 (1.5-2.5)" and loop._first(runs[0]) == "2.5"
    assert loop.median_run(runs[:1]) == runs[0]


def test_the_faces_benchmark_takes_head_settings_other_than_the_defaults():
    from benchmarks import faces

    args = faces.parse_args(["--quick", "--head", "batch_size=1024", "--head", "coarse_stride=1"])
    assert args.head.batch_size == 1024 and args.head.coarse_stride == 1 and args.head.ensemble == 5
    assert faces.parse_args(["--quick"]).head == faces.HeadConfig()
    for bad in ("lr=1", "batch_size=x", "nonsense=3"):
        with pytest.raises(SystemExit):
            faces.parse_args(["--head", bad])
