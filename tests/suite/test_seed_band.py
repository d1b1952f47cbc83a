"""The seed band: a sweep over seeds summarised, read back, and set against the blog's numbers."""

import json

import numpy as np
import pytest

import lora_core as lc
from lora_core.suite import band_frame, load_seed_band, published_in_band, summarise_seed_band
from lora_core.suite.reports import main as reports_main
from lora_core.suite.reports import write_metrics

PARAMETERS = dict(n=100, d_in=9, d_out=8, epochs=20, r=1, lora_alpha=1.0, eval_every=10)
EPOCHS = (10, 20)


def fake_metrics(seed):
    """Numbers that differ from seed to seed in a known way (so the band can be checked by hand)."""
    rng = np.random.default_rng(seed)
    metrics = {f"pretrain_loss_epoch_{e}": float(rng.uniform(1, 2)) / e for e in EPOCHS}
    metrics.update({f"lora_loss_epoch_{e}": float(rng.uniform(3, 4)) / e for e in EPOCHS})
    metrics.update(
        pretrain_final_loss=metrics["pretrain_loss_epoch_20"],
        lora_final_loss=metrics["lora_loss_epoch_20"],
        shifted_base_loss=float(rng.normal(9, 1)),
        merged_loss=metrics["lora_loss_epoch_20"] * 1.0001,
        delta_mean=float(rng.normal(1, 0.01)),
        total_seconds=float(rng.uniform(1, 9)),
    )
    return metrics


def make_sweep(folder, seeds, parameters=PARAMETERS, finished=None):
    """A lora-sweep folder over ``seeds``: sweep.json, and each config's metrics.json."""
    configs = []
    for seed in seeds:
        path = f"seed={seed}"
        configs.append({"path": path, "parameters": {"seed": seed}})
        if finished is None or seed in finished:
            recorded = {**parameters, "seed": seed, "device": "cpu", "cache_base": seed % 2 == 0}
            recorded["output_dir"] = str(folder / path)
            write_metrics(folder / path, "01_rank1_recovery", recorded, fake_metrics(seed), environment={})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.json").write_text(
        json.dumps({"grid": {"seed": list(seeds)}, "fixed": {}, "configs": configs})
    )
    (folder / "summary.csv").write_text("path,status\n")
    return folder


def test_the_band_is_the_min_median_and_max_over_seeds_at_each_logged_epoch(tmp_path):
    seeds = [3, 0, 1, 2]
    band = summarise_seed_band(make_sweep(tmp_path / "sweep", seeds))
    runs = {seed: fake_metrics(seed) for seed in seeds}
    assert band["seeds"] == [0, 1, 2, 3]
    assert band["notebook"] == "01_rank1_recovery"
    # Only what decides the numbers: not the seed, the folder, the device or the cache switch.
    assert band["parameters"] == PARAMETERS
    for curve in ("pretrain_loss", "lora_loss"):
        frame = band_frame(band, curve)
        assert list(frame.index) == list(EPOCHS)
        for epoch in EPOCHS:
            values = [runs[s][f"{curve}_epoch_{epoch}"] for s in seeds]
            assert frame.loc[epoch, "min"] == min(values)
            assert frame.loc[epoch, "max"] == max(values)
            assert frame.loc[epoch, "median"] == pytest.approx(sorted(values)[1] / 2 + sorted(values)[2] / 2)
    shifted = band["metrics"]["shifted_base_loss"]
    assert shifted["min"] == min(runs[s]["shifted_base_loss"] for s in seeds)
    assert shifted["max"] == max(runs[s]["shifted_base_loss"] for s in seeds)
    assert shifted["runs"] == 4 and shifted["by_seed"]["2"] == runs[2]["shifted_base_loss"]
    assert set(band["metrics"]) == {
        "pretrain_final_loss", "shifted_base_loss", "lora_final_loss", "merged_loss", "delta_mean",
    }  # fmt: skip


