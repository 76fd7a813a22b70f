"""sample.py on the checkpoint of the tiny training run: text, JSON, pictures, attention maps, errors."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import sample
from conftest import write_png


# what sample.py says first about a run that chose each attribute's threshold on val
CHOSEN = "decided at each attribute's threshold, chosen on val (--threshold=T decides every attribute at T)\n"


def test_prints_predictions(trained_run, synth_root, capsys):
    out, _, _ = trained_run
    images = sorted(os.listdir(os.path.join(synth_root, "images")))[:3]
    paths = [os.path.join(synth_root, "images", f) for f in images]
    assert sample.main(paths + [f"--ckpt={out}/ckpt.pt"]) == 0
    text = capsys.readouterr().out
    model, names = sample.load_model(os.path.join(out, "ckpt.pt"))
    for p in paths:
        assert p in text
    # the printed attributes are those generate predicts for these images, decoded as the run decoded (the chain
    # rule), then the others, most probable first
    x = torch.stack([sample.Images(paths, 32)[i][1] for i in range(3)])
    _, scores = model.generate(x, rule="chain")
    pred = scores > torch.tensor(torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["thresholds"]["values"])
    first = text.split(paths[1])[0].split(paths[0])[1]
    expected = [f"{scores[0, j]:.2f}  {names[j]}" for j in pred[0].nonzero().flatten().tolist()] or ["(no attribute)"]
    others = sorted(((scores[0, j].item(), names[j]) for j in range(len(names)) if not pred[0, j]), reverse=True)
    assert [line.strip() for line in first.strip().splitlines()] == expected + [
        "not predicted: " + ", ".join(f"{n} {v:.2f}" for v, n in others)]
    # the paper's greedy rule, one option away: only what it emits, with the probability it had when emitted
    assert sample.main(paths[:1] + [f"--ckpt={out}/ckpt.pt", "--rule", "greedy"]) == 0
    pred, scores = model.generate(x[:1])
    lines = [line.strip() for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert lines == [f"{scores[0, j]:.2f}  {names[j]}" for j in pred[0].nonzero().flatten().tolist()] or [
        "(no attribute)"]


def test_json_folder_pictures_attention_and_a_bad_image(trained_run, synth_root, tmp_path, capsys):
    out, _, _ = trained_run
    names = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["attr_names"]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.open(os.path.join(synth_root, "images", f"{i:06d}.png")).save(folder / f"p{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image")
    pictures = tmp_path / "pictures"
    rc = sample.main([str(folder), f"--ckpt={out}/ckpt.pt", "--json=True", f"--out_dir={pictures}", "--attention=True",
                      "--layers=all", "--batch_size=2"])
    captured = capsys.readouterr()
    assert rc == 1  # one image failed, the others got their predictions
    result = json.loads(captured.out)
    assert [os.path.basename(r["image"]) for r in result] == ["broken.jpg", "p0.jpg", "p1.jpg", "p2.jpg"]
    assert "cannot read image" in result[0]["error"] and "broken.jpg" in captured.err
    for r in result[1:]:
        assert all(0 < p <= 1 for p in r["attributes"].values())
        assert list(r["scores"]) == names and all(r["scores"][n] == pytest.approx(p, abs=1e-6)
                                                  for n, p in r["attributes"].items())
    written = sorted(os.listdir(pictures))
    assert len([f for f in written if not f.endswith("_attention.png")]) == 3
    assert len([f for f in written if f.endswith("_attention.png")]) == 3


def test_attention_maps_equal_cross_attention_by_hand(trained_run):
    # the maps against the cross-attention computed here from the weights: a pre-hook captures what each block's
    # cross-attention reads, we form its queries and the image tokens' keys by hand and average the softmax over
    # heads (then layers), the class token dropped
    out, _, _ = trained_run
    model, _ = sample.load_model(os.path.join(out, "ckpt.pt"))
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    pred, _ = model.generate(images)
    blocks, inputs = model.transformer.h, []
    handles = [b.cross_attn.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for b in blocks]
    with torch.no_grad():
        model.decode(sample.labels_to_targets(pred)[:, :-1], model.memory_kv(images), model.token_table())
        memory = model.clip.encode_image(images, all_tokens=True)  # (B, L, D)
    for h in handles:
        h.remove()
    B, T, D = inputs[0].shape
    nh = blocks[0].cross_attn.n_head
    hs = D // nh

    def by_hand(attn, x):  # (B, T, L), averaged over heads
        q = (x @ attn.c_q.weight.T + attn.c_q.bias).view(B, T, nh, hs).transpose(1, 2)
        k = (memory @ attn.c_kv.weight[:D].T + attn.c_kv.bias[:D]).view(B, -1, nh, hs).transpose(1, 2)
        return (q @ k.transpose(-2, -1) / hs ** 0.5).softmax(-1).mean(1)

    with torch.no_grad():
        per_layer = torch.stack([by_hand(b.cross_attn, x) for b, x in zip(blocks, inputs)])  # (layers, B, T, L)
    assert len(blocks) > 1 and T == model.n_attr + 1
    assert not torch.allclose(per_layer[-1], per_layer.mean(0))  # so that "last" and "all" are told apart
    for layers, expected in (("last", per_layer[-1]), ("all", per_layer.mean(0))):
        maps = sample.attention_maps(model, images, pred, layers)
        torch.testing.assert_close(maps, expected[:, :, 1:].reshape(B, T, 4, 4), rtol=1e-5, atol=1e-6)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*missing.pt not found"):
        sample.main(["x.jpg", f"--ckpt={tmp_path}/missing.pt"])
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt is not a checkpoint of train.py"):
        sample.main(["x.jpg", f"--ckpt={tmp_path}/other.pt"])
    (tmp_path / "pictures").write_text("a file")
    with pytest.raises(ValueError, match=r"--out_dir=.*pictures is a file; expected a folder"):
        sample.main(["x.jpg", f"--out_dir={tmp_path}/pictures"])
    with pytest.raises(ValueError, match=r"no images given"):
        sample.main(["--json=True"])
    with pytest.raises(ValueError, match=r"no images given"):
        sample.main(["--json"])  # a bool alone is True, and takes no value
    with pytest.raises(ValueError, match=r"^unknown option --out; valid options: "):
        sample.main(["x.jpg", "--out=pics"])
    with pytest.raises(ValueError, match=r"unknown option --foo"):
        sample.main(["x.jpg", "--foo=1"])
    with pytest.raises(ValueError, match=r"--layers=first: expected last or all"):
        sample.main(["x.jpg", "--layers=first"])


def test_images_are_predicted_as_a_viewer_shows_them(trained_run, synth_root, tmp_path, capsys):
    # a photo stored sideways with an EXIF orientation, and a 16-bit PNG, are predicted like their upright 8-bit
    # twins; a file over Pillow's pixel limit is an error of its own and the others still get their predictions
    out, _, _ = trained_run
    upright = np.asarray(Image.open(os.path.join(synth_root, "images", "000001.png")))
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(upright).save(folder / "a_upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(folder / "b_turned.png", exif=exif.tobytes())
    grey = upright[..., 1]
    Image.fromarray(grey).save(folder / "c_grey8.png")
    write_png(folder / "d_grey16.png", grey.astype(np.uint16) * 257, bit_depth=16)
    write_png(folder / "e_huge.png", np.zeros((1, 1, 3)), size=(40000, 40000))
    rc = sample.main([str(folder), f"--ckpt={out}/ckpt.pt", "--json=True", "--batch_size=8"])
    captured = capsys.readouterr()
    result = {os.path.basename(r["image"]): r for r in json.loads(captured.out)}
    assert rc == 1 and "exceeds limit" in result["e_huge.png"]["error"] and "e_huge.png" in captured.err
    assert result["b_turned.png"]["attributes"] == result["a_upright.png"]["attributes"]
    assert result["d_grey16.png"]["attributes"] == result["c_grey8.png"]["attributes"]
    model, _ = sample.load_model(os.path.join(out, "ckpt.pt"))  # the twins really differ from a sideways read
    t = sample.build_transform(32, train=False)
    sideways = model.generate(t(Image.open(folder / "b_turned.png").convert("RGB"))[None])[1]
    assert not torch.allclose(sideways, model.generate(t(Image.fromarray(upright))[None])[1])


def sample_script(*args, env=None):
    # (bytes: a test reads what sample.py wrote, before any decoding)
    from conftest import run_script
    return run_script("sample.py", *args, env={**os.environ, **(env or {})}, text=False)


def test_a_file_name_that_is_not_text_is_printed_escaped_with_the_others(trained_run, synth_root, tmp_path):
    out, _, _ = trained_run
    folder = tmp_path / "imgs"
    folder.mkdir()
    picture = Image.open(os.path.join(synth_root, "images", "000001.png"))
    for name in (b"a.png", b"caf\xe9.png", b"z.png"):  # \xe9: Latin-1's e acute, no UTF-8
        picture.save(os.path.join(os.fsencode(folder), name))
    r = sample_script(str(folder), f"--ckpt={out}/ckpt.pt", "--workers=0", env=dict(PYTHONIOENCODING="utf-8:strict"))
    assert r.returncode == 0 and r.stderr == CHOSEN.encode(), r.stderr[-2000:]
    printed = [line for line in r.stdout.decode().splitlines() if not line.startswith("  ")]
    assert printed == [f"{folder}/a.png", f"{folder}/caf\\xe9.png", f"{folder}/z.png"]


def test_a_closed_pipe_ends_quietly(trained_run, synth_root):
    import subprocess
    import sys

    from conftest import ROOT
    out, _, _ = trained_run
    images = os.path.join(synth_root, "images")
    p = subprocess.Popen([sys.executable, "sample.py", images, f"--ckpt={out}/ckpt.pt", "--workers=0"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # as `| head` does once it has its lines: every line the script prints finds the pipe closed
    _, err = p.communicate(timeout=240)
    assert err == CHOSEN.encode() and p.returncode != 0


def test_folders_empty_linked_and_our_own(trained_run, synth_root, tmp_path, capsys):
    out, _, _ = trained_run
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"^no images in .*empty \(files ending in \.jpg, "):
        sample.main([str(tmp_path / "empty"), f"--ckpt={out}/ckpt.pt"])
    folder, elsewhere = tmp_path / "imgs", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    picture = Image.open(os.path.join(synth_root, "images", "000001.png"))
    picture.save(folder / "a.png")
    picture.save(elsewhere / "b.png")
    os.symlink(elsewhere, folder / "linked")  # a linked folder is read ...
    os.symlink(folder, folder / "linked" / "up")  # ... and a link back up is not a loop
    pictures = folder / "pictures"
    assert sample.main([str(folder), f"--ckpt={out}/ckpt.pt", f"--out_dir={pictures}", "--workers=0"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("  ")]
    assert printed == [f"{folder}/a.png", f"{folder}/linked/b.png"] and len(os.listdir(pictures)) == 2
    # the pictures we wrote are in the folder we read: a second run does not read them
    assert sample.main([str(folder), f"--ckpt={out}/ckpt.pt", f"--out_dir={pictures}", "--workers=0"]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if not line.startswith("  ")] == printed


def test_without_ckpt_it_takes_your_run_in_out_else_the_demos_and_says_which(trained_run, synth_root, tmp_path,
                                                                            monkeypatch, capsys):
    image = os.path.join(synth_root, "images", "000001.png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^no checkpoint: out/ckpt\.pt and out/demo/ckpt\.pt are not there; "
                                                r"make demo trains one, so does python train\.py --dataset=NAME, or "
                                                r"pass --ckpt=PATH$"):
        sample.main([image, "--workers=0"])
    os.makedirs("out/demo")
    shutil.copy(os.path.join(trained_run[0], "ckpt.pt"), "out/demo/ckpt.pt")  # what make demo leaves
    capsys.readouterr()
    assert sample.main([image, "--workers=0"]) == 0
    printed = capsys.readouterr()
    assert printed.err == "checkpoint: out/demo/ckpt.pt\n" + CHOSEN and printed.out.startswith(image + "\n  ")
    # a run of the user's own in out/ comes first; the demo never writes there
    torch.save({"not": "a checkpoint"}, "out/ckpt.pt")
    with pytest.raises(ValueError, match=r"^out/ckpt\.pt is not a checkpoint of train\.py"):
        sample.main([image, "--workers=0"])
