"""The README's Method chapter: its worked example and the shapes of its diagram are what the code does."""
import os
import re

import torch

import clip
import synth
from conftest import ROOT
from data import PROMPTS  # PETA's 35 prompts come first
from decoder import DecoderConfig, SequencePAR, labels_to_targets

README = open(os.path.join(ROOT, "README.md")).read()


def lines_of(block):
    return [re.sub(r"\s+", " ", line.strip()) for line in block.strip().splitlines()]


def in_readme(line):
    return any(line in re.sub(r"\s+", " ", r) for r in README.splitlines())


def test_the_worked_example():
    positives = ["Female", "Age18-60", "Back", "LongHair", "ShoulderBag", "LongSleeve", "Trousers"]
    labels = torch.zeros(1, len(synth.ATTRS), dtype=torch.uint8)
    columns = [synth.ATTRS.index(p) for p in positives]
    labels[0, columns] = 1
    target = labels_to_targets(labels)[0].tolist()
    expected = [
        "positive attributes " + ", ".join(positives),
        "column indices " + ", ".join(map(str, columns)),
        "ids (3 + column) " + ", ".join(str(3 + c) for c in columns),
        f"target (A + 2 = {len(target)}) " + " ".join(map(str, target)),
        "decoder input target[:-1] = " + " ".join(map(str, target[:10])) + " ...",
        "labels target[1:] = " + " ".join(map(str, target[1:10])) + " ...",
    ]
    for line in expected:
        assert in_readme(line), line


def test_the_shapes_at_the_real_size():
    # ViT-L/14 as released, cut to one layer per tower to stay fast; PETA's 35 prompts; the paper's 8 decoder heads
    config = clip.config("ViT-L/14")
    config.vision_layers = config.transformer_layers = 1
    prompts = list(PROMPTS.values())[:35]
    model = SequencePAR(clip.CLIP(config), prompts, DecoderConfig(n_layer=1, n_head=8)).eval()
    B = 2
    images = torch.randn(B, 3, 224, 224)
    labels = torch.zeros(B, 35, dtype=torch.uint8)
    labels[0, [1, 4, 9]], labels[1, [2, 30]] = 1, 1
    with torch.no_grad():
        tokens = model.clip.encode_image(images, all_tokens=True)
        kv = model.memory_kv(images)[0]
        table, text = model.token_table(), model.text_features()
        targets = labels_to_targets(labels)
        logits, _ = model(images, targets)
    assert tokens.shape == (B, 257, 768) and kv[0].shape == kv[1].shape == (B, 8, 257, 96)
    assert table.shape == (38, 768) and targets.shape == (B, 37)
    assert logits.shape == (B, 1 + 3, 38)  # T = 1 + the most positives (3) of an image in the batch

    # the Method chapter's diagram gives these shapes, B and T for the batch and the sequence length
    def shape(t, names=("B",)):
        return "(" + ",".join(names[i] if i < len(names) else str(d) for i, d in enumerate(t.shape)) + ")"

    for part in [f"image {shape(images)}", f"image tokens {shape(tokens)}", f"keys, values {shape(kv[0])}",
                 f"--CLIP text--> {shape(text, ())}", f"token table {shape(table, ())}",
                 f"at every position {shape(logits, ('B', 'T'))}"]:
        assert in_readme(part), part
