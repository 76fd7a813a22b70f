"""train.py: the config (presets, ~ in paths, the options it refuses), the optimizer, a tiny end-to-end run, resume,
DDP, preload, the checks of the data before the first step, and the errors."""
import csv
import os
import re
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import clip
from cli import UserError
import train
from conftest import run_script, stderr_of, tiny_args
from decoder import DecoderConfig, SequencePAR


def test_config_overrides():
    cfg = train.parse_config(["--dataset=pa100k", "--lr=1", "--resume=True", "--clip=ViT-B/16", "--root=data/x"])
    assert cfg.lr == 1.0 and type(cfg.lr) is float and cfg.resume is True and cfg.clip == "ViT-B/16"
    assert cfg.epochs == 50 and cfg.batch_size == 32 and cfg.weight_decay == 1e-4  # the paper's recipe
    synth = train.parse_config(["--dataset=synth", "--lr=0.01"])
    assert synth.clip == "tiny" and synth.epochs == 6 and synth.lr == 0.01  # synth defaults, then overrides
    plain = train.parse_config(["--dataset=synth", "--preset=paper"])
    assert plain.preset == "paper" and plain.clip == "ViT-L/14" and plain.eval_interval == 0  # the paper's recipe on synth


def test_optimizer_holds_every_trainable_weight_once():
    torch.manual_seed(0)
    config = clip.CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=32, vision_heads=2,
                             vision_patch_size=16, transformer_width=32, transformer_heads=2, transformer_layers=1)
    model = SequencePAR(clip.CLIP(config), ["a person with a hat", "a person in boots"], DecoderConfig(1, 2, 0.0))
    model.clip.logit_scale.requires_grad_(False)
    cfg = train.TrainConfig(lr=1e-3, head_lr=5e-3, weight_decay=0.1)
    optimizer, base_lrs = train.configure_optimizer(model, cfg)
    held = [(id(p), lr, g["weight_decay"]) for g, lr in zip(optimizer.param_groups, base_lrs) for p in g["params"]]
    trainable = {id(p): name for name, p in model.named_parameters() if p.requires_grad}
    assert sorted(i for i, _, _ in held) == sorted(trainable)  # each one, once; frozen ones (CLIP's table) not
    assert "prompt_embedding" in trainable.values() and "clip.token_embedding.weight" not in trainable.values()
    for i, lr, decay in held:
        name = trainable[i]
        assert lr == (5e-3 if name.startswith(("transformer.", "lm_head.")) else 1e-3), name
        assert decay == (0.1 if dict(model.named_parameters())[name].dim() >= 2 else 0.0), name


@pytest.mark.parametrize("argv, message", [
    (["--nope=1"], r"unknown option --nope; valid options: dataset, root, .*, seed"),
    (["--lr=fast"], r"--lr=fast: expected a number"),
    (["--batch_size=2.5"], r"--batch_size=2.5: expected an integer"),
    (["--resume=maybe"], r"--resume=maybe: expected True or False"),
    (["lr=1"], r"bad argument 'lr=1': expected --key=value"),
])
def test_bad_overrides(argv, message):
    with pytest.raises(ValueError, match=message):
        train.parse_config(argv)


def test_paths_expand_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = train.parse_config(["--root=~/data", "--out_dir=~/runs/a", "--clip=~/clip.pt", "--dataset=pkl",
                              "--pkl=~/x.pkl", "--images=~/img"])
    assert (cfg.root, cfg.out_dir, cfg.clip, cfg.pkl, cfg.images) == tuple(
        str(tmp_path / f) for f in ("data", "runs/a", "clip.pt", "x.pkl", "img"))
    assert train.parse_config(["--clip=ViT-B/32"]).clip == "ViT-B/32"


def test_an_unknown_option_stops_train_py_before_it_writes_anything(synth_root, tiny_clip_file, tmp_path):
    for option in (f"--ckpt={tmp_path}/missing.pt", "--split=val"):  # evaluate.py's options: not train.py's
        with pytest.raises(ValueError, match=r"^unknown option --\w+; valid options: "):
            train.main(tiny_args(synth_root, tiny_clip_file, tmp_path / "out", option))
    assert not (tmp_path / "out").exists()


def losses(log):
    return [float(x) for x in re.findall(r"\| loss ([0-9.]+) \|", log)]


