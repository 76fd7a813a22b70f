"""The SequencePAR decoder: shapes, causality, exact cached decoding, the output constraints, beam search, learning."""
import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

import clip
from decoder import BOS, EOS, PAD, DecoderConfig, SequencePAR, labels_to_targets, targets_to_labels
from tokenizer import tokenize

PROMPTS = [f"A pedestrian with attribute number {i}" for i in range(35)]


def tiny_model(n_attr=35, seed=0, n_layer=2, dropout=0.0):
    torch.manual_seed(seed)
    config = clip.CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_heads=2,
                             vision_patch_size=8, transformer_width=64, transformer_heads=2, transformer_layers=2)
    model = SequencePAR(clip.CLIP(config), PROMPTS[:n_attr], DecoderConfig(n_layer=n_layer, n_head=4, dropout=dropout))
    # the decoder starts near uniform; larger weights give decisive, varied outputs to compare
    with torch.no_grad():
        model.lm_head.weight.normal_(std=0.5)
    return model.eval()


def random_labels(B, A, seed=0, rate=0.3):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, A, generator=g) < rate).to(torch.uint8)


def test_labels_to_targets_example_and_round_trip():
    labels = torch.zeros(2, 35, dtype=torch.uint8)
    labels[0, [2, 7, 30]] = 1
    targets = labels_to_targets(labels)
    assert targets.shape == (2, 37)
    assert targets[0, :5].tolist() == [BOS, 3 + 2, 3 + 7, 3 + 30, EOS] and (targets[0, 5:] == PAD).all()
    assert targets[1, :2].tolist() == [BOS, EOS] and (targets[1, 2:] == PAD).all()
    assert labels_to_targets(torch.tensor([[0, 1, 0, 1, 1]]))[0].tolist() == [BOS, 4, 6, 7, EOS, PAD, PAD]  # A = 5
    full = torch.ones(1, 35, dtype=torch.uint8)
    assert labels_to_targets(full)[0].tolist() == [BOS] + list(range(3, 38)) + [EOS]
    labels = random_labels(16, 35)
    assert torch.equal(targets_to_labels(labels_to_targets(labels), 35), labels)


def test_shapes():
    model = tiny_model()
    images, labels = torch.randn(3, 3, 32, 32), random_labels(3, 35)
    targets = labels_to_targets(labels)
    logits, loss = model(images, targets)
    longest = int(labels.sum(1).max()) + 2  # <bos> ... <eos>
    assert logits.shape == (3, longest - 1, 38) and loss.ndim == 0 and torch.isfinite(loss)
    pred, scores = model.generate(images)
    assert pred.shape == (3, 35) and pred.dtype == torch.uint8 and scores.shape == (3, 35)
    assert ((scores > 0) == pred.bool()).all() and (scores <= 1).all()


def test_causality():
    model = tiny_model()
    images = torch.randn(2, 3, 32, 32)
    targets = labels_to_targets(random_labels(2, 35, rate=0.5))
    logits, _ = model(images, targets)
    for t in range(5):
        changed = targets.clone()
        changed[:, t + 1] = 3 + (changed[:, t + 1] + 11) % 35  # another attribute at position t + 1
        other, _ = model(images, changed)
        assert torch.equal(other[:, :t + 1], logits[:, :t + 1])
        assert not torch.allclose(other[:, t + 1], logits[:, t + 1])


def test_decoder_attention_layers_equal_the_formula_written_out():
    model = tiny_model()
    block = model.transformer.h[0]
    x, memory = torch.randn(2, 6, 32), torch.randn(2, 17, 32)

    def heads(t):
        return t.view(2, -1, 4, 8).transpose(1, 2)

    def attend(q, k, v, mask=None):
        s = q @ k.transpose(-2, -1) / 8 ** 0.5
        if mask is not None:
            s = s.masked_fill(mask, float("-inf"))
        return (s.softmax(-1) @ v).transpose(1, 2).reshape(2, -1, 32)

    q, k, v = map(heads, block.attn.c_attn(x).split(32, dim=2))
    y = attend(q, k, v, torch.ones(6, 6).triu(1).bool())
    torch.testing.assert_close(block.attn(x), block.attn.c_proj(y), rtol=1e-5, atol=1e-6)
    k, v = map(heads, block.cross_attn.c_kv(memory).split(32, dim=2))
    y = attend(heads(block.cross_attn.c_q(x)), k, v)
    out = block.cross_attn(x, block.cross_attn.memory_kv(memory))
    torch.testing.assert_close(out, block.cross_attn.c_proj(y), rtol=1e-5, atol=1e-6)


