"""
SequencePAR: pedestrian attributes generated as a sequence (arXiv 2312.01640).

CLIP turns the image into L tokens and each attribute's prompt into one vector; a GPT-style decoder reads
`<bos>`, then the positive attributes so far, attends to the image tokens, and predicts the next attribute or
`<eos>`. Training is teacher forcing. One model, two decoding rules:
- the paper's greedy rule (and beam search) asks "which attribute comes next?" and appends the most probable next id;
- the chain rule asks, in column order, "does this person have attribute m?": after prefix s (ending at attribute i
  or `<bos>`) with i+1 .. m-1 decided absent, P(y_m = 1) = p(m | s) / (p(<eos> | s) + sum_{k >= m} p(k | s)),
  appending m when it is above a threshold. It scores every attribute, at the same cost in decoder steps.
`generate_simple` and `generate_chain_simple` are the definitions, `generate` the same with a KV cache, and beam
search. At the end, the two heads our experiments compare it with, with the same interface: `LinearHead`, the
multi-label classifier SequencePAR replaces, and `QueryHead`, SequencePAR's decoder with the autoregression taken out.

Shapes: B batch, T attribute positions, L image tokens, D width (CLIP's embed dim), nh heads, hs head size,
A attributes, V = A + 3 vocabulary (`<bos>`, `<eos>`, `<pad>`, then attribute i as id 3 + i).
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenizer import tokenize

BOS, EOS, PAD = 0, 1, 2
N_SPECIAL = 3


@dataclass
class DecoderConfig:
    n_layer: int = 6      # the paper's decoder depth
    n_head: int = 8
    dropout: float = 0.1
    bias: bool = True


class SelfAttention(nn.Module):
    """Self-attention over attribute positions: causal, with an optional KV cache for decoding (SequencePAR), or every
    position seeing every other (causal=False: the query head, whose positions are all inputs, none a prediction)."""

    def __init__(self, n_embd, config, causal=True):
        super().__init__()
        self.n_head, self.dropout, self.causal = config.n_head, config.dropout, causal
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=config.bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache=None, start=0):
        B, T, D = x.shape
        q, k, v = self.c_attn(x).split(D, dim=2)
        q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if cache is not None:
            # decoding: store this step's keys and values, attend to every position so far (all are in the past)
            cache["k"][:, :, start:start + T] = k
            cache["v"][:, :, start:start + T] = v
            k, v = cache["k"][:, :, :start + T], cache["v"][:, :, :start + T]
        # A prefix fed at once needs the mask; a single new token sees everything cached. We test `cache is None`
        # first: in training, torch.compile may make T symbolic, and SDPA takes only a real bool, not `T > 1`.
        causal = self.causal and (cache is None or T > 1)
        assert start == 0 or not causal, "prefixes are fed only from position 0"
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, D)))


class CrossAttention(nn.Module):
    """Attribute positions attend to the image tokens. Keys and values depend on the image only, so decoding
    computes them once per layer (`memory_kv`) and reuses them at every step."""
    kept = None  # a list while the weights are wanted (AttributeDecoder.keeping_attention): forward appends them

    def __init__(self, n_embd, config):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.c_q = nn.Linear(n_embd, n_embd, bias=config.bias)
        self.c_kv = nn.Linear(n_embd, 2 * n_embd, bias=config.bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def memory_kv(self, memory):
        B, L, D = memory.shape
        k, v = self.c_kv(memory).split(D, dim=2)
        return tuple(t.view(B, L, self.n_head, D // self.n_head).transpose(1, 2) for t in (k, v))  # (B, nh, L, hs)

    def forward(self, x, kv):
        B, T, D = x.shape
        q = self.c_q(x).view(B, T, self.n_head, D // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if self.kept is not None:
            # the attention written out, as nanoGPT keeps it beside SDPA: the same output, and the weights, which
            # SDPA does not return, for whoever wants to see where each position looks (sample.py's attention maps)
            att = (q @ kv[0].transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)  # (B, nh, T, L), rows sum to 1
            self.kept.append(att)  # before dropout
            y = F.dropout(att, self.dropout, self.training) @ kv[1]
        else:
            y = F.scaled_dot_product_attention(q, *kv, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, D)))


class MLP(nn.Module):
    def __init__(self, n_embd, config):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd, config, causal=True):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=config.bias)
        self.attn = SelfAttention(n_embd, config, causal)
        self.ln_2 = nn.LayerNorm(n_embd, bias=config.bias)
        self.cross_attn = CrossAttention(n_embd, config)
        self.ln_3 = nn.LayerNorm(n_embd, bias=config.bias)
        self.mlp = MLP(n_embd, config)

    def forward(self, x, kv, cache=None, start=0):
        x = x + self.attn(self.ln_1(x), cache, start)
        x = x + self.cross_attn(self.ln_2(x), kv)
        x = x + self.mlp(self.ln_3(x))
        return x


def labels_to_targets(labels):
    """(B, A) 0/1 labels -> (B, A + 2) ids: <bos>, the positive attributes in column order, <eos>, <pad>..."""
    B, A = labels.shape
    ids = torch.arange(A, device=labels.device) + N_SPECIAL
    # Sorting puts the positives' ids first, in increasing order; negatives become a key past every id. With A = 5:
    # labels [0, 1, 0, 1, 1] -> keys [8, 4, 8, 6, 7] -> sorted [4, 6, 7, 8, 8] -> [4, 6, 7, PAD, PAD] after <bos>,
    # and <eos> after the 3 positives: targets [BOS, 4, 6, 7, EOS, PAD, PAD].
    keys = torch.where(labels.bool(), ids, A + N_SPECIAL).sort(dim=1).values
    targets = torch.full((B, A + 2), PAD, dtype=torch.long, device=labels.device)
    targets[:, 0] = BOS
    targets[:, 1:A + 1] = torch.where(keys < A + N_SPECIAL, keys, PAD)
    targets[torch.arange(B), 1 + labels.bool().sum(1)] = EOS
    return targets


def targets_to_labels(ids, n_attr):
    """Any (B, T) id tensor -> (B, A) uint8: 1 where attribute i's id appears; specials are ignored."""
    labels = torch.zeros(ids.shape[0], n_attr + N_SPECIAL, dtype=torch.uint8, device=ids.device)
    labels.scatter_(1, ids, 1)
    return labels[:, N_SPECIAL:]


