"""The chain rule (generate(rule="chain")): exact by enumeration of every label set, cached equals the definition,
its thresholds, its cost in decoder steps, and its argument checks."""
import itertools

import pytest
import torch

from decoder import BOS, EOS, PAD, SequencePAR
from test_decoder import PROMPTS, constant_logits_model, tiny_model


def weighted_model(n_attr, seed):
    # tiny_model's weights with the paper's loss weights exp(1 - r_j), from positive rates far apart
    model = tiny_model(n_attr=n_attr, seed=seed)
    rates = torch.linspace(0.05, 0.9, n_attr)[torch.randperm(n_attr, generator=torch.Generator().manual_seed(seed))]
    weighted = SequencePAR(model.clip, PROMPTS[:n_attr], model.config, pos_rates=rates).eval()
    weighted.load_state_dict(model.state_dict() | {"loss_weight": weighted.loss_weight})
    return weighted


def set_probabilities(model, image, unweight):
    """P(S | image) for every subset S of the attributes, by the sequence model's definition: <bos>, S in id order,
    <eos>, each step's next-id probability renormalised over the ids allowed after it (<eos> and the attributes
    past the last one); with unweight, over p_k / w_k instead of p_k. In float64, written without the decoder's
    generate code."""
    A = model.n_attr
    sets = [s for r in range(A + 1) for s in itertools.combinations(range(A), r)]
    # every sequence fed at once, filled with <pad> to one length: the causal mask keeps the filler out of the prefixes
    idx = torch.tensor([[BOS] + [3 + a for a in s] + [PAD] * (A - len(s)) for s in sets])  # (2^A, A + 1)
    with torch.no_grad():
        kvs = [tuple(t.expand(len(sets), -1, -1, -1) for t in kv) for kv in model.memory_kv(image[None])]
        p = model.decode(idx, kvs, model.token_table()).double().softmax(-1)  # (2^A, A + 1, V)
    if unweight:
        p = p / model.loss_weight.double()
    probs = {}
    for i, s in enumerate(sets):
        prob, last = 1.0, -1
        for t, target in enumerate([3 + a for a in s] + [EOS]):
            allowed = [EOS] + list(range(3 + last + 1, 3 + A))
            prob *= (p[i, t, target] / p[i, t, allowed].sum()).item()
            last = target - 3
        probs[s] = prob
    return probs


@pytest.mark.parametrize("n_attr", [3, 5, 8])
@pytest.mark.parametrize("unweight", [False, True])
def test_chain_scores_are_the_conditionals_of_the_set_distribution(n_attr, unweight):
    # score m must be P(m in S | S agrees with the rule's own decisions on 0 .. m-1), summed over all 2^A sets
    emitted = 0
    for seed in range(3):
        model = weighted_model(n_attr, seed) if unweight else tiny_model(n_attr=n_attr, seed=seed)
        images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        pred, scores = model.generate(images, rule="chain", threshold=0.4, unweight=unweight)
        emitted += pred.sum().item()
        for i in range(4):
            probs = set_probabilities(model, images[i], unweight)
            assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)  # the enumeration is a distribution
            decided = pred[i].tolist()
            for m in range(n_attr):
                agree = {s: P for s, P in probs.items() if all((a in s) == decided[a] for a in range(m))}
                expected = sum(P for s, P in agree.items() if m in s) / sum(agree.values())
                assert scores[i, m].item() == pytest.approx(expected, abs=1e-5), (seed, i, m)
    assert 0 < emitted < 3 * 4 * n_attr  # the decisions followed both branches


