"""
Speed of SequencePAR, measured side by side in one run, so the ratios hold whatever the machine.

    python bench.py                                  # a small config on the CPU (what `make bench` runs)
    python bench.py --clip=ViT-L/14 --batch_size=8   # the paper's encoder, random weights, nothing downloaded
    python bench.py --clip=ViT-B/16 --device=cuda --dtype=bf16 --compile=True --batch_size=64
    python bench.py --train=True                     # where the demo's training time goes
    python bench.py --onnx=True --clip=ViT-B/16      # PyTorch against onnxruntime (export.py), fp32 and int8

What it prints, in images/s:
- the image encoder alone (every token through CLIP's ViT, ln_post and proj), and its TFLOP/s: 2 x the multiply-adds
  of its matmuls and convolutions (encoder_flops below), over the measured time;
- generate, greedy and beam 3, at two lengths: with untrained weights, which stop after an attribute or so, and in the
  worst case, every one of the A = 35 attributes forced, the length the official code always decodes; with what
  decoding adds to the encoder (the prompts' encoding, once per call, included); and the chain rule in both cases,
  against greedy's time (threshold 0.5 untrained; 0 in the worst case, which emits every attribute);
- one training step as train.py takes it: forward, backward, gradient clipping, fused AdamW; on CUDA, its peak memory;
- on the small config (or tiny) in fp32, the KV cache's gain: greedy generate against decoder.py's generate_simple,
  greedy decoding by its definition, which runs the decoder over the whole prefix at every step. Both compute the
  image tokens' keys and values and the prompts' features once per call, so the gap is the cache alone. They decode
  the same tokens, and the run checks they agree. We skip it for a released model, whose run is long enough without
  it, and under bf16, where the cached and uncached decodings round differently and may part at near-ties.
--dtype=bf16 runs every forward pass under bf16 autocast, as train.py does on CUDA. --compile=True compiles the image
encoder for inference (as sample.py --compile=True does) and the whole model for the training step (as train.py
--compile=True does). Each figure is the best of --repeats timed runs, after a warm-up run that also compiles.

--train=True measures the demo instead (train.py --dataset=synth: the tiny CLIP, its 2-layer decoder, batch 64), on a
few hundred synthetic images drawn into a temporary folder: the two input pipelines (PIL transforms per image in one
process, and crop and flip on batches of preloaded uint8 images), one SequencePAR training step, one of the query head
(the same decoder fed every attribute at once: what autoregression costs in training), one of the same encoder with a
linear multi-label head and BCE (what SequencePAR's decoder costs), and the image encoder's forward and backward
alone.

--onnx=True measures inference three ways, at batch 1 and 8 (or --batch_size): PyTorch eager, and the graphs of
export.py in onnxruntime through onnx_decode.py's loop, fp32 and with the matrix multiplications by weights quantized
to int8 (onnxruntime's quantize_dynamic: weights int8 once, activations quantized on the fly). For each: the image
encoder alone (what encoder.onnx computes: every image token's keys and values for every decoder layer), and
generate, greedy and the chain rule, in the worst case: the decoder's last two weights are set so that it emits
every attribute whatever the image (all its steps run as ever), so that the three decode the same number of steps,
and the run checks they emit the same. --clip=tiny is the demo's model (train.py's synth preset: its decoder, its 22
attributes); any other, the paper's decoder (6 layers, 8 heads) on PETA's 35 attributes. PyTorch and onnxruntime get
the same number of threads (--threads, or torch's default).
"""
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

import cli
from cli import UserError
from checkpoint import load_checkpoint, model_from_checkpoint
import clip
import export
import onnx_decode
import train
import synth
from data import PROMPTS, load_dataset, prompt_for
from dataset import PARImages, augment, crop_pad, load_images
from decoder import EOS, N_SPECIAL, DecoderConfig, SequencePAR, labels_to_targets

PROMPTS_35 = list(PROMPTS.values())[:35]  # PETA's 35 prompts, in sequence order
# a ViT-B/16-like encoder cut to 8 layers of 512, with the released models' ratio of joint width to ViT width
SMALL = clip.CLIPConfig(embed_dim=384, image_resolution=224, vision_layers=8, vision_width=512, vision_heads=8,
                        vision_patch_size=16, transformer_width=384, transformer_heads=6, transformer_layers=4)