def beam_step(beam_logp, logp, K):
    # One step of beam search. beam_logp (B*K,): the score of each hypothesis, image b's in rows b*K .. b*K + K - 1;
    # logp (B*K, V): the log-probability of each id after it. We keep the K best one-id extensions of each image's
    # hypotheses, best first, and return their scores, the row each one extends and the id it appends, each (B*K,).
    V = logp.shape[1]
    total = (beam_logp[:, None] + logp).view(-1, K * V)  # (B, K*V): every extension of an image's K hypotheses
    beam_logp, best = total.topk(K, dim=1)  # (B, K)
    src = torch.arange(total.shape[0], device=logp.device)[:, None] * K + best // V  # (B, K)
    return beam_logp.flatten(), src.flatten(), (best % V).flatten()


def renumber_prompt_tokens(tokens):
    # The prompts use a few dozen of CLIP's 49,408 token embeddings, and nothing else reads them, so we train a copy
    # of just those rows: every output is the same, but a step no longer makes a gradient for the whole table nor
    # AdamW update it. tokens (A, S), CLIP's ids -> the same tokens with each id renumbered to its row in the copy,
    # in the ids' order (EOT keeps the highest), and the rows of CLIP's table to copy, (U,) for the U ids used.
    rows, tokens = tokens.unique(return_inverse=True)
    return tokens, rows


