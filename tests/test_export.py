"""export.py and onnx_decode.py: the graphs give PyTorch's outputs, the numpy loop decodes what generate decodes (at a
batch size the graphs were not traced at), sample.py --onnx prints what sample.py --ckpt prints, the per-attribute
thresholds, and every mistake of the user's is one line."""
import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import clip
import export
import onnx_decode
import sample
import train
from cli import UserError
from conftest import ROOT, TINY
from dataset import MEAN, STD, build_transform
from decoder import BOS, EOS, N_SPECIAL, PAD, DecoderConfig, LinearHead, QueryHead, SequencePAR

A = 6
PROMPTS = [f"A pedestrian with attribute number {i}" for i in range(A)]
NAMES = [f"attr{i}" for i in range(A)]
HEADS = ("sequencepar", "query", "linear")
DECODINGS = [dict(rule="greedy"), dict(rule="chain"), dict(rule="chain", threshold=0.3),
             dict(rule="chain", unweight=True), dict(rule="greedy", beam_size=3)]


def tiny_model(head):
    # random weights, larger than at initialisation: decisive, varied outputs to compare
    torch.manual_seed(0)
    config = DecoderConfig(n_layer=2, n_head=4, dropout=0.1)  # dropout: the graphs must be traced in eval mode
    rates = torch.linspace(0.05, 0.9, A)  # loss weights far apart, so that unweight changes the chain rule's scores
    if head == "linear":
        model = LinearHead(clip.CLIP(TINY, text=False), A, pos_rates=rates)
    elif head == "query":
        model = QueryHead(clip.CLIP(TINY), PROMPTS, config, pos_rates=rates)
    else:
        model = SequencePAR(clip.CLIP(TINY), PROMPTS, config, pos_rates=rates)
    with torch.no_grad():
        for block in model.transformer.h if head != "linear" else []:  # images that differ get outputs that differ
            block.cross_attn.c_proj.weight *= 3
        if head == "sequencepar":
            model.lm_head.weight.normal_(std=0.5)
            model.lm_head.weight[EOS] = 0  # <eos> less often first: sequences of several attributes, the cache used
        else:
            model.fc.weight.normal_(std=0.5)
    return model.eval()