def test_unweight_changes_the_scores():
    model = weighted_model(8, seed=0)
    images = torch.randn(4, 3, 32, 32)
    plain = model.generate(images, rule="chain")[1]
    unweighted = model.generate(images, rule="chain", unweight=True)[1]
    assert not torch.allclose(plain, unweighted, atol=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("unweight", [False, True])
def test_generate_chain_equals_generate_chain_simple(seed, unweight):
    model = weighted_model(35, seed) if unweight else tiny_model(seed=seed)
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    pred, scores = model.generate(images, rule="chain", threshold=0.2, unweight=unweight)
    simple_pred, simple_scores = model.generate_chain_simple(images, threshold=0.2, unweight=unweight)
    assert pred.sum() > 0 and len(set(pred.sum(1).tolist())) > 1  # sets of different lengths in one batch
    assert torch.equal(pred, simple_pred)
    torch.testing.assert_close(scores, simple_scores, rtol=1e-5, atol=1e-6)


def test_chain_batch_equals_one_by_one():
    model = tiny_model(seed=3)
    images = torch.randn(5, 3, 32, 32)
    pred, scores = model.generate(images, rule="chain", threshold=0.3)
    assert pred.sum() > 0
    for i in range(5):
        p, s = model.generate(images[i:i + 1], rule="chain", threshold=0.3)
        assert torch.equal(p[0], pred[i])
        torch.testing.assert_close(s[0], scores[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 1.0])
def test_thresholds_and_score_range(threshold):
    model = tiny_model(seed=1)
    images = torch.randn(6, 3, 32, 32)
    pred, scores = model.generate(images, rule="chain", threshold=threshold)
    assert pred.shape == scores.shape == (6, 35) and pred.dtype == torch.uint8
    assert (scores > 0).all() and (scores <= 1).all()  # every attribute is scored, whatever was decided
    assert torch.equal(pred, (scores > threshold).to(torch.uint8))
    if threshold == 0.0:
        assert pred.all()
    if threshold == 1.0:
        assert not pred.any()


def test_by_hand_on_a_constant_model():
    # The same next-id distribution after every prefix: allowed ids in ratio <eos> 3, a0 4, a1 1, a2 1, a3 2 (the
    # specials it must not emit are far more probable). Greedy emits a0, the most probable next id, then stops at
    # <eos>; the chain rule gives P(a0) = 4/11, P(a1) = 1/7 (a0 decided), P(a2) = 1/6, P(a3) = 2/5.
    logits = [torch.tensor(x).log().item() for x in (30.0, 3.0, 40.0, 4.0, 1.0, 1.0, 2.0)]
    model = constant_logits_model(logits)
    images = torch.randn(2, 3, 32, 32)
    expected = torch.tensor([4 / 11, 1 / 7, 1 / 6, 2 / 5])
    assert model.generate(images)[0].tolist() == [[1, 0, 0, 0]] * 2
    for threshold, kept in ((0.5, [0, 0, 0, 0]), (0.3, [1, 0, 0, 1]), (0.15, [1, 0, 1, 1])):
        for pred, scores in (model.generate(images, rule="chain", threshold=threshold),
                             model.generate_chain_simple(images, threshold=threshold)):
            assert pred.tolist() == [kept] * 2
            torch.testing.assert_close(scores, expected.expand(2, 4), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.6])
def test_one_decoder_step_per_emitted_attribute_plus_one(threshold):
    # as greedy: a step after <bos> and after each emitted attribute, but the last attribute (nothing is left to ask)
    model = tiny_model(seed=2)
    steps = []
    hook = model.lm_head.register_forward_hook(lambda module, inputs, out: steps.append(out.shape[1]))
    images = torch.randn(6, 3, 32, 32)
    pred, _ = model.generate(images, rule="chain", threshold=threshold)
    hook.remove()
    assert set(steps) == {1}  # one new position per call: the cache holds the rest
    assert len(steps) == max(n + (0 if last else 1) for n, last in zip(pred.sum(1).tolist(), pred[:, -1].tolist()))


def test_bad_arguments():
    model = tiny_model(n_attr=4)
    images = torch.randn(1, 3, 32, 32)
    for kwargs, message in ((dict(rule="beam"), "rule='beam'"), (dict(rule="chain", threshold=-0.1), "threshold=-0.1"),
                            (dict(threshold=1.5), "threshold=1.5"), (dict(rule="chain", beam_size=3), "beam_size=3"),
                            (dict(beam_size=0), "beam_size=0"), (dict(unweight=True), "unweight=True")):
        with pytest.raises(ValueError, match=message):
            model.generate(images, **kwargs)