class AttributeDecoder(nn.Module):
    """What SequencePAR and the query head share: CLIP, each attribute's prompt turned into a token by the text encoder
    (section 3.2), and a stack of decoder blocks over those tokens that attend to every image token."""

    def __init__(self, clip_model, prompts, config, n_positions, n_special=0, causal=True):
        super().__init__()
        self.config, self.n_attr = config, len(prompts)
        self.clip = clip_model
        D = clip_model.config.embed_dim
        # Prompt tokens cut to the longest prompt (its EOT position + 1): the text encoder is causal and pools at
        # EOT, so the cut is exact and saves most of the 77 positions.
        tokens = tokenize(prompts, context_length=clip_model.config.context_length)
        tokens = tokens[:, :int(tokens.argmax(1).max()) + 1]
        # The prompts' own trainable rows of the token embedding; CLIP's table stays as it was, frozen (DDP wants a
        # gradient for every trainable weight).
        tokens, rows = renumber_prompt_tokens(tokens)
        self.register_buffer("prompt_tokens", tokens, persistent=False)
        self.prompt_embedding = nn.Parameter(clip_model.token_embedding.weight.detach()[rows].clone())
        clip_model.token_embedding.requires_grad_(False)
        # SequencePAR's <bos>, <eos>, <pad> (the attribute tokens come from the text encoder); n_positions inputs
        specials = dict(wte=nn.Embedding(n_special, D)) if n_special else {}
        self.transformer = nn.ModuleDict(dict(
            **specials,
            wpe=nn.Embedding(n_positions, D),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(D, config, causal) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(D, bias=config.bias),
        ))

    def init_decoder(self):
        # Initialisation of the decoder only (CLIP keeps its own, possibly pretrained, weights). Linear layers get
        # std D^-0.5 as in CLIP's transformers, so activations stay of order one at any width; nanoGPT's fixed 0.02
        # equals that only for D ~ 2500, and is far too small for a narrow decoder, whose blocks then start near zero.
        D = self.clip.config.embed_dim
        for module in self.transformer.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=D ** -0.5)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for name, p in self.transformer.named_parameters():
            if name.endswith("c_proj.weight"):  # the three residual branches of each block shrink with depth
                nn.init.normal_(p, std=D ** -0.5 / math.sqrt(3 * self.config.n_layer))

    def text_features(self):
        # (A, D): the CLIP text feature of every prompt (section 3.2). We encode the prompts afresh on every call, so
        # the tokens always follow the weights: cut to their longest prompt, the A prompts cost little beside the
        # image encoder.
        return self.clip.encode_text(self.prompt_tokens, self.prompt_embedding)

    def attribute_tokens(self):
        # (A, D): every attribute token is a unit vector, as CLIP compares its features. Raw text features are far
        # larger than the decoder's other embeddings (std 0.02), and in a pre-norm stack such a token would drown what
        # the blocks add to it: the image would hardly reach the logits.
        return F.normalize(self.text_features(), dim=-1)

    def memory_kv(self, images):
        # the image tokens' keys and values for every layer's cross-attention: a list of (k, v), each (B, nh, L, hs)
        memory = self.clip.encode_image(images, all_tokens=True)  # (B, L, D), section 3.2
        return [block.cross_attn.memory_kv(memory) for block in self.transformer.h]

    def blocks(self, x, kvs, cache=None, start=0):
        # x (B, T, D): the embedded inputs at positions start .. start + T - 1; kvs: per layer, the image tokens' keys
        # and values. Returns the last block's output after ln_f, (B, T, D).
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, kvs[i], None if cache is None else cache[i], start)
        return self.transformer.ln_f(x)

    @contextmanager
    def keeping_attention(self):
        # Inside `with model.keeping_attention() as atts:`, every cross-attention takes its written-out path and
        # appends its weights to atts: after one forward pass, one (B, nh, T, L) per layer, first layer first. The
        # outputs are the same as outside; only the weights, which SDPA does not return, are kept.
        atts = []
        for block in self.transformer.h:
            block.cross_attn.kept = atts
        try:
            yield atts
        finally:
            for block in self.transformer.h:
                block.cross_attn.kept = None


