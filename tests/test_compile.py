"""torch.compile on the CPU: a compiled training run takes the same steps as an eager one, and a compiled model predicts
what the eager one does, through sample.py's --compile=True too."""
import csv
import json
import os

import pytest
import torch

import clip
import sample
import train
from conftest import TINY, tiny_args
from decoder import DecoderConfig, QueryHead, SequencePAR, labels_to_targets

# make test runs the tests of this file on one worker (--dist loadgroup), in their order: a kernel one has compiled is
# in the cache for the next (the linear head's CLIP is SequencePAR's), which on a machine that has compiled nothing
# yet halves these tests' time
pytestmark = pytest.mark.xdist_group("inductor")


@pytest.fixture
def fresh_dynamo():
    # Each test starts from no compiled code, so that the graphs it counts are its own (an earlier test may have
    # compiled the same functions). Compiled kernels stay cached on disk: compiling again is quicker.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def graphs_compiled():
    # graphs torch.compile has built in this process: the proof that the compiled path really ran
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def logged_losses(out):
    with open(os.path.join(out, "log.csv"), newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f) if row["kind"] == "train"]


def test_compiled_training_takes_the_eager_steps(synth_root, tiny_clip_file, tmp_path, fresh_dynamo, capsys):
    # every step is one batch of all 256 training images: every step has the same sequence length, so the model
    # compiles once (a new length would compile it again); no dropout, whose random masks differ once compiled; one
    # decoder layer (a layer more is the same kernels, and half a minute more of compiling on two cores)
    args = ["--batch_size=256", "--dropout=0.0", "--n_layer=1"]
    train.main(tiny_args(synth_root, tiny_clip_file, tmp_path / "eager", *args))
    before = graphs_compiled()
    train.main(tiny_args(synth_root, tiny_clip_file, tmp_path / "compiled", *args, "--compile=True"))
    assert graphs_compiled() > before
    eager, compiled = logged_losses(tmp_path / "eager"), logged_losses(tmp_path / "compiled")
    assert len(eager) == len(compiled) == 2
    # the same weights and batch give the same loss up to rounding (log.csv keeps 6 digits); after one AdamW step on
    # gradients that differ by rounding, the second loss differs a little more
    assert compiled[0] == pytest.approx(eager[0], rel=2e-5) and compiled[1] == pytest.approx(eager[1], rel=1e-3)
    assert compiled[1] < compiled[0]  # and the compiled run learns


def test_compiled_linear_head_takes_the_eager_steps(synth_root, tiny_clip_file, tmp_path, fresh_dynamo):
    # (after SequencePAR's: most of its kernels are CLIP's, compiled there already) one batch of all 256 images a step:
    # one shape, one compilation; the compiled losses are the eager ones
    args = ["--head=linear", "--batch_size=256"]
    train.main(tiny_args(synth_root, tiny_clip_file, tmp_path / "eager", *args))
    before = graphs_compiled()
    train.main(tiny_args(synth_root, tiny_clip_file, tmp_path / "compiled", *args, "--compile=True"))
    assert graphs_compiled() > before
    eager, compiled = logged_losses(tmp_path / "eager"), logged_losses(tmp_path / "compiled")
    assert len(eager) == 2 and compiled[0] == pytest.approx(eager[0], rel=2e-5)
    assert compiled[1] == pytest.approx(eager[1], rel=1e-3)


def test_compiled_model_predicts_as_eager(trained_run, synth_root, fresh_dynamo):
    out, _, _ = trained_run
    folder = os.path.join(synth_root, "images")
    paths = [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:16]]
    images = torch.stack([sample.Images(paths, 32)[i][1] for i in range(len(paths))])
    eager, _ = sample.load_model(os.path.join(out, "ckpt.pt"))
    compiled, _ = sample.load_model(os.path.join(out, "ckpt.pt"), compile=True)
    for beam_size in (1, 3):
        pred, scores = eager.generate(images, beam_size=beam_size)
        pred_c, scores_c = compiled.generate(images, beam_size=beam_size)
        assert pred.sum() > 0 and torch.equal(pred_c, pred)
        torch.testing.assert_close(scores_c, scores, atol=1e-5, rtol=0)
    assert graphs_compiled() > 0


def test_sample_compile_flag(trained_run, synth_root, capsys, fresh_dynamo):
    out, _, _ = trained_run
    folder = os.path.join(synth_root, "images")
    paths = [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:16]]
    results = []
    for flag in ("--compile=False", "--compile=True"):
        assert sample.main(paths + [f"--ckpt={out}/ckpt.pt", "--json=True", "--workers=0", flag]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert graphs_compiled() > 0
    eager, compiled = results
    assert [r["image"] for r in compiled] == paths and any(r["attributes"] for r in eager)
    for e, c in zip(eager, compiled):
        assert list(c["attributes"]) == list(e["attributes"])
        assert c["attributes"] == pytest.approx(e["attributes"], abs=1e-5)


def test_the_decoder_compiles_whole_at_a_symbolic_length(fresh_dynamo):
    # training batches differ in length, so torch.compile soon treats T as a symbol: the decoder must stay one graph
    # then (fullgraph=True fails on any break; the eager backend checks the capture without compiling kernels)
    torch.manual_seed(0)
    prompts = [f"attribute {i}" for i in range(6)]
    model = SequencePAR(clip.CLIP(TINY), prompts, DecoderConfig(n_layer=2, n_head=2)).eval()
    images, idx = torch.randn(2, 3, 32, 32), torch.randint(0, 9, (2, 7))
    kvs, table = model.memory_kv(images), model.token_table()
    decode = torch.compile(model.decode, fullgraph=True, dynamic=True, backend="eager")
    for T in (4, 7):
        torch.testing.assert_close(decode(idx[:, :T], kvs, table), model.decode(idx[:, :T], kvs, table))


def test_the_query_head_compiles_whole(fresh_dynamo):
    # the query head's training forward, dropout and all positions at once, as one graph (the eager backend checks
    # the capture without compiling kernels); in eval mode it gives the eager logits
    torch.manual_seed(0)
    model = QueryHead(clip.CLIP(TINY), [f"attribute {i}" for i in range(6)], DecoderConfig(n_layer=2, n_head=2))
    images, targets = torch.randn(2, 3, 32, 32), labels_to_targets(torch.randint(0, 2, (2, 6)))
    forward = torch.compile(model, fullgraph=True, backend="eager")
    _, loss = forward(images, targets)
    assert torch.isfinite(loss)
    model.eval()
    torch.testing.assert_close(forward(images, targets)[0], model(images, targets)[0])