def test_the_command_writes_the_band_file(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", [0, 1, 2])
    out = tmp_path / "baselines" / "01_rank1_recovery.seeds.json"
    assert reports_main(["seed-band", str(sweep), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(json.dumps(summarise_seed_band(sweep)))


@pytest.mark.parametrize(
    "seeds, finished, parameters, message",
    [
        ([0, 1, 2], {0, 2}, PARAMETERS, "1 config(s) have no metrics.json (seed=1)"),
        ([0], None, PARAMETERS, "a band needs at least two seeds, it holds 1"),
    ],
)
def test_a_sweep_that_cannot_make_a_band_is_refused(tmp_path, seeds, finished, parameters, message):
    sweep = make_sweep(tmp_path / "sweep", seeds, parameters, finished)
    with pytest.raises(ValueError, match="sweep_dir=.* is not allowed") as caught:
        summarise_seed_band(sweep)
    assert message in str(caught.value)
    assert reports_main(["seed-band", str(sweep), "--out", str(tmp_path / "band.json")]) == 2
    assert not (tmp_path / "band.json").exists()


def test_finished_only_bands_the_finished_seeds_and_names_the_others(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", [0, 1, 2, 3], finished={0, 1, 3})
    out = tmp_path / "band.json"
    assert reports_main(["seed-band", str(sweep), "--out", str(out), "--finished-only"]) == 0
    band = json.loads(out.read_text())
    assert band["seeds"] == [0, 1, 3] and band["unfinished"] == ["seed=2"]
    assert band["metrics"]["delta_mean"]["max"] == max(fake_metrics(s)["delta_mean"] for s in (0, 1, 3))


def test_runs_that_differ_in_more_than_the_seed_are_refused(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", [0, 1])
    make_sweep(tmp_path / "other", [1], {**PARAMETERS, "r": 2})
    (sweep / "seed=1" / "metrics.json").write_bytes(
        (tmp_path / "other" / "seed=1" / "metrics.json").read_bytes()
    )
    with pytest.raises(ValueError, match="the run of seed 1 differs from the run of seed 0 in r"):
        summarise_seed_band(sweep)


def test_a_stored_band_is_read_back_only_for_its_own_setup(tmp_path):
    out = tmp_path / "band.json"
    reports_main(["seed-band", str(make_sweep(tmp_path / "sweep", [0, 1])), "--out", str(out)])
    run = {**PARAMETERS, "seed": 7, "output_dir": "/elsewhere", "device": "cuda", "cache_frozen": False}
    assert load_seed_band(out, run)["seeds"] == [0, 1]  # another seed, folder or device: same setup
    assert load_seed_band(out, {**run, "lora_alpha": 8.0}) is None
    assert load_seed_band(out)["seeds"] == [0, 1]
    with pytest.warns(UserWarning, match="no seed band at .*missing.json: figures and tables go without one"):
        assert load_seed_band(tmp_path / "missing.json", run) is None


def band_around(published, spread):
    """A band of notebook 01 spanning each published number times (1 - spread, 1 + spread)."""
    curves = {}
    for curve, table in (("pretrain_loss", lc.BLOG_PRETRAIN_LOSSES), ("lora_loss", lc.BLOG_LORA_LOSSES)):
        epochs = sorted(table)
        curves[curve] = {
            "epoch": epochs,
            "min": [table[e] * (1 - spread) * published for e in epochs],
            "median": [table[e] * published for e in epochs],
            "max": [table[e] * (1 + spread) * published for e in epochs],
        }
    metrics = {
        name: {
            "min": value * (1 - spread) * published,
            "median": value * published,
            "max": value * (1 + spread) * published,
        }
        for name, value in (
            ("shifted_base_loss", lc.BLOG_SHIFTED_BASE_LOSS),
            ("merged_loss", lc.BLOG_MERGED_LOSS),
        )
    }
    return {"curves": curves, "metrics": metrics}


def test_published_numbers_are_set_inside_or_outside_the_band():
    inside = published_in_band(band_around(1.0, 0.01))
    assert len(inside) == len(lc.BLOG_PRETRAIN_LOSSES) + len(lc.BLOG_LORA_LOSSES) + 2
    assert inside["inside"].all()
    assert inside.loc["LoRA loss, epoch 100", "published"] == lc.BLOG_LORA_LOSSES[100]
    assert inside.loc["base model on the shifted task", "published"] == lc.BLOG_SHIFTED_BASE_LOSS
    # The same band moved 5 % up: every published number now lies below it.
    assert not published_in_band(band_around(1.05, 0.01))["inside"].any()