class SequencePAR(AttributeDecoder):
    def __init__(self, clip_model, prompts, config, pos_rates=None):
        A = len(prompts)
        # the inputs are <bos> and at most A attributes
        super().__init__(clip_model, prompts, config, n_positions=A + 1, n_special=N_SPECIAL)
        self.lm_head = nn.Linear(clip_model.config.embed_dim, A + N_SPECIAL, bias=False)
        # the paper's weighted NLL (section 3.4): positive token j weighs exp(1 - r_j), r_j its training positive rate
        weight = torch.ones(A + N_SPECIAL)
        if pos_rates is not None:
            weight[N_SPECIAL:] = torch.exp(1 - torch.as_tensor(pos_rates, dtype=torch.float))
        self.register_buffer("loss_weight", weight)
        self.init_decoder()
        nn.init.normal_(self.lm_head.weight, std=0.02)  # near-uniform first predictions

    def token_table(self):
        # (V, D) embedding of every id: the learned specials, then the attribute tokens; every row a unit vector, as
        # in attribute_tokens
        return F.normalize(torch.cat([self.transformer.wte.weight, self.text_features()]), dim=-1)

    def decode(self, idx, kvs, table, cache=None, start=0):
        # idx (B, T): ids at positions start .. start + T - 1; kvs: per layer, the image tokens' keys and values
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)
        x = self.blocks(F.embedding(idx, table) + self.transformer.wpe(pos), kvs, cache, start)
        return self.lm_head(x)  # (B, T, V)

    def forward(self, images, targets):
        # targets (B, A + 2) from labels_to_targets. Columns past the longest sequence in the batch hold only
        # <pad>, which is never a target and (causal mask) never influences earlier positions: we drop them.
        targets = targets[:, :int((targets != PAD).sum(1).max())]
        logits = self.decode(targets[:, :-1], self.memory_kv(images), self.token_table())  # (B, T, V)
        # next-token NLL; <eos> is a target (that is how the model learns to stop), <pad> is not (section 3.4)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets[:, 1:].flatten(), weight=self.loss_weight,
                               ignore_index=PAD)
        return logits, loss

    # Decoding (section 3.3), taught in two steps: the *_simple methods are the definitions, generate the fast version.
    # All obey one rule, `allowed`: every output is a valid label set, each attribute at most once, in id order.
    # The model gives p(next id | prefix); two rules read a label set out of it.
    # - greedy (the paper's): append the most probable next id, "which attribute comes next?", until <eos>.
    # - chain (this project's, not the paper's): for m = 0 .. A-1, "does this person have attribute m?". With the
    #   prefix s ending at attribute i (or <bos>) and i+1 .. m-1 decided absent, the sets still possible are those
    #   whose next id is m, a later attribute or <eos>:
    #       P(y_m = 1 | x, y_<m) = p(m | s) / (p(<eos> | s) + sum_{k >= m} p(k | s))
    #   Above the threshold, m is appended (one decoder step); otherwise m+1 is asked of the same p.
    # They part ways when the model is unsure. If attribute k holds with probability q_k, the next positive is m, d
    # attributes after i, with probability about q_m (1 - q_{i+1}) ... (1 - q_{m-1}), a product of d - 1 factors, and
    # <eos> with the product over every attribute left. So greedy takes a weak early attribute over <eos>, and over a
    # sure late one (0.3 next beats 0.9 behind four attributes of 0.3 each); the chain rule judges each on its own.

    def allowed(self, prev):
        # prev (B,): the last id of each sequence. After <bos> or attribute i comes <eos> or an attribute after i;
        # after <eos> (or the <pad> that follows it) only <pad>, so finished sequences can stay in the batch.
        ids = torch.arange(self.n_attr + N_SPECIAL, device=prev.device)
        running = (ids == EOS) | ((ids >= N_SPECIAL) & (ids > prev[:, None]))  # (B, V)
        finished = (prev == EOS) | (prev == PAD)
        return torch.where(finished[:, None], ids == PAD, running)  # (B, V)

    @torch.no_grad()
    def generate_simple(self, images):
        """Greedy decoding by its definition: teacher forcing on the model's own outputs. Every step feeds the whole
        prefix and appends the most probable allowed id, until every sequence has emitted <eos>; after the last
        attribute only <eos> is allowed. Returns what generate(images, beam_size=1) does, slower."""
        B, A = images.shape[0], self.n_attr
        kvs, table = self.memory_kv(images), self.token_table()
        seq = torch.full((B, 1), BOS, dtype=torch.long, device=images.device)  # (B, T): the ids so far
        probs = torch.zeros(B, A + N_SPECIAL, device=images.device)  # the probability of each id when emitted
        for _ in range(A + 1):  # at most A attributes, then <eos>
            p = self.decode(seq, kvs, table)[:, -1].float().softmax(-1)  # (B, V)
            nxt = p.masked_fill(~self.allowed(seq[:, -1]), -1).argmax(-1, keepdim=True)  # (B, 1)
            probs.scatter_(1, nxt, p.gather(1, nxt))
            seq = torch.cat([seq, nxt], dim=1)  # (B, T + 1)
            if (nxt < N_SPECIAL).all():  # every sequence has ended
                break
        return targets_to_labels(seq, A), probs[:, N_SPECIAL:]

    @torch.no_grad()
    def generate_chain_simple(self, images, threshold=0.5, unweight=False):
        """The chain rule by its definition: one image at a time, for each attribute m in column order, feed the
        whole prefix, compute P(y_m = 1 | x, y_<m) from the next-id distribution, and append m when it is above the
        threshold. unweight=True divides p by the loss weights first (see generate). Returns what
        generate(images, rule="chain") does, slower: pred (B, A) and every attribute's probability (B, A)."""
        B, A = images.shape[0], self.n_attr
        table = self.token_table()
        weight = self.loss_weight if unweight else torch.ones_like(self.loss_weight)
        scores = torch.zeros(B, A, device=images.device)
        for b in range(B):
            kvs, seq = self.memory_kv(images[b:b + 1]), [BOS]
            for m in range(A):
                logits = self.decode(torch.tensor([seq], device=images.device), kvs, table)[0, -1]  # (V,)
                p = logits.float().softmax(-1) / weight
                scores[b, m] = p[N_SPECIAL + m] / (p[EOS] + p[N_SPECIAL + m:].sum())
                if scores[b, m] > threshold:
                    seq.append(N_SPECIAL + m)
        return (scores > threshold).to(torch.uint8), scores

    @torch.no_grad()
    def generate(self, images, beam_size=1, rule="greedy", threshold=0.5, unweight=False):
        """Decode the attributes of a batch of images. Returns pred (B, A) in {0, 1} and scores (B, A).

        rule="greedy": the paper's decoding. Every hypothesis emits each attribute at most once and in increasing id
        order, never <bos> or <pad>, and ends at <eos>. Beam search keeps the beam_size hypotheses of highest summed
        log-probability, without length normalisation (as the official code does): a longer set pays for every
        attribute it adds. beam_size=1 is greedy decoding, the same as generate_simple. scores: the probability the
        model gave each emitted attribute when it emitted it (0 where not emitted).

        rule="chain" (threshold and unweight are its options): for each attribute in column order, P(y_m = 1 |
        x, y_<m) from the next-id distribution (see `allowed`); m is present when that is above threshold (strictly).
        scores: that probability for every attribute; pred = scores > threshold. The same as generate_chain_simple,
        in at most one decoder step per emitted attribute plus one. unweight=True first divides the next-id
        probabilities by the loss weights and renormalises: the weighted NLL's optimum is p_k proportional to
        w_k q_k, and this recovers q.

        Each step feeds only the newest id: the image tokens' keys and values are computed once, and the
        self-attention keys and values of earlier positions are kept in a cache."""
        if rule not in ("greedy", "chain"):
            raise ValueError(f"rule={rule!r}: expected 'greedy' or 'chain'")
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold={threshold}: expected a probability in [0, 1]")
        if beam_size < 1:
            raise ValueError(f"beam_size={beam_size}: expected a positive number of hypotheses")
        if rule == "chain" and beam_size != 1:
            raise ValueError(f"beam_size={beam_size}: the chain rule decides each attribute once, it has no beam")
        if rule == "greedy" and unweight:
            raise ValueError("unweight=True: only the chain rule reads the probabilities back without the weights")
        if rule == "chain":
            return self.generate_chain(images, threshold, unweight)
        return self.generate_beam(images, beam_size)

    def start_decoding(self, images, copies=1):
        """What every decoding starts from: the token table, each layer's image keys and values (each image's `copies`
        times over, one per hypothesis) and an empty self-attention cache, a slot for each input position: <bos> and A
        attributes."""
        table = self.token_table()
        kvs = [tuple(t.repeat_interleave(copies, dim=0) for t in kv) for kv in self.memory_kv(images)]  # (B*K, nh, L, hs)
        k = kvs[0][0]
        shape = (k.shape[0], k.shape[1], self.n_attr + 1, k.shape[3])
        return table, kvs, [dict(k=k.new_zeros(shape), v=k.new_zeros(shape)) for _ in kvs]

    @torch.no_grad()
    def generate_chain(self, images, threshold, unweight):
        """generate(rule="chain"): the chain rule, every attribute decided in column order (see generate)."""
        B, A = images.shape[0], self.n_attr
        table, kvs, cache = self.start_decoding(images)
        # m0 (B,): each image's next undecided attribute; A or more once all are decided. One step's p serves every
        # attribute up to the next one emitted: those are decided against the same prefix.
        ids = torch.arange(A, device=images.device)
        m0 = torch.zeros(B, dtype=torch.long, device=images.device)
        nxt = torch.full((B,), BOS, dtype=torch.long, device=images.device)
        scores = torch.zeros(B, A, device=images.device)
        for t in range(A):  # each step decides at least one attribute
            logits = self.decode(nxt[:, None], kvs, table, cache, start=t)[:, -1].float()  # (B, V)
            # In log space, from the logits: the ratio ignores any normalisation, so we need no softmax, and no
            # probability underflows however far apart the logits are. Dividing by w is subtracting log w.
            if unweight:
                logits = logits - self.loss_weight.log()
            tail = logits[:, N_SPECIAL:].flip(1).logcumsumexp(1).flip(1)  # (B, A): log sum_{k >= m} p(k | s)
            q = (logits[:, N_SPECIAL:] - torch.logaddexp(logits[:, EOS, None], tail)).exp()  # (B, A)
            undecided = ids >= m0[:, None]  # (B, A)
            first = torch.where(undecided & (q > threshold), ids, A).min(1).values  # (B,): A where none is above
            decided = undecided & (ids <= first[:, None])  # (B, A): m0 .. first; all absent but first, if emitted
            scores = torch.where(decided, q, scores)
            m0 = first + 1
            nxt = torch.where(first < A, first + N_SPECIAL, PAD)  # the emitted attribute, or <pad> if none
            if (m0 >= A).all():
                break
        return (scores > threshold).to(torch.uint8), scores

    @torch.no_grad()
    def generate_beam(self, images, beam_size):
        """generate(rule="greedy"): beam search, which at beam_size=1 is greedy decoding (see generate)."""
        B, K, A = images.shape[0], beam_size, self.n_attr
        table, kvs, cache = self.start_decoding(images, K)
        # The B*K hypotheses, image b's in rows b*K .. b*K + K - 1: their ids, the log-probability of each id when
        # emitted, and their sum, the score, not divided by the length: each attribute added costs its log-probability.
        # Only one hypothesis per image is live at first, so that the first step does not pick K copies of the same id.
        seq = torch.full((B * K, 1), BOS, dtype=torch.long, device=images.device)  # (B*K, T)
        seq_logp = torch.zeros(B * K, 1, device=images.device)  # (B*K, T)
        beam_logp = torch.where(torch.arange(B * K, device=images.device) % K == 0, 0.0, float("-inf"))  # (B*K,)
        for t in range(A + 1):  # at most A attributes, then <eos>
            logp = self.decode(seq[:, -1:], kvs, table, cache, start=t)[:, -1].float().log_softmax(-1)  # (B*K, V)
            allowed = self.allowed(seq[:, -1])
            logp = logp.masked_fill(~allowed, float("-inf"))
            logp[allowed[:, PAD], PAD] = 0.0  # a finished hypothesis appends <pad> at no cost: it keeps its score
            beam_logp, src, nxt = beam_step(beam_logp, logp, K)
            if K > 1:  # the new hypotheses may extend other rows than their own: their caches follow them
                for c in cache:
                    c["k"], c["v"] = c["k"][src], c["v"][src]
            seq = torch.cat([seq[src], nxt[:, None]], dim=1)  # (B*K, T + 1)
            seq_logp = torch.cat([seq_logp[src], logp[src, nxt][:, None]], dim=1)  # (B*K, T + 1)
            if (nxt < N_SPECIAL).all():  # every hypothesis has ended
                break
        # topk sorts, so the first hypothesis of each image is its best
        seq, seq_logp = seq[::K], seq_logp[::K]  # (B, T)
        probs = torch.zeros(B, A + N_SPECIAL, device=images.device).scatter_(1, seq, seq_logp.exp())
        return targets_to_labels(seq, A), probs[:, N_SPECIAL:]