def write_checkpoint(model, head, path, thresholds=None, **decoding):
    # what train.py saves, all that export.py and sample.py read of it
    config = dataclasses.asdict(train.TrainConfig(head=head, **decoding))
    ckpt = dict(model=model.state_dict(), config=config, clip_config=dataclasses.asdict(model.clip.config),
                decoder_config=dataclasses.asdict(model.config) if head != "linear" else {}, head=head,
                attr_names=NAMES, prompts=PROMPTS, step=0, dataset="synth", thresholds=thresholds)
    torch.save(ckpt, path)
    return str(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each head's model, its checkpoint and the folder export.py wrote for it."""
    out = {}
    for head in HEADS:
        folder = tmp_path_factory.mktemp(head)
        model = tiny_model(head)
        path = write_checkpoint(model, head, folder / "ckpt.pt")
        assert export.main([f"--ckpt={path}"]) is None  # into onnx/ beside the checkpoint
        out[head] = model, path, str(folder / "onnx")
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    # photos of three shapes (padded to square by the pipeline) and their tensors through sample.py's pipeline
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for k, (w, h) in enumerate([(20, 45), (32, 32), (50, 30)]):
        paths.append(str(folder / f"{k}.png"))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_the_folder_and_its_label_map(exported):
    model, path, folder = exported["sequencepar"]
    assert sorted(os.listdir(folder)) == ["encoder.onnx", "model.json", "step.onnx"]
    assert sorted(os.listdir(exported["query"][2])) == ["logits.onnx", "model.json"]
    meta = json.load(open(os.path.join(folder, "model.json")))
    assert meta["attr_names"] == NAMES and meta["head"] == "sequencepar" and meta["thresholds"] is None
    assert meta["decoding"] == dict(rule="chain", threshold=0.5, unweight=False, beam_size=1)
    assert meta["special_ids"] == dict(bos=BOS, eos=EOS, pad=PAD, n_special=N_SPECIAL)
    assert meta["image"]["size"] == 32 and meta["image"]["mean"] == list(MEAN) and meta["image"]["std"] == list(STD)
    assert meta["loss_weight"] == pytest.approx(model.loss_weight.tolist()) and len(meta["loss_weight"]) == A + 3
    assert meta["cache_shape"] == [2, 2, 4, A + 1, 8]
    assert all(0 < d <= export.TOLERANCE for d in meta["check"]["difference"].values())


@pytest.mark.parametrize("B", [1, 7])
@torch.no_grad()
def test_the_graphs_give_pytorchs_outputs(exported, B):
    torch.manual_seed(B)
    x = torch.randn(B, 3, 32, 32)
    for head in ("query", "linear"):
        model, _, folder = exported[head]
        got = onnx_decode.session(os.path.join(folder, "logits.onnx")).run(None, {"images": x.numpy()})[0]
        np.testing.assert_allclose(got, model.logits(x).numpy(), atol=1e-5, rtol=1e-5)
    model, _, folder = exported["sequencepar"]
    encoder, step = (onnx_decode.session(os.path.join(folder, f)) for f in ("encoder.onnx", "step.onnx"))
    image_kv = encoder.run(None, {"images": x.numpy()})[0]
    kvs = model.memory_kv(x)
    assert image_kv.shape == (B, 2, 2, 4, 17, 8)
    for i, (k, v) in enumerate(kvs):
        np.testing.assert_allclose(image_kv[:, i, 0], k.numpy(), atol=1e-5)
        np.testing.assert_allclose(image_kv[:, i, 1], v.numpy(), atol=1e-5)
    # a whole sequence, one id a step, against the full prefix fed at once (no cache on the PyTorch side)
    ids = torch.cat([torch.full((B, 1), BOS), torch.randint(N_SPECIAL, A + N_SPECIAL, (B, A))], 1)
    expected = model.decode(ids, kvs, model.token_table())  # (B, A + 1, V)
    cache = np.zeros((B, 2, 2, 4, A + 1, 8), np.float32)
    for t in range(A + 1):
        logits, cache = step.run(None, dict(id=ids[:, t].numpy(), pos=np.array(t), cache=cache, image_kv=image_kv))
        np.testing.assert_allclose(logits, expected[:, t].numpy(), atol=1e-4)


@pytest.mark.parametrize("B", [1, 7])
@pytest.mark.parametrize("head", HEADS)
def test_the_numpy_loop_decodes_what_generate_decodes(exported, head, B):
    model, _, folder = exported[head]
    runner = onnx_decode.load(folder)
    torch.manual_seed(10 + B)
    x = torch.randn(B, 3, 32, 32)
    unweighted = None
    for decoding in DECODINGS if head == "sequencepar" else DECODINGS[1:3]:
        pred, scores = model.generate(x, **decoding)
        got_pred, got_scores = runner.generate(x.numpy(), **decoding)
        assert got_pred.dtype == np.uint8 and got_pred.shape == got_scores.shape == (B, A)
        np.testing.assert_array_equal(got_pred, pred.numpy())
        np.testing.assert_allclose(got_scores, scores.numpy(), atol=1e-4, rtol=0)
        if decoding.get("unweight"):
            assert not np.allclose(got_scores, unweighted, atol=1e-2)  # the weights are really taken off
        unweighted = got_scores
        if B == 7:  # something to compare: neither nothing nor everything predicted, not the same for every image
            assert 0 < pred.sum() < B * A and len(set(map(tuple, pred.tolist()))) > 1, decoding
    if head == "sequencepar" and B == 7:
        assert model.generate(x)[0].sum(1).max() >= 2  # sequences long enough to read the cache back


def test_preprocess_is_sample_pys_pipeline(exported, images):
    runner = onnx_decode.load(exported["linear"][2])
    for path in images:
        image = Image.open(path).convert("RGB")
        np.testing.assert_allclose(runner.preprocess(image), build_transform(32, train=False)(image).numpy(), atol=1e-6)


@pytest.mark.parametrize("head", HEADS)
def test_sample_onnx_prints_what_sample_ckpt_prints(exported, images, head, capsys):
    _, path, folder = exported[head]
    for options in (["--rule=chain"], ["--rule=greedy"], ["--rule=greedy", "--beam_size=3"], ["--json=True"],
                    ["--threshold=0.3", "--json=True"]):
        if head != "sequencepar" and "--rule=greedy" in options:
            continue
        printed = []
        for source in (f"--ckpt={path}", f"--onnx={folder}"):
            assert sample.main([*images, source, "--workers=0", "--batch_size=2", *options]) == 0
            printed.append(capsys.readouterr().out)
        if "--json=True" not in options:
            assert printed[0] == printed[1] and printed[0].count("\n  ") >= 3
            continue
        ckpt, onnx = (json.loads(p) for p in printed)
        assert [r["image"] for r in onnx] == images and len(ckpt) == len(onnx)
        for a, b in zip(ckpt, onnx):
            assert a["attributes"] == pytest.approx(b["attributes"], abs=1e-5) and a["attributes"].keys() == \
                b["attributes"].keys()
            assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)