def test_end_to_end(trained_run):
    out, log, result = trained_run
    assert "synth: 320 images, 22 attributes; train 256, val 32, test 32; model selection on val" in log
    values = losses(log)
    assert len(values) == 16 and np.mean(values[-4:]) < 0.9 * np.mean(values[:4])  # the loss falls
    assert log.count("eval step") == 2 and "test (best on val" in log
    assert set(result) == {"mA", "Acc", "Prec", "Rec", "F1", "F1_hm", "mAP"}  # the chain rule scores every attribute
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)  # tensors and plain values only
    last = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert last["step"] == 16 and "optimizer" in last and "optimizer" not in ckpt
    assert ckpt["config"]["dataset"] == "synth" and len(ckpt["attr_names"]) == 22 == len(ckpt["prompts"])
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_resume_continues(trained_run, synth_root, tiny_clip_file, tmp_path, capsys):
    out, _, _ = trained_run
    for f in ("last.pt", "ckpt.pt"):
        os.link(os.path.join(out, f), tmp_path / f)
    train.main(tiny_args(synth_root, tiny_clip_file, tmp_path, "--epochs=3", "--resume=True"))
    log = capsys.readouterr().out
    assert "resumed from" in log and "at step 16" in log
    steps = [int(s) for s in re.findall(r"^step (\d+)/24", log, re.M)]
    assert steps == list(range(17, 25))  # only the third epoch is trained
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 24


def test_resume_refuses_a_last_pt_without_the_training_state(trained_run, synth_root, tiny_clip_file, tmp_path):
    out, _, _ = trained_run
    last = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    del last["aug_rng"], last["optimizer"]  # what a checkpoint saved without them would lack
    torch.save(last, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'last.pt'))} lacks the training state aug_rng, "
                                         r"optimizer, which train.py saves in last.pt; start again with "
                                         r"--overwrite=True, or score its ckpt.pt with evaluate.py$"):
        train.main(tiny_args(synth_root, tiny_clip_file, tmp_path, "--resume=True"))


def test_resume_refuses_another_attribute_set(trained_run, tmp_path, tiny_clip_file):
    out, _, _ = trained_run
    os.link(os.path.join(out, "last.pt"), tmp_path / "last.pt")
    root = tmp_path / "other"
    root.mkdir()
    rows = ["image,split,hat,bag"] + [f"{i}.png,{s},1,0" for i, s in enumerate(["train"] * 40 + ["test"] * 4)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    for i in range(44):
        Image.new("RGB", (8, 16)).save(root / f"{i}.png")
    with pytest.raises(ValueError, match=r"last.pt was trained on 22 other attributes \(Female, .*\) than this "
                                         r"dataset's 2; use another --out_dir"):
        train.main(["--dataset=csv", f"--root={root}", f"--clip={tiny_clip_file}", f"--out_dir={tmp_path}",
                    "--resume=True", "--workers=0"])


def test_train_py_errors_are_one_line(tmp_path):
    r = run_script("train.py", "--nope=1")
    assert r.returncode == 1 and r.stderr.startswith("error: unknown option --nope") and r.stderr.count("\n") == 1
    r = run_script("train.py", "--dataset=peta", f"--root={tmp_path / 'peta'}")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert re.match(r"error: .*PETA.mat not found: the peta reader expects .* published at http", r.stderr)


def test_nan_loss_stops_and_names_what_is_kept(synth_root, tiny_clip_file, tmp_path):
    with pytest.raises(UserError, match=r"loss became nan .* at step \d+; stopped, no checkpoint was saved yet"):
        train.main(tiny_args(synth_root, tiny_clip_file, tmp_path, "--lr=1e30", "--grad_clip=0.0",
                             "--warmup_epochs=0.0"))
    assert not {"ckpt.pt", "last.pt"} & set(os.listdir(tmp_path))
    # once a run has saved last.pt, the message names it; a resumed run follows the --lr it is given now
    train.main(tiny_args(synth_root, tiny_clip_file, tmp_path, "--epochs=1"))
    with pytest.raises(UserError, match=r"at step \d+; stopped, the last good checkpoint is .*last.pt"):
        train.main(tiny_args(synth_root, tiny_clip_file, tmp_path, "--resume=True", "--lr=1e30", "--grad_clip=0.0",
                             "--warmup_epochs=0.0"))
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 8


def test_ddp_with_gloo(synth_root, tiny_clip_file, tmp_path):
    args = tiny_args(synth_root, tiny_clip_file, tmp_path, "--epochs=1")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *args, env=env)
    assert r.returncode == 0, stderr_of(r)
    assert r.stdout.count("config:") == 1  # only rank 0 logs
    assert re.search(r"^step 8/8 ", r.stdout, re.M) and "test (best on val" in r.stdout
    import sample
    model, names = sample.load_model(str(tmp_path / "ckpt.pt"))
    assert len(names) == 22
    pred, _ = model.generate(torch.randn(2, 3, 32, 32))
    assert pred.shape == (2, 22)