class MultiLabel:
    """What the two multi-label heads share, mixed into a module that defines logits(images) -> (B, A): one sigmoid per
    attribute, trained with binary cross-entropy and predicted positive above a threshold, every attribute scored. The
    interface is SequencePAR's: forward(images, targets) -> (logits, loss), generate(images) -> (pred, scores)."""

    def register_bce_weights(self, n_attr, pos_rates):
        # Rethinking-of-PAR's weighting: a positive of attribute j weighs exp(1 - r_j), a negative exp(r_j), with r_j
        # its training positive rate, so the rare side of each attribute counts more; without rates, all weigh 1
        rates = torch.as_tensor(pos_rates, dtype=torch.float) if pos_rates is not None else None
        self.register_buffer("pos_weight", torch.ones(n_attr) if rates is None else torch.exp(1 - rates))
        self.register_buffer("neg_weight", torch.ones(n_attr) if rates is None else torch.exp(rates))

    def forward(self, images, targets):
        # targets (B, A + 2) as SequencePAR takes them; here they only say which attributes hold
        labels = targets_to_labels(targets, self.n_attr).float()  # (B, A)
        logits = self.logits(images)  # (B, A)
        weight = torch.where(labels.bool(), self.pos_weight, self.neg_weight)
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels, weight=weight, reduction="none")
        return logits, loss.sum(1).mean()  # summed over attributes, averaged over images, as Rethinking-of-PAR does

    @torch.no_grad()
    def generate(self, images, beam_size=1, rule="greedy", threshold=0.5, unweight=False):
        """pred (B, A) in {0, 1}: sigmoid above threshold; scores (B, A): every attribute's probability. There is no
        sequence to search or to read by the chain rule, so beam_size, rule and unweight change nothing."""
        probs = self.logits(images).float().sigmoid()
        return (probs > threshold).to(torch.uint8), probs


