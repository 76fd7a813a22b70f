"""The query head (--head=query): SequencePAR's decoder fed every attribute token at once. Its shapes, that the labels
never reach its logits while every attribute token does, its loss by hand, a gradient for every weight, training, the
checkpoint through evaluation and sample.py, resume with another head, DDP."""
import csv
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
import test_decoder
from conftest import TINY, round_trip, run_script, stderr_of, tiny_args
from decoder import DecoderConfig, LinearHead, QueryHead, labels_to_targets

PROMPTS = [f"A pedestrian with attribute number {i}" for i in range(12)]


def query_head(n_attr=6, rates=None, dropout=0.0):
    torch.manual_seed(0)
    model = QueryHead(clip.CLIP(TINY), PROMPTS[:n_attr], DecoderConfig(n_layer=2, n_head=4, dropout=dropout),
                      pos_rates=rates)
    with torch.no_grad():  # larger than at initialisation: decisive, varied logits to compare
        model.fc.weight.normal_(std=0.5)
    return model.eval()


def random_labels(B, A, seed=0):
    return test_decoder.random_labels(B, A, seed, rate=0.4)


def test_shapes_and_every_attribute_scored():
    model = query_head()
    images = torch.randn(3, 3, 32, 32)
    logits, loss = model(images, labels_to_targets(random_labels(3, 6)))
    assert logits.shape == (3, 6) and loss.ndim == 0 and torch.isfinite(loss)
    pred, scores = model.generate(images, threshold=0.5)
    assert pred.shape == scores.shape == (3, 6) and pred.dtype == torch.uint8
    assert torch.equal(pred, (scores > 0.5).to(torch.uint8)) and ((scores > 0) & (scores < 1)).all()
    assert 0 < pred.sum() < pred.numel()  # some above the threshold and some below: the comparison means something
    torch.testing.assert_close(scores, logits.sigmoid(), rtol=0, atol=1e-6)
    # there is no sequence: beam size, rule and unweight change nothing
    for options in (dict(beam_size=3), dict(rule="chain"), dict(rule="chain", unweight=True)):
        other = model.generate(images, **options)
        assert torch.equal(other[0], pred) and torch.equal(other[1], scores)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_the_labels_never_reach_the_logits(dropout):
    model = query_head(dropout=dropout).train()
    images = torch.randn(4, 3, 32, 32)
    first, second = random_labels(4, 6, seed=1), random_labels(4, 6, seed=2)
    assert not torch.equal(first, second)
    torch.manual_seed(1)  # the same dropout masks for both
    logits, loss = model(images, labels_to_targets(first))
    torch.manual_seed(1)
    again, other_loss = model(images, labels_to_targets(second))
    assert torch.equal(logits, again) and loss != other_loss


def test_every_attribute_token_reaches_every_position():
    # A token row that one prompt alone uses changes that prompt's text feature and no other (the text encoder reads
    # each prompt on its own). Since the decoder's self-attention is not causal, every position's logit moves with it.
    model = query_head()
    images = torch.randn(2, 3, 32, 32)
    users = [(model.prompt_tokens == row).any(1) for row in range(model.prompt_embedding.shape[0])]
    row, j = next((r, int(u.nonzero()[0])) for r, u in enumerate(users) if u.sum() == 1 and j_is_inner(u))
    with torch.no_grad():
        logits, tokens = model.logits(images), model.attribute_tokens()
        model.prompt_embedding[row] += torch.randn(model.prompt_embedding.shape[1])  # (LayerNorm removes a constant)
        changed, changed_tokens = model.logits(images), model.attribute_tokens()
    others = torch.arange(6) != j
    assert torch.equal(changed_tokens[others], tokens[others]) and not torch.allclose(changed_tokens[j], tokens[j])
    assert (changed - logits).abs().min() > 1e-6, (changed - logits)  # every image, every position


