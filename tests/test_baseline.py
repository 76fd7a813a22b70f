"""The linear multi-label head (--head=linear): its loss and predictions by hand, training, the checkpoint through
evaluation and sample.py, DDP (compiled: tests/test_compile.py); the fixed-step synth recipe."""
import json
import math
import os
import re

import numpy as np
import pytest
import torch

import clip
import sample
import train
from conftest import TINY, round_trip, run_script, stderr_of, tiny_args
from decoder import LinearHead, labels_to_targets


def linear_head(rates=None):
    torch.manual_seed(0)
    return LinearHead(clip.CLIP(TINY, text=False), 3, pos_rates=rates)


def test_no_text_encoder_is_built_for_the_linear_head():
    head = linear_head()
    names = {n for n, _ in head.named_parameters()}
    assert names and all(n.startswith(("clip.visual.", "fc.")) for n in names)
    # and CLIP's image side is the full model's: the same keys and shapes
    full = {k: v.shape for k, v in clip.CLIP(TINY).state_dict().items() if k.startswith("visual.")}
    assert {k[len("clip."):]: v.shape for k, v in head.state_dict().items() if k.startswith("clip.")} == full


def test_linear_head_predicts_above_one_half_and_returns_every_probability():
    head = linear_head().eval()
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.bias.copy_(torch.tensor([-1.0, 0.0, 2.0]))  # logits of every image: -1, 0, 2
    pred, scores = head.generate(torch.randn(2, 3, 32, 32))
    assert pred.tolist() == [[0, 0, 1]] * 2  # a logit of 0 is probability 0.5: not above it
    expected = [1 / (1 + math.exp(1)), 0.5, 1 / (1 + math.exp(-2))]
    assert scores.tolist() == [pytest.approx(expected)] * 2


@pytest.mark.parametrize("rates", [None, [0.2, 0.5, 0.9]])
def test_linear_head_loss_by_hand(rates):
    head = linear_head(rates)
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    labels = torch.tensor([[1, 0, 1], [0, 0, 1]])
    _, loss = head(torch.randn(2, 3, 32, 32), labels_to_targets(labels))
    z, r = [0.5, -1.0, 2.0], rates or [None] * 3
    total = 0.0
    for image in labels.tolist():
        for j, y in enumerate(image):
            p = 1 / (1 + math.exp(-z[j]))
            weight = 1.0 if rates is None else math.exp(1 - r[j]) if y else math.exp(r[j])
            total += weight * -(math.log(p) if y else math.log(1 - p))
    assert loss.item() == pytest.approx(total / 2, rel=1e-6)  # summed over attributes, averaged over images


def logged(out, kind="train"):
    import csv
    with open(os.path.join(out, "log.csv"), newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r["kind"] == kind]


def test_linear_head_trains_and_its_checkpoint_goes_through_evaluation_and_sample(synth_root, tiny_clip_file,
                                                                                   tmp_path, capsys):
    out = tmp_path / "run"
    m = train.main(tiny_args(synth_root, tiny_clip_file, out, "--head=linear", "--weighted_loss=True", "--epochs=4",
                            "--lr=1e-2"))
    losses = logged(out)
    assert len(losses) == 32 and np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4])
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["head"] == "linear" and not any(k.startswith(("clip.transformer", "transformer.")) for k in ckpt["model"])
    with open(out / "metrics_test.json") as f:
        assert json.load(f)["overall"] == pytest.approx(m)
    # evaluate.py rebuilds the head from the checkpoint alone and scores what training scored; sample.py prints, per
    # image, the attributes above 0.5 with their probabilities from the head itself
    again, model, names, paths, images, pred, probs, printed = round_trip(out, synth_root, tmp_path, capsys)
    assert again == pytest.approx(m)
    assert "similarity" not in " ".join(os.listdir(tmp_path / "eval"))  # the head has no attribute tokens
    with pytest.raises(ValueError, match=r"has the linear head; attention maps need the decoder"):
        sample.main([*paths, f"--ckpt={out / 'ckpt.pt'}", "--attention=True", f"--out_dir={tmp_path / 'pics'}"])


def test_linear_head_under_ddp(synth_root, tiny_clip_file, tmp_path):
    args = tiny_args(synth_root, tiny_clip_file, tmp_path / "ddp", "--epochs=1", "--head=linear")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *args, env=env)
    assert r.returncode == 0, stderr_of(r)
    assert re.search(r"^step 8/8 ", r.stdout, re.M) and "test (best on val" in r.stdout


def test_the_synth_preset_is_a_fixed_number_of_steps(synth_root, tmp_path):
    # the preset's recipe on the small set (256 training images: 4 batches of 64 an epoch, 6 epochs), twice, one
    # thread: the same steps and the same losses, whatever the machine's speed
    env = dict(os.environ, OMP_NUM_THREADS="1")
    logs = []
    for k in range(2):
        r = run_script("train.py", "--dataset=synth", f"--root={synth_root}", f"--out_dir={tmp_path / str(k)}",
                       "--log_interval=1", env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "training 24 steps: 6 epochs of 4 batches of 64 images" in r.stdout
        logs.append(re.findall(r"^step (\d+)/24 .*\| loss ([\d.]+)", r.stdout, re.M))
    assert len(logs[0]) == 24 and logs[0] == logs[1]