class LinearHead(MultiLabel, nn.Module):
    """The baseline SequencePAR argues against: multi-label classification, as in Rethinking-of-PAR (arXiv
    2005.11909). CLIP's image embedding (the class token after ln_post and proj) goes through one linear layer to A
    logits, weighted BCE. Every attribute is decided on its own from one pooled vector. SequencePAR replaces this layer
    by the decoder: the attributes are generated one after the other, each conditioned on those emitted before it,
    through cross-attention over every image token, and their query tokens come from the text encoder (which this
    head does not need)."""

    def __init__(self, clip_model, n_attr, pos_rates=None):
        super().__init__()
        self.clip, self.n_attr = clip_model, n_attr
        self.fc = nn.Linear(clip_model.config.embed_dim, n_attr)
        self.register_bce_weights(n_attr, pos_rates)

    def logits(self, images):
        return self.fc(self.clip.encode_image(images))  # (B, A)


class QueryHead(MultiLabel, AttributeDecoder):
    """SequencePAR without the autoregression, as Query2Label (arXiv 2107.10834) and ML-Decoder (arXiv 2111.12933)
    decode: the same blocks, widths, depth, dropout and attribute tokens, but all A attribute tokens enter at once,
    attribute m at position m, with no causal mask and no labels as input (each sees the others' queries, never their
    answers); each position's output gives its attribute's logit, trained with the linear head's weighted BCE. It
    differs from SequencePAR only in generation: SequencePAR against this head measures what autoregression adds, and
    this head against the linear one what cross-attention over the image tokens, with text queries, adds."""

    def __init__(self, clip_model, prompts, config, pos_rates=None):
        A, D = len(prompts), clip_model.config.embed_dim
        super().__init__(clip_model, prompts, config, n_positions=A, causal=False)
        # Query2Label's group-wise linear: attribute m's logit is w_m . x_m + b_m, from its own position alone
        self.fc = nn.ParameterDict(dict(weight=nn.Parameter(torch.empty(A, D)), bias=nn.Parameter(torch.zeros(A))))
        self.register_bce_weights(A, pos_rates)
        self.init_decoder()
        nn.init.normal_(self.fc.weight, std=0.02)  # near-uniform first predictions, as SequencePAR's lm_head

    def logits(self, images):
        x = (self.attribute_tokens() + self.transformer.wpe.weight).expand(images.shape[0], -1, -1)  # (B, A, D)
        x = self.blocks(x, self.memory_kv(images))
        return (x * self.fc.weight).sum(-1) + self.fc.bias  # (B, A)
