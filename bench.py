"""
Inference speed of SequencePAR, measured side by side in one run, so the ratios hold whatever the machine.

    python bench.py [--batch=8] [--repeats=3] [--threads=0]

On a small config (an 8-layer ViT at 224 px, the paper's 6-layer decoder, A = 35 as PETA), it prints images/s of the
image encoder alone and of generate (greedy and beam 3), what decoding adds on top of the encoder (the prompts'
encoding, once per call, included), and how much the KV cache saves against two uncached loops written here: one that
recomputes the decoder over the whole prefix at every step, and one that does what the official code does (also
re-encodes every prompt over 77 positions). Both decode the same tokens as generate, and the run checks they agree.
"""
import sys
import time

import torch
import torch.nn.functional as F

import clip
from data import PROMPTS
from decoder import BOS, EOS, N_SPECIAL, DecoderConfig, SequencePAR, targets_to_labels

PROMPTS_35 = list(PROMPTS.values())[:35]  # PETA's 35 prompts, in sequence order


def uncached_generate(model, images, official=False):
    """Greedy decoding without any cache: every step runs the decoder over the whole prefix and recomputes the
    image tokens' keys and values; with official=True it also re-encodes the prompts at the full 77 positions.
    Both decode the model's own tokens under the model's own output rule, so they must agree with generate."""
    memory = model.clip.encode_image(images, all_tokens=True)  # (B, N, D)
    table = model.token_table()
    # the prompts as the official code feeds them: padded with zeros to CLIP's 77 positions, as tokenize pads them
    full_prompts = F.pad(model.prompt_tokens, (0, model.clip.config.context_length - model.prompt_tokens.shape[1]))
    seq = torch.full((images.shape[0], 1), BOS)  # (B, T)
    for _ in range(model.n_attr + 1):
        if official:  # the same table, through the same unit normalisation, but encoded again at every step
            table = F.normalize(torch.cat([model.transformer.wte.weight, model.clip.encode_text(full_prompts)]), dim=-1)
        kvs = [block.cross_attn.memory_kv(memory) for block in model.transformer.h]
        logits = model.decode(seq, kvs, table)[:, -1]  # (B, V)
        nxt = logits.masked_fill(~model.allowed(seq[:, -1]), float("-inf")).argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], 1)  # (B, T + 1)
        if (nxt < N_SPECIAL).all():
            break
    return targets_to_labels(seq, model.n_attr)


def timed(fn, repeats):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv):
    opts = dict(batch=8, repeats=3, threads=0)
    for arg in argv:
        key, _, value = arg.lstrip("-").partition("=")
        if key not in opts or not value.isdigit():
            sys.exit(f"error: bad option {arg!r}; options are --batch=N, --repeats=N, --threads=N")
        opts[key] = int(value)
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    torch.manual_seed(0)
    # a ViT-B/16-like encoder cut to 8 layers of 512, with the released models' ratio of joint width to ViT width
    config = clip.CLIPConfig(embed_dim=384, image_resolution=224, vision_layers=8, vision_width=512, vision_heads=8,
                             vision_patch_size=16, transformer_width=384, transformer_heads=6, transformer_layers=4)
    model = SequencePAR(clip.CLIP(config), PROMPTS_35, DecoderConfig(n_layer=6, n_head=8)).eval()
    images = torch.randn(opts["batch"], 3, 224, 224)
    B, reps = opts["batch"], opts["repeats"]
    print(f"CPU, {torch.get_num_threads()} threads, batch {B}, A = {model.n_attr}, ViT width {config.vision_width} x "
          f"{config.vision_layers} layers, {1 + (224 // 16) ** 2} image tokens, decoder "
          f"{model.config.n_layer} layers x {config.embed_dim}; best of {reps}")

    with torch.no_grad():
        t_enc, _ = timed(lambda: model.clip.encode_image(images, all_tokens=True), reps)
        print(f"{'image encoder alone':40s} {B / t_enc:8.1f} images/s")
        for case in ("untrained weights (stops by itself)", "worst case: emits all 35 attributes"):
            if case.startswith("worst"):
                # every attribute, in order, then <eos>: the longest output, the length the official code always runs
                bias = -10.0 * torch.arange(model.n_attr + N_SPECIAL)
                bias[EOS] = -1e4
                hook = model.lm_head.register_forward_hook(lambda module, inputs, out: out + bias)
            t_greedy, (pred, _) = timed(lambda: model.generate(images, beam_size=1), reps)
            t_beam, _ = timed(lambda: model.generate(images, beam_size=3), reps)
            print(f"-- {case}: {pred.sum(1).float().mean():.1f} attributes per image")
            print(f"{'generate, greedy':40s} {B / t_greedy:8.1f} images/s   decoding adds "
                  f"{100 * (t_greedy - t_enc) / t_enc:5.1f}% to the encoder")
            print(f"{'generate, beam 3':40s} {B / t_beam:8.1f} images/s   decoding adds "
                  f"{100 * (t_beam - t_enc) / t_enc:5.1f}% to the encoder")
            if case.startswith("untrained"):  # short outputs: a cheap check here; the worst case is checked below
                for official in (False, True):
                    assert torch.equal(uncached_generate(model, images, official), pred), "uncached decoding disagrees"
        t_unc, pred_unc = timed(lambda: uncached_generate(model, images), reps)
        t_off, pred_off = timed(lambda: uncached_generate(model, images, official=True), 1)
        hook.remove()
        assert torch.equal(pred_unc, pred) and torch.equal(pred_off, pred), "uncached decoding disagrees"
        print(f"{'greedy, no KV cache':40s} {B / t_unc:8.1f} images/s   cached is {t_unc / t_greedy:5.1f}x faster; "
              f"decoding alone {(t_unc - t_enc) / (t_greedy - t_enc):5.1f}x")
        print(f"{'greedy, official-style (text each step)':40s} {B / t_off:8.1f} images/s   cached is "
              f"{t_off / t_greedy:5.1f}x faster")


if __name__ == "__main__":
    main(sys.argv[1:])
