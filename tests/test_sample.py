"""sample.py on the checkpoint of the tiny training run: text, JSON, pictures, attention maps, errors."""
import json
import os

import pytest
import torch
from PIL import Image

import sample


def test_prints_predictions(trained_run, synth_root, capsys):
    out, _, _ = trained_run
    images = sorted(os.listdir(os.path.join(synth_root, "images")))[:3]
    paths = [os.path.join(synth_root, "images", f) for f in images]
    assert sample.main(paths + [f"--ckpt={out}/ckpt.pt"]) == 0
    text = capsys.readouterr().out
    model, names = sample.load_model(os.path.join(out, "ckpt.pt"))
    for p in paths:
        assert p in text
    # the printed attributes are those generate emits for these images
    x = torch.stack([sample.Images(paths, 32)[i][1] for i in range(3)])
    pred, scores = model.generate(x)
    first = text.split(paths[1])[0].split(paths[0])[1]
    expected = [f"{scores[0, j]:.2f}  {names[j]}" for j in pred[0].nonzero().flatten().tolist()] or ["(no attribute)"]
    assert [line.strip() for line in first.strip().splitlines()] == expected


def test_json_folder_pictures_attention_and_a_bad_image(trained_run, synth_root, tmp_path, capsys):
    out, _, _ = trained_run
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.open(os.path.join(synth_root, "images", f"{i:06d}.png")).save(folder / f"p{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image")
    pictures = tmp_path / "pictures"
    rc = sample.main([str(folder), f"--ckpt={out}/ckpt.pt", "--json", f"--out={pictures}", "--attention=True",
                      "--layers=all", "--batch_size=2"])
    captured = capsys.readouterr()
    assert rc == 1  # one image failed, the others got their predictions
    result = json.loads(captured.out)
    assert [os.path.basename(r["image"]) for r in result] == ["broken.jpg", "p0.jpg", "p1.jpg", "p2.jpg"]
    assert "cannot read image" in result[0]["error"] and "broken.jpg" in captured.err
    for r in result[1:]:
        assert all(0 < p <= 1 for p in r["attributes"].values())
    written = sorted(os.listdir(pictures))
    assert len([f for f in written if not f.endswith("_attention.png")]) == 3
    assert len([f for f in written if f.endswith("_attention.png")]) == 3


def test_attention_maps_are_distributions(trained_run):
    out, _, _ = trained_run
    model, _ = sample.load_model(os.path.join(out, "ckpt.pt"))
    images = torch.randn(2, 3, 32, 32)
    pred, _ = model.generate(images)
    for layers in ("last", "all"):
        maps = sample.attention_maps(model, images, pred, layers)
        assert maps.shape[2:] == (4, 4)
        # the class token is dropped, so each map sums to at most 1, and to exactly 1 with it
        assert (maps.sum((2, 3)) <= 1 + 1e-5).all() and (maps > 0).all()


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*missing.pt not found"):
        sample.main(["x.jpg", f"--ckpt={tmp_path}/missing.pt"])
    (tmp_path / "other.pt").write_bytes(b"")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt is not a SequencePAR checkpoint of train.py"):
        sample.main(["x.jpg", f"--ckpt={tmp_path}/other.pt"])
    with pytest.raises(ValueError, match=r"no images given"):
        sample.main(["--json"])
    with pytest.raises(ValueError, match=r"unknown option --foo"):
        sample.main(["x.jpg", "--foo=1"])
    with pytest.raises(ValueError, match=r"--layers=first: expected last or all"):
        sample.main(["x.jpg", "--layers=first"])