def test_trains_on_a_dataset_pickle(synth_root, tiny_clip_file, tmp_path):
    # the synthetic set as a community-prepared pickle: names, labels, a list of partitions, trainval and test only
    import pickle

    import data
    d = data.load_dataset("synth", synth_root)
    names = [os.path.relpath(p, os.path.join(synth_root, "images")) for p in d.image_paths]
    parts = {"trainval": [np.r_[d.splits["train"], d.splits["val"]]], "test": [d.splits["test"]]}
    with open(tmp_path / "dataset_synth.pkl", "wb") as f:
        pickle.dump({"image_name": names, "label": d.labels.astype(np.float64), "attr_name": d.attr_names,
                     "partition": parts, "root": "/somewhere/else"}, f)
    os.symlink(os.path.join(synth_root, "images"), tmp_path / "pictures")
    out = tmp_path / "out"
    m = train.main(["--dataset=pkl", f"--root={tmp_path}", "--images=pictures", f"--clip={tiny_clip_file}",
                    f"--out_dir={out}", "--epochs=1", "--warmup_epochs=0.2", "--batch_size=32", "--workers=0", "--lr=3e-3"])
    assert set(m) == {"mA", "Acc", "Prec", "Rec", "F1", "F1_hm", "mAP"}
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["attr_names"] == d.attr_names and ckpt["step"] == 9  # 288 trainval images: 9 batches of 32
    assert os.path.exists(out / "metrics_test.json") and os.path.exists(out / "predictions_test.csv")


def test_preloaded_images_train_too(synth_root, tiny_clip_file, tmp_path, capsys, cache_home):
    out = tmp_path / "out"
    before = sorted(os.listdir(synth_root))
    train.main(tiny_args(synth_root, tiny_clip_file, out, "--preload=True"))
    log = capsys.readouterr().out
    assert "decoding 320 images" in log and sorted(os.listdir(synth_root)) == before  # nothing written in the dataset
    assert [f for f in os.listdir(os.path.join(cache_home, "sequencepar")) if f.startswith("images-32px-")]
    values = losses(log)
    assert len(values) == 16 and np.mean(values[-4:]) < 0.95 * np.mean(values[:4])  # the loss falls
    assert log.count("eval step") == 2 and torch.load(out / "last.pt", weights_only=True)["step"] == 16
    train.main(tiny_args(synth_root, tiny_clip_file, tmp_path / "again", "--preload=True", "--epochs=1"))
    assert "decoding 320 images" not in capsys.readouterr().out  # the cache is reused