def test_written_out_cross_attention_equals_sdpa():
    # inside keeping_attention every layer's cross-attention is written out: the logits are SDPA's, and the weights
    # are, for each head and position, a distribution over the image tokens; outside, none are kept
    model = tiny_model(n_layer=3)
    images = torch.randn(2, 3, 32, 32)
    idx = labels_to_targets(random_labels(2, 35, rate=0.5))[:, :10]
    with torch.no_grad():
        kvs, table = model.memory_kv(images), model.token_table()
        with model.keeping_attention() as atts:
            logits = model.decode(idx, kvs, table)
        torch.testing.assert_close(logits, model.decode(idx, kvs, table), rtol=0, atol=1e-5)
    assert len(atts) == 3 and all(block.cross_attn.kept is None for block in model.transformer.h)
    for att in atts:
        assert att.shape == (2, 4, 10, 17)  # (B, nh, T, L): 16 patches and the class token
        torch.testing.assert_close(att.sum(-1), torch.ones(2, 4, 10), rtol=0, atol=1e-6)


def test_kv_cache_equals_full_recomputation():
    model = tiny_model()
    images = torch.randn(2, 3, 32, 32)
    seq = labels_to_targets(random_labels(2, 35, rate=0.6))[:, :12]
    with torch.no_grad():
        kvs, table = model.memory_kv(images), model.token_table()
        k = kvs[0][0]
        cache = [dict(k=k.new_zeros(2, 4, 36, 8), v=k.new_zeros(2, 4, 36, 8)) for _ in kvs]
        for t in range(seq.shape[1]):
            step = model.decode(seq[:, t:t + 1], kvs, table, cache, start=t)[:, -1]
            full = model.decode(seq[:, :t + 1], kvs, table)[:, -1]
            torch.testing.assert_close(step, full, rtol=0, atol=1e-5)