@dataclass
class BenchConfig:
    clip: str = ""                # a released architecture (random weights) or tiny (the demo's CLIP); "": SMALL
    device: str = "cpu"           # cpu, cuda, cuda:N or auto
    dtype: str = "fp32"           # or bf16: every forward pass under bf16 autocast, as train.py on CUDA
    compile: bool = False         # compile the image encoder (inference) or the whole model (training step)
    batch_size: int = 0           # images per call; 0: 8, or the demo's 64 with --train=True
    repeats: int = 0              # timed runs, the best one counts; 0: 3, or 1 for a released model
    threads: int = 0              # CPU threads; 0: torch's default
    train: bool = False           # the demo's training step instead (see above)
    onnx: bool = False            # PyTorch against onnxruntime, fp32 and int8 (see above)
    ckpt: str = ""                # with --onnx=True: instead, a checkpoint's test metrics, PyTorch, fp32 and int8
    PATHS = ("ckpt",)


def parse_args(argv):
    opts = cli.parse(argv, BenchConfig)
    for name, ok, expected in (
            ("clip", opts.clip in ("", "tiny", *clip.available_models()),
             f"a released architecture ({', '.join(clip.available_models())}), tiny, or nothing for the small config"),
            ("dtype", opts.dtype in ("fp32", "bf16"), "fp32, or bf16 (autocast)"),
            ("batch_size", opts.batch_size >= 0, "a positive number of images, or 0 for the default"),
            ("repeats", opts.repeats >= 0, "a number of timed runs, or 0 for the default"),
            ("threads", opts.threads >= 0, "a number of CPU threads, or 0 for torch's default")):
        if not ok:
            raise UserError(f"--{name}={getattr(opts, name)}: expected {expected}")
    if opts.train and opts.clip:
        raise UserError(f"--train=True measures the demo's tiny CLIP; leave out --clip={opts.clip}")
    if opts.onnx and (opts.train or opts.device != "cpu" or opts.dtype != "fp32" or opts.compile):
        raise UserError("--onnx=True measures fp32 inference on the CPU: no --train, --device, --dtype or --compile")
    return dataclasses.replace(opts, device=cli.resolve_device(opts.device),
                               repeats=opts.repeats or (1 if opts.clip not in ("", "tiny") else 3),
                               batch_size=opts.batch_size or (train.PRESETS["synth"]["batch_size"] if opts.train else
                                                              0 if opts.onnx else 8))