def test_a_preload_cache_that_cannot_be_written_keeps_the_images_in_memory(synth_root, tiny_clip_file, tmp_path,
                                                                            monkeypatch, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    train.main(tiny_args(synth_root, tiny_clip_file, tmp_path / "out", "--preload=True", "--epochs=1"))
    log = capsys.readouterr().out
    assert re.search(r"^note: the decoded images stay in memory only: .*not-a-folder", log, re.M)
    assert "test (best on val" in log and blocker.read_text().startswith("a file")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_a_truncated_test_image_with_decode_fails_before_the_first_step(synth_root, tiny_clip_file, tmp_path, capsys):
    root = tmp_path / "synth"
    shutil.copytree(synth_root, root, ignore=shutil.ignore_patterns(".images-*"))
    data = train.load_dataset("synth", str(root))
    broken = data.image_paths[data.splits["test"][-1]]
    with open(broken, "r+b") as f:
        f.truncate(os.path.getsize(broken) // 2)
    with pytest.raises(FileNotFoundError, match=rf"^1 of 320 images are missing or unreadable: {re.escape(broken)} "):
        train.main(tiny_args(str(root), tiny_clip_file, tmp_path / "out", "--decode=True"))
    assert not re.search(r"^step 1/", capsys.readouterr().out, re.M)


def csv_rows(root, header, rows):
    root.mkdir()
    (root / "labels.csv").write_text("\n".join([header] + rows) + "\n")
    for r in rows:
        name = r.split(",")[0]
        if not (root / name).exists():
            Image.new("RGB", (8, 16)).save(root / name)
    return root


def test_a_leak_and_unlearnable_attributes_are_warned_about(tiny_clip_file, tmp_path, capsys):
    rows = [f"{i}.png,train,{i % 2},0" for i in range(40)] + [f"{i}.png,test,{i % 2},{i % 3 == 0:d}" for i in range(38, 44)]
    rows += ["2.png,train,1,0"]
    root = csv_rows(tmp_path / "set", "image,split,hat,bag", rows)
    train.main(["--dataset=csv", f"--root={root}", f"--clip={tiny_clip_file}", f"--out_dir={tmp_path / 'out'}",
                "--workers=0", "--epochs=1", "--warmup_epochs=0.0", "--n_layer=1"])
    log = capsys.readouterr().out
    # 2.png twice in train; 38.png and 39.png once in train, once in test
    assert "warning: csv: images listed more than once: 3 (2 with different labels), such as " in log
    assert re.search(r"^warning: csv: images in both train and test: 2, such as .*38\.png$", log, re.M)
    assert "warning: csv: attributes without a positive image in train: bag" in log


class Enough(BaseException):
    """Ends train.main once the batches a test wants are recorded."""


BUILD_MODEL, MAKE_BATCHES = train.build_model, train.make_batches  # train.main's own, before any test hooks them


def recorded(monkeypatch, record, stop_at=None, interrupt_at=None):
    """Hooks train.main: record["encoder"] gets the image encoder's weights as build_model returns them,
    record["batches"] every training batch (images, labels) as the loop takes it. The stop_at-th batch (from 0) is not
    taken: the run ends there (Enough); at the interrupt_at-th, a Ctrl-C asks the run to save and stop, as a user's
    would."""
    def build(cfg, data):
        model = BUILD_MODEL(cfg, data)
        record["encoder"] = {k: v.clone() for k, v in model.clip.visual.state_dict().items()}
        return model

    def batches(*args):
        train_batches, eval_batches, augmentation = MAKE_BATCHES(*args)

        def taken():
            for k, (images, labels) in enumerate(train_batches):
                if k == stop_at:
                    raise Enough
                if k == interrupt_at:
                    os.kill(os.getpid(), signal.SIGINT)
                record["batches"].append((images.clone(), labels.clone()))
                yield images, labels
        return taken(), eval_batches, augmentation
    record.update(encoder=None, batches=[])
    monkeypatch.setattr(train, "build_model", build)
    monkeypatch.setattr(train, "make_batches", batches)


@pytest.mark.parametrize("pipeline", [["--preload=True"], ["--workers=0"], ["--workers=2"]])
def test_every_head_of_one_seed_starts_from_one_encoder_and_sees_the_same_batches(synth_root, tmp_path, monkeypatch,
                                                                                  pipeline, capsys):
    # The tiny CLIP drawn afresh (a CLIP file would give every head the same encoder whatever the seed), the paper's
    # dropout: three steps of each head, whose own weights and dropout draw different numbers from torch's generator
    runs = {}
    for head in ("sequencepar", "query", "linear"):
        record = runs[head] = {}
        recorded(monkeypatch, record, stop_at=3)
        with pytest.raises(Enough):
            train.main(["--dataset=synth", "--preset=paper", f"--root={synth_root}", "--clip=tiny", "--n_layer=2",
                        f"--out_dir={tmp_path / head}", "--batch_size=16", "--epochs=1", "--warmup_epochs=0.2", f"--head={head}",
                        *pipeline])
    capsys.readouterr()
    first = runs["sequencepar"]
    assert len(first["batches"]) == 3 and first["batches"][0][0].shape == (16, 3, 64, 64)
    for head in ("query", "linear"):
        assert first["encoder"].keys() == runs[head]["encoder"].keys()
        assert all(torch.equal(v, runs[head]["encoder"][k]) for k, v in first["encoder"].items()), head
        for (images, labels), (other_images, other_labels) in zip(first["batches"], runs[head]["batches"], strict=True):
            assert torch.equal(images, other_images) and torch.equal(labels, other_labels), head


@pytest.mark.parametrize("pipeline", [["--preload=True"], ["--workers=0"]])
def test_a_resumed_run_takes_the_batches_and_steps_of_an_uninterrupted_one(synth_root, tiny_clip_file, tmp_path,
                                                                           monkeypatch, pipeline, capsys):
    whole = {}
    recorded(monkeypatch, whole)
    train.main(tiny_args(synth_root, tiny_clip_file, tmp_path / "whole", "--epochs=1", *pipeline))
    stopped = {}
    recorded(monkeypatch, stopped, interrupt_at=2)  # the run saves after its third step
    with pytest.raises(KeyboardInterrupt, match=r"at step 3: saved .*last\.pt"):
        train.main(tiny_args(synth_root, tiny_clip_file, tmp_path / "stopped", "--epochs=1", *pipeline))
    resumed = {}
    recorded(monkeypatch, resumed)
    train.main(tiny_args(synth_root, tiny_clip_file, tmp_path / "stopped", "--epochs=1", "--resume=True", *pipeline))
    capsys.readouterr()
    assert len(whole["batches"]) == 8 and len(stopped["batches"]) == 3 and len(resumed["batches"]) == 5
    for (images, labels), (again, labels_again) in zip(whole["batches"], stopped["batches"] + resumed["batches"]):
        assert torch.equal(images, again) and torch.equal(labels, labels_again)
    # and the same steps: dropout and the weights went on as if the run had never stopped
    losses = train_losses(tmp_path / "whole")
    assert len(losses) == 8 and train_losses(tmp_path / "stopped") == losses


def train_losses(out):
    with open(out / "log.csv", newline="") as f:
        return [(r["step"], r["loss"]) for r in csv.DictReader(f) if r["kind"] == "train"]