def reference_decode(model, image):
    """Greedy decoding written independently: teacher forcing on the model's own outputs, recomputing the whole
    prefix at every step, with the output rules applied by hand."""
    A = model.n_attr
    seq, probs = [BOS], {}
    with torch.no_grad():
        kvs, table = model.memory_kv(image[None]), model.token_table()
        while True:
            p = model.decode(torch.tensor([seq]), kvs, table)[0, -1].softmax(-1)
            last = max(seq[1:], default=2)
            allowed = [EOS] + [i for i in range(3, 3 + A) if i > last]
            nxt = max(allowed, key=lambda i: p[i].item())
            if nxt == EOS:
                break
            seq.append(nxt)
            probs[nxt - 3] = p[nxt].item()
    return probs


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_greedy_equals_reference_and_beam_one(seed):
    model = tiny_model(seed=seed)
    images = torch.randn(4, 3, 32, 32)
    pred, scores = model.generate(images, beam_size=1)
    assert pred.sum() > 0
    for i in range(4):
        probs = reference_decode(model, images[i])
        assert pred[i].nonzero().flatten().tolist() == sorted(probs)
        for j, p in probs.items():
            assert scores[i, j].item() == pytest.approx(p, rel=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_generate_equals_generate_simple(seed):
    model = tiny_model(seed=seed)
    images = torch.randn(6, 3, 32, 32)
    pred, scores = model.generate(images, beam_size=1)
    simple_pred, simple_scores = model.generate_simple(images)
    assert pred.sum() > 0 and (pred.sum(1) < 35).all()  # sequences that stop by themselves, at different lengths
    assert torch.equal(pred, simple_pred)
    torch.testing.assert_close(scores, simple_scores, rtol=1e-5, atol=1e-6)
    for i in range(2):  # and the definition itself agrees with the reference written here
        probs = reference_decode(model, images[i])
        assert simple_pred[i].nonzero().flatten().tolist() == sorted(probs)
        for j, p in probs.items():
            assert simple_scores[i, j].item() == pytest.approx(p, rel=1e-5)


def test_allowed_next_ids():
    model = tiny_model(n_attr=4)  # ids: <bos> 0, <eos> 1, <pad> 2, attributes 3 .. 6
    prev = torch.tensor([BOS, 3, 5, 6, EOS, PAD])
    assert model.allowed(prev).int().tolist() == [
        [0, 1, 0, 1, 1, 1, 1],  # after <bos>: <eos> or any attribute
        [0, 1, 0, 0, 1, 1, 1],  # after attribute 0: <eos> or a later attribute
        [0, 1, 0, 0, 0, 0, 1],
        [0, 1, 0, 0, 0, 0, 0],  # after the last attribute: only <eos>
        [0, 0, 1, 0, 0, 0, 0],  # after <eos>, and after <pad>: only <pad>
        [0, 0, 1, 0, 0, 0, 0]]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_batch_equals_one_by_one(beam_size):
    model = tiny_model(seed=3)
    images = torch.randn(5, 3, 32, 32)
    pred, scores = model.generate(images, beam_size=beam_size)
    for i in range(5):
        p, s = model.generate(images[i:i + 1], beam_size=beam_size)
        assert torch.equal(p[0], pred[i])
        torch.testing.assert_close(s[0], scores[i], rtol=1e-5, atol=1e-6)


def sequence_logp(model, image, attrs):
    # log-probability of <bos> attrs <eos> under teacher forcing (raw softmax, as beam search scores it)
    seq = torch.tensor([[BOS] + [3 + a for a in attrs] + [EOS]])
    with torch.no_grad():
        logits = model.decode(seq[:, :-1], model.memory_kv(image[None]), model.token_table())
    return F.log_softmax(logits[0], -1).gather(1, seq[0, 1:, None]).sum().item()


def test_beam_search_finds_the_best_sequence():
    # With A = 4 there are 16 valid outputs; a beam of 16 never prunes one, so it must return the exact best.
    model = tiny_model(n_attr=4, seed=5)
    with torch.no_grad():
        model.lm_head.weight.normal_(std=0.05)  # flat distributions: the greedy choice is often not the best
    images = torch.randn(6, 3, 32, 32)
    pred, _ = model.generate(images, beam_size=16)
    greedy, _ = model.generate(images, beam_size=1)
    subsets = [s for r in range(5) for s in itertools.combinations(range(4), r)]
    differs = 0
    for i in range(6):
        best = max(subsets, key=lambda s: sequence_logp(model, images[i], s))
        assert pred[i].nonzero().flatten().tolist() == list(best)
        differs += not torch.equal(pred[i], greedy[i])
    assert differs > 0, "the test should include images where beam search beats greedy"


def constant_logits_model(logits):
    # a model whose next-token logits are the same at every step, whatever the image: ln_f outputs its bias only
    model = tiny_model(n_attr=len(logits) - 3)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = torch.tensor(logits, dtype=torch.float)
    return model


def test_constraints_against_a_model_that_wants_invalid_tokens():
    # prefers <bos>, then <pad>, then attribute 2, then 0 and 1; <eos> is its last choice
    A = 8
    logits = [10.0, -10.0, 9.0] + [7.0, 6.0, 8.0] + [5.0, 4.0, 3.0, 2.0, 1.0]
    model = constant_logits_model(logits)
    p = torch.tensor(logits).softmax(-1)
    pred, scores = model.generate(torch.randn(2, 3, 32, 32), beam_size=1)
    # greedy: a2 first; then a0 and a1 are behind it in id order; every later attribute beats <eos>, so it emits
    # them all, in order, and stops when none is left
    assert pred.tolist() == [[0, 0, 1, 1, 1, 1, 1, 1]] * 2
    torch.testing.assert_close(scores[0], torch.where(pred[0].bool(), p[3:], torch.zeros(A)))
    simple_pred, simple_scores = model.generate_simple(torch.randn(2, 3, 32, 32))
    assert torch.equal(simple_pred, pred)
    torch.testing.assert_close(simple_scores, scores, rtol=1e-5, atol=1e-7)
    # beam search prefers shorter sequences here (each attribute costs log-probability), but it too emits only
    # attributes, each scored with the model's probability
    pred, scores = model.generate(torch.randn(2, 3, 32, 32), beam_size=3)
    assert pred[:, 2].all()
    torch.testing.assert_close(scores, torch.where(pred.bool(), p[3:], torch.zeros(A)))


def test_stops_at_eos_immediately():
    model = constant_logits_model([0.0, 5.0, 0.0] + [1.0] * 6)
    pred, scores = model.generate(torch.randn(3, 3, 32, 32), beam_size=2)
    assert pred.sum() == 0 and scores.sum() == 0
    pred, scores = model.generate_simple(torch.randn(3, 3, 32, 32))
    assert pred.sum() == 0 and scores.sum() == 0


def test_short_text_context_is_exact():
    model = tiny_model()
    full = tokenize(PROMPTS)
    assert model.prompt_tokens.shape[1] < 20 and model.prompt_tokens.shape[1] == full.argmax(1).max() + 1
    with torch.no_grad():
        # the table holds the prompts' text features as unit vectors
        expected = F.normalize(model.clip.encode_text(full), dim=-1)
        torch.testing.assert_close(model.token_table()[3:], expected, rtol=0, atol=1e-6)


def test_token_table_follows_the_weights():
    # the table is computed on every call: a weight change (an optimizer step, load_state_dict) shows at once
    model = tiny_model()
    with torch.no_grad():
        first = model.token_table()
        model.clip.ln_final.bias.add_(0.5)
        second = model.token_table()
        fresh = F.normalize(model.clip.encode_text(model.prompt_tokens, model.prompt_embedding), dim=-1)
        torch.testing.assert_close(second[3:], fresh, rtol=0, atol=1e-6)
        assert not torch.allclose(second[3:], first[3:], atol=1e-3)
    assert model.token_table().requires_grad  # with grad enabled the features are computed with their graph


def test_prompt_rows_train_as_the_whole_table():
    # SequencePAR trains a copy of the token embeddings its prompts use, the ids renumbered. The reference trains
    # CLIP's whole 49,408-row table on the original ids, with the same AdamW and clipping: the losses, the decoded
    # attributes and the trained rows must agree, and the rows no prompt uses get no gradient at all.
    model = tiny_model(n_attr=12).train()
    full = tokenize(PROMPTS[:12])[:, :model.prompt_tokens.shape[1]]
    ref = copy.deepcopy(model)
    ref.clip.token_embedding.weight.requires_grad_(True)
    ref.prompt_embedding.requires_grad_(False)
    ref.token_table = lambda: F.normalize(torch.cat([ref.transformer.wte.weight, ref.clip.encode_text(full)]), dim=-1)
    assert model.prompt_embedding.shape[0] == full.unique().numel() < 100
    g = torch.Generator().manual_seed(0)
    images, targets = torch.randn(8, 3, 32, 32, generator=g), labels_to_targets(random_labels(8, 12, seed=1))
    opts = []
    for m in (model, ref):
        params = [p for p in m.parameters() if p.requires_grad]
        opts.append((params, torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)))
    for step in range(3):
        losses = []
        for m, (params, opt) in zip((model, ref), opts):
            _, loss = m(images, targets)
            loss.backward()
            losses.append(loss.item())
            torch.nn.utils.clip_grad_norm_(params, 0.5)
            if m is ref:
                used = torch.zeros(ref.clip.config.vocab_size, dtype=torch.bool)
                used[full.unique()] = True
                assert ref.clip.token_embedding.weight.grad[~used].abs().max() == 0
            opt.step()
            opt.zero_grad()
        assert abs(losses[0] - losses[1]) < 1e-5
    torch.testing.assert_close(model.prompt_embedding, ref.clip.token_embedding.weight[full.unique()], rtol=0,
                               atol=1e-5)
    model.eval(), ref.eval()
    assert torch.equal(model.generate(images)[0], ref.generate(images)[0])