@pytest.mark.parametrize("head", ["sequencepar", "query"])
def test_per_attribute_thresholds_decide_what_is_predicted(head, images, tmp_path, capsys):
    model = tiny_model(head)
    values = [0.05, 0.95, 0.3, 0.6, 0.5, 0.2]
    path = write_checkpoint(model, head, tmp_path / "ckpt.pt", thresholds=dict(split="val", default=0.5, values=values))
    export.main([f"--ckpt={path}", f"--out_dir={tmp_path / 'onnx'}"])
    assert json.load(open(tmp_path / "onnx" / "model.json"))["thresholds"]["values"] == values
    assert capsys.readouterr().out.startswith("wrote encoder.onnx, step.onnx and model.json to " if head ==
                                              "sequencepar" else "wrote logits.onnx and model.json to ")
    x = torch.stack([sample.Images(images, 32)[i][1] for i in range(len(images))])
    _, scores = model.generate(x, rule="chain")  # the prefix decided at 0.5, the report at each attribute's value
    for options, expected in (([], scores > torch.tensor(values)), (["--threshold=0.5"], scores > 0.5)):
        assert sample.main([*images, f"--onnx={tmp_path / 'onnx'}", "--json=True", "--workers=0", *options]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert [sorted(r["attributes"]) for r in printed] == [[NAMES[j] for j in row.nonzero().flatten().tolist()]
                                                               for row in expected]
    assert not torch.equal(scores > torch.tensor(values), scores > 0.5)  # the two really differ here
    if head == "sequencepar":  # greedy scores only what it emits: the values do not apply
        assert sample.main([images[0], f"--onnx={tmp_path / 'onnx'}", "--json=True", "--workers=0",
                            "--rule=greedy"]) == 0
        pred, _ = model.generate(x[:1])
        assert sorted(json.loads(capsys.readouterr().out)[0]["attributes"]) == [
            NAMES[j] for j in pred[0].nonzero().flatten().tolist()]


def test_export_replaces_its_own_folder_and_nothing_else(exported, tmp_path):
    _, path, _ = exported["linear"]
    folder = tmp_path / "onnx"
    export.main([f"--ckpt={path}", f"--out_dir={folder}"])
    export.main([f"--ckpt={path}", f"--out_dir={folder}"])  # again: the previous export is replaced
    assert sorted(os.listdir(folder)) == ["logits.onnx", "model.json"]
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"--out_dir=.*onnx holds files that are not an export of ours"):
        export.main([f"--ckpt={path}", f"--out_dir={folder}"])
    assert (folder / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["onnx"]  # no temporary folder left behind


def test_a_graph_that_disagrees_fails_the_export_and_writes_nothing(exported, tmp_path, monkeypatch):
    _, path, _ = exported["sequencepar"]
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no difference is small enough
    with pytest.raises(UserError, match=r"^encoder\.onnx gives outputs .* away from PyTorch's in onnxruntime "
                                        r"\(tolerance -1.*\); nothing written to .*out$"):
        export.main([f"--ckpt={path}", f"--out_dir={tmp_path / 'out'}"])
    assert os.listdir(tmp_path) == []


def test_errors_are_one_line(exported, images, tmp_path, monkeypatch):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"other\.pt is not a checkpoint of train\.py"):
        export.main([f"--ckpt={tmp_path / 'other.pt'}"])
    with pytest.raises(UserError, match=r"^--ckpt=PATH: which checkpoint"):
        export.main([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty has no model\.json: not a folder of export\.py's"):
        sample.main([images[0], f"--onnx={tmp_path / 'empty'}"])
    with pytest.raises(FileNotFoundError, match=r"missing is not a folder of export\.py's"):
        sample.main([images[0], f"--onnx={tmp_path / 'missing'}"])
    folder = tmp_path / "onnx"
    export.main([f"--ckpt={exported['sequencepar'][1]}", f"--out_dir={folder}"])
    (folder / "step.onnx").write_bytes(b"not a graph")
    with pytest.raises(UserError, match=r"step\.onnx is not a graph onnxruntime can read"):
        sample.main([images[0], f"--onnx={folder}"])
    os.remove(folder / "step.onnx")
    with pytest.raises(FileNotFoundError, match=r"step\.onnx not found: .*model\.json names it"):
        sample.main([images[0], f"--onnx={folder}"])
    with pytest.raises(UserError, match=r"^--onnx=.* predicts with exported graphs: no --ckpt"):
        sample.main([images[0], f"--onnx={folder}", "--attention=True"])
    with pytest.raises(UserError, match=r"^--beam_size=3: expected 1 or more, and 1 with --rule=chain"):
        sample.main([images[0], f"--onnx={exported['sequencepar'][2]}", "--rule=chain", "--beam_size=3"])
    for package, run in (("onnxruntime", lambda: sample.main([images[0], f"--onnx={exported['linear'][2]}"])),
                         ("onnx", lambda: export.main([f"--ckpt={exported['linear'][1]}"]))):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, package, None)  # as if it were not installed
            with pytest.raises(UserError, match=rf"needs {package}, which is not installed: pip install -r "
                                                r"requirements-export\.txt$"):
                run()


def test_without_onnxruntime_sample_says_what_to_install_in_one_line(exported, images):
    code = ("import runpy, sys; sys.modules['onnxruntime'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path('sample.py', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code, "sample.py", images[0], f"--onnx={exported['query'][2]}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == ("error: the exported model needs onnxruntime, which is not installed: pip install -r "
                        "requirements-export.txt\n")


def test_the_loop_runs_without_torch(exported, images):
    # what a user without PyTorch has: numpy, pillow, onnxruntime and onnx_decode.py (with cli.py)
    model, _, folder = exported["sequencepar"]
    code = ("import sys, numpy as np; from PIL import Image; sys.modules['torch'] = None; import onnx_decode; "
            f"m = onnx_decode.load({folder!r}); x = np.stack([m.preprocess(Image.open(p).convert('RGB')) for p in "
            f"{images!r}]); pred, scores = m.generate(x, rule='chain'); print(pred.tolist())")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    x = torch.stack([sample.Images(images, 32)[i][1] for i in range(len(images))])
    assert json.loads(r.stdout) == model.generate(x, rule="chain")[0].tolist()


def test_bench_onnx_prints_its_table(capsys):
    import bench
    bench.run_onnx(tiny_model("sequencepar"), bench.parse_args(["--onnx=True", "--batch_size=2", "--repeats=1"]))
    out = capsys.readouterr().out
    with pytest.raises(UserError, match=r"^--onnx=True measures fp32 inference on the CPU: no --train, --device"):
        bench.parse_args(["--onnx=True", "--dtype=bf16"])
    assert re.search(r"^CPU, \d+ threads for PyTorch and for onnxruntime; small config: ViT 2 x 64 at 32 px, decoder "
                     r"2 x 32, A = 6, every attribute emitted", out)
    rate = r"\s+\d+\.\d\d"
    for row in ("image encoder", "greedy", "chain rule"):  # (run_onnx checks that all three emit every attribute)
        assert re.search(rf"^    2  {row}\s+{rate}({rate} \(\s*\d+\.\d\dx\)){{2}}$", out, re.M), (row, out)