def j_is_inner(used_by):
    # a prompt with positions on both sides, so that both earlier and later ones must see it
    j = int(used_by.nonzero()[0])
    return 0 < j < len(used_by) - 1


def test_the_written_out_attention_gives_the_same_logits():
    model = query_head()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with model.keeping_attention() as atts:
            logits = model.logits(images)
        torch.testing.assert_close(logits, model.logits(images), rtol=0, atol=1e-5)
    assert len(atts) == 2 and atts[0].shape == (2, 4, 6, 17)  # (B, nh, A, L): 1 + 4 x 4 image tokens
    for att in atts:
        torch.testing.assert_close(att.sum(-1), torch.ones(2, 4, 6), rtol=0, atol=1e-6)


@pytest.mark.parametrize("rates", [None, [0.2, 0.5, 0.9]])
def test_query_head_loss_by_hand_weighted_as_the_linear_head(rates):
    model = query_head(n_attr=3, rates=rates)
    torch.manual_seed(0)
    linear = LinearHead(clip.CLIP(TINY, text=False), 3, pos_rates=rates)
    assert torch.equal(model.pos_weight, linear.pos_weight) and torch.equal(model.neg_weight, linear.neg_weight)
    labels = torch.tensor([[1, 0, 1], [0, 0, 1]])
    logits, loss = model(torch.randn(2, 3, 32, 32), labels_to_targets(labels))
    r, total = rates or [None] * 3, 0.0
    for z_image, image in zip(logits.tolist(), labels.tolist()):
        for j, (z, y) in enumerate(zip(z_image, image)):
            p = 1 / (1 + math.exp(-z))
            weight = 1.0 if rates is None else math.exp(1 - r[j]) if y else math.exp(r[j])
            total += weight * -(math.log(p) if y else math.log(1 - p))
    assert loss.item() == pytest.approx(total / 2, rel=1e-5)  # summed over attributes, averaged over images


def test_every_trainable_weight_gets_a_gradient(synth_root, tiny_clip_file, tmp_path):
    # DDP expects a gradient for every trainable parameter: no unused embedding, CLIP's temperature frozen
    cfg = train.parse_config(tiny_args(synth_root, tiny_clip_file, tmp_path, "--head=query", "--dropout=0.1"))
    data, _ = train.read_data(cfg, log=lambda *a: None)
    model = train.build_model(cfg, data).train()
    labels = torch.from_numpy(data.labels[data.splits["train"][:4]])
    _, loss = model(torch.randn(4, 3, 32, 32), labels_to_targets(labels))
    loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert "prompt_embedding" in trainable and "transformer.wpe.weight" in trainable and "fc.weight" in trainable
    assert not any(n.startswith("transformer.wte") or n == "clip.logit_scale" for n in trainable)
    assert [n for n, p in trainable.items() if p.grad is None or not p.grad.any()] == []