def encoder_flops(c, batch):
    # 2 x the multiply-adds of every matmul and convolution of the ViT forward with all L tokens kept: the stem's
    # convolutions (the demo's tiny CLIP has three; the released models none) and the patch convolution; per layer the
    # q, k, v and output projections, the attention scores QK^T and their weighted sum of V, the MLP's two matrices (4C
    # wide); then proj on every token. Norms, softmax, GELU and additions are left out: they are a few operations per
    # activation, against C or L per activation for the matmuls.
    grid = c.image_resolution // c.vision_patch_size
    L, C = grid ** 2 + 1, c.vision_width
    chans = [3] + [(c.vision_stem_width or C) // 2 ** (c.vision_stem - 1 - i) for i in range(c.vision_stem)]
    stem = sum((c.image_resolution // 2 ** (i + 1)) ** 2 * c_out * c_in * 9
               for i, (c_in, c_out) in enumerate(zip(chans, chans[1:])))
    patch = grid ** 2 * C * chans[-1] * (c.vision_patch_size // 2 ** c.vision_stem) ** 2
    layer = L * C * 3 * C + L * C * C + 2 * L * L * C + L * C * 4 * C * 2
    return 2 * batch * (stem + patch + c.vision_layers * layer + L * C * c.embed_dim)


def setting(opts):
    """Where the run happens, for the header line, and the context every forward pass runs in: bf16 autocast as
    train.py uses it on CUDA (on the CPU the same, through the CPU's autocast), or nothing."""
    device = opts.device
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    ctx = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if opts.dtype == "bf16" else nullcontext()
    return where, ctx


def timed(fn, repeats, cuda):
    # CUDA runs asynchronously: we wait for the GPU before reading the clock
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()  # warm-up (and compilation)
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(model, opts, compare):
    """Prints every measurement for a model in eval mode on opts.device; compare: time generate_simple too."""
    B, reps, device = opts.batch_size, opts.repeats, opts.device
    cuda, c, A = device.startswith("cuda"), model.clip.config, model.n_attr
    where, ctx = setting(opts)
    torch.manual_seed(0)
    images = torch.randn(B, 3, c.image_resolution, c.image_resolution, device=device)
    if opts.compile:
        model.clip.visual.compile()
    grid = c.image_resolution // c.vision_patch_size
    print(f"{where}; {opts.clip or 'small config'}: ViT {c.vision_layers} x {c.vision_width} at "
          f"{c.image_resolution} px ({grid ** 2 + 1} image tokens), decoder {model.config.n_layer} x {c.embed_dim}, "
          f"A = {A}; batch {B}, {opts.dtype}{', compiled' if opts.compile else ''}; best of {reps} after a "
          f"warm-up")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    with torch.no_grad(), ctx:
        t_enc, _ = timed(lambda: model.clip.encode_image(images, all_tokens=True), reps, cuda)
        flops = encoder_flops(c, B)
        print(f"{'image encoder alone':40s} {B / t_enc:9.2f} images/s   {flops / t_enc / 1e12:.3g} TFLOP/s (2 x the "
              f"multiply-adds of its matmuls and convolutions: {flops / B / 1e9:.1f} GFLOP per image)")
        for case in ("untrained weights (stops by itself)", f"worst case: emits all {A} attributes"):
            if case.startswith("worst"):
                # every attribute, in order, then <eos>: the longest output, the length the official code always runs.
                # The hook replaces the logits (the decoder still computes them) by a fixed ramp: the order holds
                # whatever the weights, and the ramp is shallow enough that no allowed id's probability underflows to
                # a tie in generate_simple, which picks among probabilities rather than logits.
                ramp = -torch.arange(A + N_SPECIAL, dtype=torch.float, device=device)
                ramp[EOS] = -1e4
                hook = model.lm_head.register_forward_hook(lambda module, inputs, out: ramp.expand_as(out))
            t_greedy, (pred, _) = timed(lambda: model.generate(images, beam_size=1), reps, cuda)
            t_beam, _ = timed(lambda: model.generate(images, beam_size=3), reps, cuda)
            # the chain rule: a decoder step per emitted attribute plus one, as greedy (but none after the last
            # attribute: nothing is left to ask). Threshold 0 emits every attribute, whatever the weights.
            threshold = 0.0 if case.startswith("worst") else 0.5
            t_chain, (chain, _) = timed(lambda: model.generate(images, rule="chain", threshold=threshold), reps, cuda)
            print(f"-- {case}: {pred.sum(1).float().mean():.1f} attributes per image")
            for name, t in (("generate, greedy", t_greedy), ("generate, beam 3", t_beam)):
                print(f"{name:40s} {B / t:9.2f} images/s   decoding adds {100 * (t - t_enc) / t_enc:5.1f}% to the "
                      f"encoder")
            print(f"{'generate, chain rule':40s} {B / t_chain:9.2f} images/s   {100 * (t_chain / t_greedy - 1):+.0f}% "
                  f"over greedy; threshold {threshold}: {chain.sum(1).float().mean():.1f} attributes per image")
            if compare and case.startswith("untrained"):  # short outputs: a cheap check here; the worst case below
                assert torch.equal(model.generate_simple(images)[0], pred), "uncached decoding disagrees"
        if compare:  # the worst case, where the cache matters most
            t_unc, (pred_unc, _) = timed(lambda: model.generate_simple(images), reps, cuda)
            assert torch.equal(pred_unc, pred), "uncached decoding disagrees"
            print(f"{'greedy, no KV cache (generate_simple)':40s} {B / t_unc:9.2f} images/s   cached is "
                  f"{t_unc / t_greedy:5.1f}x faster; decoding alone {(t_unc - t_enc) / (t_greedy - t_enc):5.1f}x")
        else:
            print("-- generate_simple, without the KV cache: skipped (it runs on the small config in fp32 only; see "
                  "--help)")
        hook.remove()
    if cuda:
        inference_memory = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)

    # one training step, the way train.py takes it, on labels with about a third of the attributes positive
    model.train()
    targets = labels_to_targets((torch.rand(B, A, device=device) < 0.3).to(torch.uint8))
    optimizer, _ = train.configure_optimizer(model, train.TrainConfig())  # the paper's AdamW settings
    step_model = torch.compile(model) if opts.compile else model

    def train_step():
        with ctx:
            _, loss = step_model(images, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t_train, _ = timed(train_step, reps, cuda)
    memory = (f"   peak CUDA memory {torch.cuda.max_memory_allocated(device) / 2 ** 30:.1f} GiB (inference "
              f"{inference_memory / 2 ** 30:.1f} GiB)" if cuda else "")
    print(f"{'training step (fwd, bwd, AdamW)':40s} {B / t_train:9.2f} images/s   {t_train / t_enc:.1f}x the encoder's "
          f"time{memory}")
    model.eval()


def run_training(opts):
    """The demo's training, piece by piece: input pipelines, then training steps with and without the decoder."""
    B, reps, device = opts.batch_size, opts.repeats, opts.device
    cuda = device.startswith("cuda")
    cfg = train.parse_config(["--dataset=synth"])  # the demo's preset
    size = train.TINY_CLIP.image_resolution
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "synth")
        synth.make_synthetic(root, n=max(320, 5 * B), seed=0)
        data = load_dataset("synth", root)
        train_idx = data.splits["train"][:2 * B]
        where, ctx = setting(opts)
        print(f"{where}; the demo: tiny CLIP (ViT {train.TINY_CLIP.vision_layers} x {train.TINY_CLIP.vision_width} at "
              f"{size} px), decoder {cfg.n_layer} x {train.TINY_CLIP.embed_dim}, A = {len(data.attr_names)}; batch "
              f"{B}, {opts.dtype}{', compiled' if opts.compile else ''}; best of {reps} after a warm-up")
        # the input: a batch through the PIL transforms (what one DataLoader worker does), and from preloaded pixels
        images = PARImages(data, train_idx[:B], size, train=True)
        t_pil, _ = timed(lambda: torch.stack([images[i][0] for i in range(B)]), reps, False)
        print(f"{'input: PIL transforms, one process':40s} {B / t_pil:9.2f} images/s   read, pad, resize, crop, flip, "
              f"normalize, per image")
        t0 = time.perf_counter()
        pixels = load_images(data.image_paths, size, tmp)[torch.from_numpy(train_idx[:B])]
        t_decode = time.perf_counter() - t0
        t_pre, _ = timed(lambda: augment(pixels, crop_pad(size)), reps, False)
        print(f"{'input: preloaded uint8, on batches':40s} {B / t_pre:9.2f} images/s   after decoding once "
              f"({len(data.image_paths) / t_decode:.0f} images/s, all processes)")

    torch.manual_seed(0)
    model = train.build_model(cfg, data).to(device).train()
    labels = torch.from_numpy(data.labels[train_idx[:B]]).to(device)
    targets = labels_to_targets(labels)
    x = augment(pixels, crop_pad(size)).to(device)
    # the baseline (--head=linear): the same (fresh) image encoder, its pooled and projected token through one linear
    # layer, BCE per attribute; no text tower
    torch.manual_seed(0)
    baseline = train.build_model(dataclasses.replace(cfg, head="linear"), data).to(device).train()
    # the query head (--head=query): SequencePAR's decoder and text tower, every attribute token at once, BCE
    torch.manual_seed(0)
    query = train.build_model(dataclasses.replace(cfg, head="query"), data).to(device).train()

    def bce_loss(x, targets):
        return baseline(x, targets)[1]

    def sequence_loss(x, targets):
        return model(x, targets)[1]

    def query_loss(x, targets):
        return query(x, targets)[1]

    def encoder_only(x, _):
        return baseline.clip.visual(x, all_tokens=True).square().mean()

    times = {}
    steps = (("SequencePAR", model, sequence_loss, targets), ("query", query, query_loss, targets),
             ("BCE head", baseline, bce_loss, targets), ("encoder", baseline, encoder_only, None))
    for name, module, loss_fn, y in steps:
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        step_fn = torch.compile(loss_fn) if opts.compile else loss_fn

        def train_step():
            with ctx:
                loss = step_fn(x, y)
            loss.backward()
            if name != "encoder":  # the encoder alone: forward and backward only
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        times[name], _ = timed(train_step, reps, cuda)
    t_seq, t_query, t_bce, t_enc = times["SequencePAR"], times["query"], times["BCE head"], times["encoder"]
    print(f"{'training step, SequencePAR':40s} {B / t_seq:9.2f} images/s   fwd, bwd, clipping, AdamW: "
          f"{t_seq / t_bce:.2f}x the BCE head's time, {t_seq / t_query:.2f}x the query head's")
    print(f"{'training step, query head':40s} {B / t_query:9.2f} images/s   the same decoder, every attribute at once: "
          f"{t_query / t_bce:.2f}x the BCE head's time")
    print(f"{'training step, linear BCE head':40s} {B / t_bce:9.2f} images/s   the same encoder, its pooled token, "
          f"no text tower or decoder")
    print(f"{'image encoder fwd + bwd, all tokens':40s} {B / t_enc:9.2f} images/s   {100 * t_enc / t_seq:.0f}% of the "
          f"SequencePAR step (no optimizer)")


def emit_everything(model):
    # The worst case for the decoder, in the weights alone, so that the exported graphs have it too: ln_f's output
    # becomes the constant unit vector e_0 and lm_head's first column a ramp, attribute m's logit -2m, <eos> below all.
    # Greedy takes the next attribute until none is left, the chain rule finds each one's P above 0.63 (1 - e^-2; the
    # steps of 2 stay steps once int8 rounds the ramp); every other weight, and every computation, is as it was.
    V = model.n_attr + N_SPECIAL
    ramp = -2.0 * torch.arange(V)
    ramp[EOS] = -2.0 * V - 2
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = ramp


def quantized(fp32, int8, meta):
    """export.py's folder fp32 again in int8: onnxruntime's quantize_dynamic of the matrix multiplications by
    weights (weights int8 once, activations quantized on the fly)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    os.makedirs(int8)
    shutil.copy(os.path.join(fp32, "model.json"), int8)
    logging.disable(logging.WARNING)  # its advice to pre-process the graphs, which here changes nothing
    for graph in meta["graphs"].values():
        quantize_dynamic(os.path.join(fp32, graph), os.path.join(int8, graph), op_types_to_quantize=["MatMul"],
                         weight_type=QuantType.QInt8)
    logging.disable(logging.NOTSET)


def onnx_accuracy(path):
    """A checkpoint's test split scored by PyTorch, by its export in onnxruntime fp32 and in int8, each decoded as
    its run decodes and decided at the run's thresholds: does quantisation cost accuracy?"""
    from evaluate import CHAIN_PREFIX, average_precision, decide, decoding_options, mean_ap, metrics, predict
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path).eval()
    c = ckpt["config"]
    data = load_dataset(c["dataset"], c["root"] or None, pkl=c["pkl"], images=c["images"], partition=c["partition"])
    decoding = decoding_options(SimpleNamespace(**{k: c[k] for k in ("beam_size", "rule", "threshold", "unweight")}))
    chosen = (ckpt.get("thresholds") or {}).get("values")
    batches = torch.utils.data.DataLoader(PARImages(data, data.splits["test"], model.clip.config.image_resolution,
                                                    train=False), 256)
    pred, scores, gt = predict(model, batches, "cpu", nullcontext(), decoding, chosen)
    rows = {"PyTorch eager": (pred, scores)}
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = os.path.join(tmp, "fp32"), os.path.join(tmp, "int8")
        meta = export.export(model, ckpt, path, fp32)
        quantized(fp32, int8, meta)
        for name, folder in (("onnxruntime fp32", fp32), ("onnxruntime int8", int8)):
            runner, out = onnx_decode.load(folder), []
            for images, _ in batches:
                opts = dict(rule=decoding["rule"], unweight=decoding["unweight"], threshold=CHAIN_PREFIX) \
                    if runner.head == "sequencepar" else {}
                p, q = (torch.from_numpy(a) for a in runner.generate(images.numpy(), **opts))
                out.append((decide(p, q, runner.head != "sequencepar" or decoding["rule"] == "chain", decoding, chosen), q))
            rows[name] = (torch.cat([o[0] for o in out]).numpy(), torch.cat([o[1] for o in out]).numpy())
    print(f"{path} on {c['dataset']} test ({len(gt)} images), {decoding['rule']} rule, "
          + ("each attribute at its threshold chosen on val" if chosen else f"threshold {decoding['threshold']}"))
    for name, (p, q) in rows.items():
        m = metrics(gt, p)
        agree = (p == rows["PyTorch eager"][0]).all(1).mean()
        print(f"{name:18s} mA {m['mA']:.2f} | F1 {m['F1']:.2f} | mAP {mean_ap(average_precision(gt, q)):.2f} | "
              f"the same attributes as PyTorch for {100 * agree:.2f}% of the images, scores within "
              f"{np.abs(q - rows['PyTorch eager'][1]).max():.1e}")


def run_onnx(model, opts):
    """PyTorch eager against the exported graphs in onnxruntime, fp32 and int8: prints one table."""
    threads, c, A = torch.get_num_threads(), model.clip.config, model.n_attr
    emit_everything(model)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = os.path.join(tmp, "fp32"), os.path.join(tmp, "int8")
        meta = export.export(model, dict(attr_names=[f"a{i}" for i in range(A)], config={}, step=0), "bench", fp32)
        quantized(fp32, int8, meta)
        runners = [onnx_decode.load(folder, threads) for folder in (fp32, int8)]
    what = "the demo's model" if opts.clip == "tiny" else opts.clip or "small config"
    print(f"CPU, {threads} threads for PyTorch and for onnxruntime; {what}: ViT "
          f"{c.vision_layers} x {c.vision_width} at {c.image_resolution} px, decoder {model.config.n_layer} x "
          f"{c.embed_dim}, A = {A}, every attribute emitted; images/s, best of {opts.repeats} after a warm-up")
    print(f"{'batch':>5}  {'':14s} {'PyTorch eager':>13} {'onnxruntime fp32':>22} {'onnxruntime int8':>22}")
    for B in [opts.batch_size] if opts.batch_size else [1, 8]:
        images = torch.randn(B, 3, c.image_resolution, c.image_resolution, generator=torch.Generator().manual_seed(B))
        x = images.numpy()
        for name, decoding in (("image encoder", None), ("greedy", dict(rule="greedy")),
                               ("chain rule", dict(rule="chain"))):
            if decoding is None:
                ours = torch.no_grad()(lambda: model.memory_kv(images))
                theirs = [lambda r=r: r.sessions["encoder"].run(None, {"images": x}) for r in runners]
            else:
                ours = lambda: model.generate(images, **decoding)  # noqa: E731
                theirs = [lambda r=r: r.generate(x, **decoding) for r in runners]
            t_torch, out = timed(ours, opts.repeats, False)
            times = []
            for fn in theirs:
                t, got = timed(fn, opts.repeats, False)
                times.append(t)
                if decoding is not None:  # the same decoding: every attribute, in every runtime
                    assert out[0].all() and (got[0] == 1).all(), f"{name}: not every attribute was emitted"
            print(f"{B:5d}  {name:14s} {B / t_torch:13.2f} " + " ".join(
                f"{B / t:13.2f} ({t_torch / t:4.2f}x)" for t in times))


def main(argv):
    opts = parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.train:
        return run_training(opts)
    if opts.onnx:
        export.require("bench.py --onnx=True")
        if opts.ckpt:
            return onnx_accuracy(opts.ckpt)
    torch.manual_seed(0)
    if opts.onnx and opts.clip == "tiny":  # the demo's model
        preset = train.PRESETS["synth"]
        model = SequencePAR(clip.CLIP(train.TINY_CLIP), [prompt_for(n) for n in synth.ATTRS],
                            DecoderConfig(preset["n_layer"], preset["n_head"], preset["dropout"]))
        return run_onnx(model.eval(), opts)
    config = train.TINY_CLIP if opts.clip == "tiny" else clip.config(opts.clip) if opts.clip else SMALL
    model = SequencePAR(clip.CLIP(config), PROMPTS_35, DecoderConfig(n_layer=6, n_head=8))
    if opts.onnx:
        return run_onnx(model.eval(), opts)
    # generate_simple on the small config in fp32 only (see the docstring)
    run(model.to(opts.device).eval(), opts, compare=opts.clip in ("", "tiny") and opts.dtype == "fp32")


if __name__ == "__main__":
    cli.run(main, BenchConfig, __doc__)