def test_weighted_loss():
    model = tiny_model(n_attr=6)
    rates = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.05, 0.6])
    weighted = SequencePAR(model.clip, PROMPTS[:6], model.config, pos_rates=rates).eval()
    weighted.load_state_dict(model.state_dict() | {"loss_weight": weighted.loss_weight})
    images, labels = torch.randn(4, 3, 32, 32), random_labels(4, 6, rate=0.5)
    targets = labels_to_targets(labels)
    logits, loss = weighted(images, targets)
    # by hand: per-token NLL, weight exp(1 - r) for attribute targets and 1 for <eos>, weighted mean over non-pad
    nll, w = [], []
    for b in range(4):
        for t in range(targets.shape[1] - 1):
            y = targets[b, t + 1].item()
            if t < logits.shape[1] and y != PAD:
                nll.append(-F.log_softmax(logits[b, t], -1)[y])
                w.append(1.0 if y < 3 else torch.exp(1 - rates[y - 3]).item())
    expected = sum(wi * n for wi, n in zip(w, nll)) / sum(w)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(model(images, targets)[1].item(), rel=1e-3)


def test_overfits_a_fixed_batch():
    model = tiny_model(n_attr=10, seed=0).train()
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 32, 32), random_labels(8, 10, seed=1, rate=0.4)
    targets = labels_to_targets(labels)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(150):
        _, loss = model(images, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    pred, scores = model.eval().generate(images, beam_size=1)
    assert torch.equal(pred, labels)
    assert torch.equal(model.generate(images, beam_size=3)[0], labels)