def test_overfits_a_fixed_batch():
    # the images decide the logits: the head learns 8 images' labels by heart
    model = query_head(n_attr=10).train()
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 32, 32), random_labels(8, 10, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    for _ in range(60):
        _, loss = model(images, labels_to_targets(labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.3  # summed over the 10 attributes
    assert torch.equal(model.eval().generate(images)[0], labels)


def logged(out, kind="train"):
    with open(os.path.join(out, "log.csv"), newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r["kind"] == kind]


@pytest.fixture(scope="module")
def query_run(synth_root, tiny_clip_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("query") / "run"
    # unweighted: from a start near 0.5 the weighted BCE has less to fall to in 32 steps than the NLL or the linear
    # head's (larger) first logits
    m = train.main(tiny_args(synth_root, tiny_clip_file, out, "--head=query", "--epochs=4", "--lr=1e-2",
                             "--weighted_loss=False"))
    return out, m


def test_query_head_trains_and_its_checkpoint_goes_through_evaluation_and_sample(query_run, synth_root, tmp_path,
                                                                                  capsys):
    out, m = query_run
    losses = logged(out)
    assert len(losses) == 32 and np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4])
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["head"] == "query" and ckpt["decoder_config"]["n_layer"] == 6 and "fc.weight" in ckpt["model"]
    assert not any(k.startswith(("transformer.wte", "lm_head")) for k in ckpt["model"])
    with open(out / "metrics_test.json") as f:
        result = json.load(f)
    assert result["overall"] == pytest.approx(m) and "mAP" in m  # it scores every attribute
    # evaluate.py rebuilds the head from the checkpoint alone and scores what training scored; sample.py prints, per
    # image, the attributes above the threshold and every other attribute's score
    again, model, names, paths, images, pred, probs, printed = round_trip(out, synth_root, tmp_path, capsys)
    assert again == pytest.approx(m)
    with open(tmp_path / "eval" / "similarity.csv") as f:  # the similarity of its attribute tokens
        rows = list(csv.reader(f))
    assert len(rows) == 23 and all(float(rows[k][k]) == pytest.approx(1.0, abs=1e-5) for k in range(1, 23))
    for row, q in zip(printed, probs):
        assert row["scores"] == pytest.approx({n: q[j].item() for j, n in enumerate(names)}, abs=1e-6)
    # its attention maps: one per attribute position, drawn for the predicted attributes
    maps = sample.attention_maps(model, images, pred)
    assert maps.shape == (3, 22, 4, 4) and (maps >= 0).all() and (maps.sum((2, 3)) <= 1 + 1e-5).all()
    assert sample.main([*paths, f"--ckpt={out / 'ckpt.pt'}", "--attention=True", f"--out_dir={tmp_path / 'pics'}",
                        "--workers=0"]) == 0
    assert len([f for f in os.listdir(tmp_path / "pics") if f.endswith("_attention.png")]) == 3


def test_resume_with_another_head_is_refused(query_run, trained_run, synth_root, tiny_clip_file, tmp_path):
    out, _ = query_run
    for k, (run, head, other) in enumerate(((str(out), "query", "sequencepar"), (str(out), "query", "linear"),
                                            (trained_run[0], "sequencepar", "query"))):
        folder = tmp_path / str(k)
        folder.mkdir()
        os.link(os.path.join(run, "last.pt"), folder / "last.pt")
        with pytest.raises(ValueError, match=rf"last\.pt holds a model of --head={head}, not --head={other}; resume "
                                             rf"with --head={head}, or use another --out_dir$"):
            train.main(tiny_args(synth_root, tiny_clip_file, folder, "--resume=True", f"--head={other}"))


def test_query_head_under_ddp(synth_root, tiny_clip_file, tmp_path):
    # two processes on the CPU: DDP's gradient all-reduce expects a gradient for every weight (compile: test_compile.py)
    args = tiny_args(synth_root, tiny_clip_file, tmp_path, "--epochs=1", "--head=query", "--n_layer=1")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *args, env=env)
    assert r.returncode == 0, stderr_of(r)
    assert re.search(r"^step 8/8 ", r.stdout, re.M) and "test (best on val" in r.stdout


def test_options_of_sequencepars_decoding_are_said_not_to_apply_and_not_recorded(query_run, synth_root, tmp_path,
                                                                                  capsys):
    import json

    import evaluate
    out = query_run[0]
    evaluate.main([f"--ckpt={out}/ckpt.pt", "--rule=greedy", "--beam_size=3", f"--out_dir={tmp_path}", "--workers=0",
                   "--pictures=0", "--threshold=0.4"])
    log = capsys.readouterr().out
    assert "note: --rule, --beam_size do not apply to " in log and "the query head scores each attribute with a " \
                                                                  "sigmoid" in log
    result = json.loads((tmp_path / "metrics_test.json").read_text())
    assert (result["rule"], result["threshold"]) == ("sigmoid", 0.4) and "beam_size" not in result
    assert "mAP" in result["overall"]  # still every attribute scored
