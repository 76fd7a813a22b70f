"""bench.py: its FLOP count against PyTorch's counter, every figure printed on a tiny model, and its option errors."""
import json
import re

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import bench
import clip
import train
from conftest import run_script
from decoder import DecoderConfig, SequencePAR

TINY = clip.CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_heads=2,
                       vision_patch_size=8, transformer_width=64, transformer_heads=2, transformer_layers=2)


@pytest.mark.parametrize("config", [TINY, train.TINY_CLIP, clip.config("ViT-B/32")], ids=["tiny", "demo", "ViT-B/32"])
def test_encoder_flops_match_pytorchs_count(config):
    c = config
    visual = clip.VisionTransformer(c.image_resolution, c.vision_patch_size, c.vision_width, c.vision_layers,
                                    c.vision_heads, c.embed_dim, c.vision_stem, c.vision_stem_width)
    x = torch.randn(2, 3, c.image_resolution, c.image_resolution)
    # FlopCounterMode counts matmuls and convolutions (not norms, softmax or batch norms, as we do not); it does not know the CPU's
    # fused attention kernel, so attention runs as its plain matmuls here
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        visual(x, all_tokens=True)
    assert bench.encoder_flops(c, 2) == pytest.approx(counter.get_total_flops(), rel=1e-3)


def tiny_model():
    torch.manual_seed(0)
    return SequencePAR(clip.CLIP(TINY), bench.PROMPTS_35, DecoderConfig(n_layer=2, n_head=4)).eval()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_prints_every_figure(dtype, capsys):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bench.run(model, bench.parse_args(["--batch_size=3", "--repeats=1", f"--dtype={dtype}"]), compare=dtype == "fp32")
    out = capsys.readouterr().out
    rate = r"\s+\d+\.\d\d images/s"
    assert re.search(rf"^CPU, \d+ threads; small config: ViT 2 x 64 at 32 px \(17 image tokens\), decoder 2 x 32, "
                     rf"A = 35; batch 3, {dtype}; best of 1", out)
    assert re.search(rf"^image encoder alone{rate}\s+[0-9.e+-]+ TFLOP/s", out, re.M)
    assert re.search(r"^-- worst case: emits all 35 attributes: 35.0 attributes per image$", out, re.M)
    assert len(re.findall(rf"^generate, (greedy|beam 3){rate}\s+decoding adds", out, re.M)) == 4
    chain = re.findall(rf"^generate, chain rule{rate}\s+[+-]\d+% over greedy; threshold (\S+): (\d+\.\d) "
                       rf"attributes per image$", out, re.M)
    assert [c[0] for c in chain] == ["0.5", "0.0"] and chain[1][1] == "35.0"  # threshold 0 emits every attribute
    compared = re.search(rf"^greedy, no KV cache \(generate_simple\){rate}\s+cached is\s+\d+\.\dx faster", out, re.M)
    skipped = "-- generate_simple, without the KV cache: skipped" in out
    assert bool(compared) == (dtype == "fp32") and skipped == (dtype == "bf16")
    assert re.search(rf"^training step \(fwd, bwd, AdamW\){rate}", out, re.M)
    assert not model.training and model.lm_head._forward_hooks == {}  # left as it came, but for the trained weights
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_training_section_prints_every_figure(capsys):
    bench.run_training(bench.parse_args(["--train=True", "--batch_size=8", "--repeats=1"]))
    out = capsys.readouterr().out
    rate = r"\s+\d+\.\d\d images/s"
    c = bench.train.TINY_CLIP  # the header names the demo's model as configured
    assert re.search(rf"^CPU, \d+ threads; the demo: tiny CLIP \(ViT {c.vision_layers} x {c.vision_width} at "
                     rf"{c.image_resolution} px\), decoder 2 x {c.embed_dim}, A = 22; batch 8", out, re.M)
    for row in (r"input: PIL transforms, one process", r"input: preloaded uint8, on batches",
                r"training step, SequencePAR" + rate + r"\s+fwd, bwd, clipping, AdamW: \d+\.\d\dx the BCE head's time, "
                r"\d+\.\d\dx the query head's$",
                r"training step, query head" + rate + r"\s+the same decoder, every attribute at once: \d+\.\d\dx the BCE",
                r"training step, linear BCE head", r"image encoder fwd \+ bwd, all tokens" + rate + r"\s+\d+% of the"):
        assert re.search(rf"^{row}", out, re.M), (row, out)


def test_bench_options_are_checked_before_any_work():
    for arg, message in (("--batch_size=-1", "--batch_size=-1: expected a positive number of images, or 0 for the default"),
                         ("--clip=ViT-H/14", "--clip=ViT-H/14: expected a released architecture (ViT-B/32, "),
                         ("--dtype=fp16", "--dtype=fp16: expected fp32, or bf16"),
                         ("--device=cuda:99", "--device=cuda:99: this machine has"),
                         ("--compile=maybe", "--compile=maybe: expected True or False"),
                         ("--nope=1", "unknown option --nope; valid options: clip, device"),
                         ("--train=2", "--train=2: expected True or False")):
        with pytest.raises(ValueError, match=re.escape(message)):
            bench.parse_args([arg])
    opts = bench.parse_args(["--clip=ViT-L/14", "--compile=True"])
    assert opts.clip == "ViT-L/14" and opts.compile is True and opts.repeats == 1 and opts.batch_size == 8
    assert bench.parse_args([]).repeats == 3 and bench.parse_args(["--train=True"]).batch_size == 64
    assert bench.parse_args(["--clip=tiny"]).repeats == 3  # the demo's CLIP, as fast as the small config
    with pytest.raises(ValueError, match=r"--train=True measures the demo's tiny CLIP; leave out --clip=ViT-B/32"):
        bench.parse_args(["--train=True", "--clip=ViT-B/32"])
    r = run_script("bench.py", "--dtype=fp16")
    assert r.returncode == 1 and r.stderr == "error: --dtype=fp16: expected fp32, or bf16 (autocast)\n"


def test_a_checkpoints_accuracy_in_pytorch_and_onnxruntime_fp32_and_int8(trained_run, capsys):
    pytest.importorskip("onnxruntime")
    bench.main(["--onnx=True", f"--ckpt={trained_run[0]}/ckpt.pt"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("synth test (32 images), chain rule, each attribute at its threshold chosen on val")
    rows = {line[:18].strip(): line for line in lines[1:]}
    assert set(rows) == {"PyTorch eager", "onnxruntime fp32", "onnxruntime int8"}
    # fp32 decides as PyTorch does; int8 is reported, whatever it gives
    assert "the same attributes as PyTorch for 100.00% of the images" in rows["onnxruntime fp32"]
    # the PyTorch row is the run's own test report at its thresholds
    report = json.loads(open(f"{trained_run[0]}/metrics_test.json").read())["overall"]
    assert f"mA {report['mA']:.2f} | F1 {report['F1']:.2f} | mAP {report['mAP']:.2f}" in rows["PyTorch eager"]
