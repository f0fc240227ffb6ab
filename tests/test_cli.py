"""The command line: models, info, data synth and argument errors."""

from __future__ import annotations

import json

import pytest

from edgeseg.cli import main, parse_size


def test_models_lists_every_model_with_its_paper(capsys):
    from edgeseg.models import list_models

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert "arXiv 1606.02147" in out


def test_info_reports_the_built_model(capsys):
    pytest.importorskip("keras")
    from edgeseg.models import build
    from edgeseg.models.analysis import profile_model

    assert main(["info", "enet", "--num-classes", "12", "--size", "640x360", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    profile = profile_model(build("enet", 12, (360, 640, 3)))
    assert info["params"] == profile.params == 372_208
    assert info["output_shape"] == [360, 640, 12]
    assert info["gmacs"] == pytest.approx(profile.gmacs)
    assert info["int8_mb"] == pytest.approx(profile.params / 1e6)


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["info", "enett"]) == 2
    assert "Did you mean 'enet'" in capsys.readouterr().err


def test_data_synth_writes_the_camvid_layout(tmp_path, capsys):
    from edgeseg.data import open_dataset

    assert main(["data", "synth", str(tmp_path), "--n-train", "3", "--n-val", "2",
                 "--size", "64x48", "--seed", "1"]) == 0
    train = open_dataset(f"synthetic:{tmp_path}", "train")
    assert len(train) == 3 and train[0][0].shape == (48, 64, 3)
    assert (tmp_path / "annotations" / "instances_val.json").is_file()


@pytest.mark.parametrize("text", ["640", "axb", "0x10", "640x-1"])
def test_bad_sizes_are_refused(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="WIDTHxHEIGHT|positive"):
        parse_size(text)


def test_train_mask_rcnn_needs_a_square_input(tmp_path, capsys):
    pytest.importorskip("tensorflow")
    assert main(["train", "--model", "mobile_mask_rcnn", "--data", "synthetic", "--size",
                 "256x192", "--out", str(tmp_path / "run")]) == 2
    assert "square input whose side is a multiple of 32" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
