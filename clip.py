"""
CLIP, written out: the ViT image encoder, the causal text transformer, and a loader for OpenAI's released weights.

Parameter names are CLIP's own, so an official state dict loads with strict=True and no mapping table. The weights
are fp32 (the released files hold fp16), and the numerics match the official model in fp32; train.py and evaluate.py
run the forward passes under bf16 autocast on CUDA. Attention goes through F.scaled_dot_product_attention.

Loading runs no code from a file handed to us: state dicts load with torch.load(weights_only=True), and a TorchScript
archive (code and weights in one zip) reaches torch.jit.load only if its SHA256 is one of OpenAI's four released files.

Shapes: B batch, L image tokens (1 + grid^2), S text positions, C transformer width, D joint embedding width,
nh heads, hs head size (C = nh * hs).
"""
import hashlib
import http.client
import math
import os
import re
import sys
import tempfile
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from cli import MissingFile, UserError


@dataclass
class CLIPConfig:
    embed_dim: int = 512          # D, the joint image-text space
    # image encoder
    image_resolution: int = 224
    vision_layers: int = 12
    vision_width: int = 768
    vision_heads: int = 12        # released models use heads of 64 channels: width // 64
    vision_patch_size: int = 32
    vision_stem: int = 0          # 3x3 stride-2 convolutions before the patch projection; 0 in every released model
    vision_stem_width: int = 0    # the last stem convolution's channels (each earlier one has half); 0: vision_width
    # text encoder
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_heads: int = 8
    transformer_layers: int = 12


# The sizes of OpenAI's released ViTs, so an architecture can be built, or checked, before anything is downloaded; in
# the order of CLIPConfig's fields: the joint width D; the image encoder's resolution, layers, width, heads, patch
# size and stem; the text encoder's context length, vocabulary, width, heads and layers.
_CONFIGS = {
    #                              D  res  layers     C  nh  patch  stem   ctx  vocab    C  nh  layers
    "ViT-B/32":       CLIPConfig(512, 224,     12,  768, 12,    32,  0, 0,  77, 49408, 512,  8,     12),
    "ViT-B/16":       CLIPConfig(512, 224,     12,  768, 12,    16,  0, 0,  77, 49408, 512,  8,     12),
    "ViT-L/14":       CLIPConfig(768, 224,     24, 1024, 16,    14,  0, 0,  77, 49408, 768, 12,     12),
    "ViT-L/14@336px": CLIPConfig(768, 336,     24, 1024, 16,    14,  0, 0,  77, 49408, 768, 12,     12),
}


def config(name):
    """The architecture of a released model (see available_models()), without downloading its weights."""
    if name not in _CONFIGS:
        raise UserError(f"unknown CLIP model {name!r}; available models: {', '.join(_CONFIGS)}")
    return replace(_CONFIGS[name])  # a copy, so that no caller can change the table


class QuickGELU(nn.Module):
    # the sigmoid approximation of GELU that CLIP was trained with; exact GELU would change the numbers
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    # nn.MultiheadAttention's parameter layout (one packed q,k,v projection), computed batch-first through SDPA
    def __init__(self, width, heads, causal):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x):
        B, L, C = x.shape  # L: the image tokens in the ViT, the text positions (S) in the text transformer
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).split(C, dim=2)
        q, k, v = (t.view(B, L, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, L, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(y.transpose(1, 2).reshape(B, L, C))  # (B, L, C)


class MLP(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads, causal):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, causal)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, causal=False):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, causal) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, resolution, patch_size, width, layers, heads, output_dim, stem=0, stem_width=0):
        super().__init__()
        scale = width ** -0.5
        # CLIP cuts the image into patches with one strided convolution (conv1). A small model trained from scratch
        # learns far faster with a few convolutions first (Xiao et al. 2021, "Early convolutions help transformers
        # see better"); each halves the resolution and doubles the channels up to stem_width (by default the width);
        # conv1 does the rest. Example: stem 3, stem_width 64 gives channels 3, 16, 32, 64, and conv1 (64 -> width)
        # covers the remaining patch_size // 8.
        chans = [3] + [(stem_width or width) // 2 ** (stem - 1 - i) for i in range(stem)]
        self.stem = nn.Sequential(*[m for c_in, c_out in zip(chans, chans[1:]) for m in (
            nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())])
        rest = patch_size // 2 ** stem
        self.conv1 = nn.Conv2d(chans[-1], width, kernel_size=rest, stride=rest, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x, all_tokens=False):
        x = self.conv1(self.stem(x))                          # (B, C, grid, grid)
        x = x.flatten(2).transpose(1, 2)                      # (B, grid^2, C)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding  # (B, L, C)
        x = self.transformer(self.ln_pre(x))
        # SequencePAR (section 3.2) keeps every token; ln_post and proj are per token, so token 0 is CLIP's pooled output
        x = x if all_tokens else x[:, 0]
        return self.ln_post(x) @ self.proj                    # (B, L, D) or (B, D)


def initialize_transformer(tr, width):
    # OpenAI's release initialises its text transformer so, and leaves the ViT's blocks at PyTorch's defaults; we
    # give both towers this scheme. It matters only when training from scratch (the demo's tiny CLIP).
    proj_std = width ** -0.5 * (2 * len(tr.resblocks)) ** -0.5  # residual projections shrink with depth
    for block in tr.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
        nn.init.zeros_(block.attn.out_proj.bias)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


class CLIP(nn.Module):
    def __init__(self, config, text=True):
        # text=False builds the image encoder alone (the linear multi-label baseline reads no prompts)
        super().__init__()
        c = self.config = config
        # The image encoder is built and initialised before anything else draws random numbers: for one seed it is
        # the same with or without the text tower, so every head of the experiments starts from the same encoder.
        self.visual = VisionTransformer(c.image_resolution, c.vision_patch_size, c.vision_width, c.vision_layers,
                                        c.vision_heads, c.embed_dim, c.vision_stem, c.vision_stem_width)
        initialize_transformer(self.visual.transformer, c.vision_width)
        self.text = text
        if text:
            self.transformer = Transformer(c.transformer_width, c.transformer_layers, c.transformer_heads, causal=True)
            self.token_embedding = nn.Embedding(c.vocab_size, c.transformer_width)
            self.positional_embedding = nn.Parameter(torch.empty(c.context_length, c.transformer_width))
            self.ln_final = nn.LayerNorm(c.transformer_width)
            self.text_projection = nn.Parameter(torch.empty(c.transformer_width, c.embed_dim))
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
            nn.init.normal_(self.token_embedding.weight, std=0.02)
            nn.init.normal_(self.positional_embedding, std=0.01)
            initialize_transformer(self.transformer, c.transformer_width)
            nn.init.normal_(self.text_projection, std=c.transformer_width ** -0.5)

    def encode_image(self, image, all_tokens=False):
        return self.visual(image, all_tokens)

    def encode_text(self, text, token_embedding=None):
        # text: (B, S) token ids with S <= context_length. A shorter S gives the same features: the mask is causal
        # and we pool at the EOT token, so positions after it never reach the output. token_embedding: a (V', C)
        # table to look the ids up in instead of our own (SequencePAR passes its prompts' rows, ids renumbered).
        table = self.token_embedding.weight if token_embedding is None else token_embedding
        x = F.embedding(text, table) + self.positional_embedding[:text.shape[1]]  # (B, S, C)
        x = self.ln_final(self.transformer(x))
        x = x[torch.arange(x.shape[0]), text.argmax(dim=-1)]  # EOT has the highest id in every row
        return x @ self.text_projection                        # (B, D)

    def forward(self, image, text):
        image_features = F.normalize(self.encode_image(image), dim=-1)
        text_features = F.normalize(self.encode_text(text), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


def build_model(state_dict, text=True):
    """A CLIP (fp32, eval mode) from an official ViT state dict; every setting is read off the tensor shapes.
    text=False builds and loads the image encoder alone."""
    sd = {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise UserError(f"not a CLIP state dict: its entry {k!r} holds a {type(v).__name__}, not a tensor")

    def shape(key):
        if key not in sd:
            raise UserError(f"not a CLIP ViT state dict: key {key!r} is missing")
        return sd[key].shape

    def count(prefix):
        return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})

    if "visual.proj" not in sd and any(k.startswith("visual.layer1") for k in sd):
        raise UserError("this is a ResNet CLIP state dict; only the ViT models are supported")
    vision_width, _, patch, _ = shape("visual.conv1.weight")
    grid = round((shape("visual.positional_embedding")[0] - 1) ** 0.5)
    width = shape("ln_final.weight")[0]
    config = CLIPConfig(
        embed_dim=shape("text_projection")[1],
        image_resolution=patch * grid, vision_layers=count("visual.transformer.resblocks."),
        vision_width=vision_width, vision_heads=vision_width // 64, vision_patch_size=patch,
        context_length=shape("positional_embedding")[0], vocab_size=shape("token_embedding.weight")[0],
        transformer_width=width, transformer_heads=width // 64, transformer_layers=count("transformer.resblocks."))
    model = CLIP(config, text)
    if not text:  # every key is checked above; the text encoder's are not loaded
        sd = {k: v for k, v in sd.items() if k.startswith("visual.")}
    expected = model.state_dict()
    unexpected = sorted(sd.keys() - expected.keys())
    if unexpected:
        raise UserError(f"unexpected key {unexpected[0]!r} in the CLIP state dict")
    for key, value in expected.items():
        if shape(key) != value.shape:
            raise UserError(f"key {key!r} has shape {tuple(sd[key].shape)}, expected {tuple(value.shape)}")
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)  # released weights are fp16
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# Loading: OpenAI's released files by name (downloaded once and checked against their SHA256), or a file of weights.

# Where each released file lives; the second-to-last path segment of its URL is the file's SHA256.
_MODELS = {
    "ViT-B/32": "https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": "https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": "https://openaipublic.azureedge.net/clip/models/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}
_RELEASED = {url.split("/")[-2] for url in _MODELS.values()}  # the SHA256 of OpenAI's four files


def available_models():
    return list(_MODELS)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url, root):
    expected = url.split("/")[-2]
    target = os.path.join(root, os.path.basename(url))
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:  # a read-only or full home, say
        raise UserError(f"cannot create the CLIP cache folder {root} ({e.strerror}); set XDG_CACHE_HOME to a "
                        f"writable folder, or download {url} and pass the file as --clip=FILE") from None
    if os.path.isfile(target):
        if _sha256(target) == expected:
            return target
        print(f"{target} does not match its SHA256 checksum; downloading it again", file=sys.stderr)
    # we write to a temporary file in the same folder and rename it, so an interrupted download leaves nothing
    try:
        fd, tmp = tempfile.mkstemp(dir=root, prefix=os.path.basename(url) + ".", suffix=".tmp")
    except OSError as e:
        raise UserError(f"cannot write into the CLIP cache folder {root} ({e.strerror}); set XDG_CACHE_HOME to a "
                        f"writable folder, or download {url} and pass the file as --clip=FILE") from None
    try:
        h, done = hashlib.sha256(), 0
        with urllib.request.urlopen(url, timeout=60) as source, os.fdopen(fd, "wb") as out:
            total = int(source.headers.get("Content-Length") or 0)
            for chunk in iter(lambda: source.read(1 << 20), b""):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                print(f"\rdownloading {os.path.basename(url)}: {done / 2**20:.0f}"
                      + (f" / {total / 2**20:.0f}" if total else "") + " MiB", end="", file=sys.stderr)
            out.flush()
            os.fsync(out.fileno())  # on disk before the rename, so a crash cannot leave the name over half a file
        print(file=sys.stderr)
        if h.hexdigest() != expected:
            raise UserError(f"downloaded {url} has SHA256 {h.hexdigest()}, expected {expected}")
        os.replace(tmp, target)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, (OSError, http.client.HTTPException)):  # no network, refused, timed out, HTTP error
            raise UserError(f"could not download {url} ({getattr(e, 'reason', e)}); put the file there by hand "
                            f"as {target} (SHA256 {expected}), or pass the path of a copy as --clip=FILE") from None
        raise
    return target


def cause_of(e):
    # the line of an error message that says what went wrong (torch's own messages add lines of advice)
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    cause = [line for line in lines if "GLOBAL" in line or "Unsupported" in line] or lines or [type(e).__name__]
    return cause[0].split(". ")[0].rstrip(".")


_CONVERT = ("if you trust the file, convert it once to a state dict with "
            "torch.save(torch.jit.load(path, map_location='cpu').state_dict(), 'clip_state_dict.pt')")


def _read_state_dict(path):
    def refuse(reason):
        return UserError(f"{path} is neither a TorchScript archive nor a torch.save'd state dict of plain tensors "
                         f"({reason}); {_CONVERT}")

    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise UserError(f"{path} is empty, not a CLIP checkpoint")
    if head == b"PK\x03\x04":  # a zip archive, as TorchScript and torch.save (since PyTorch 1.6) write
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            raise refuse("it is a truncated or damaged zip archive") from None
        # both write one top folder (its name varies) with data.pkl inside; only TorchScript adds the code/ folder
        # and constants.pkl
        pickles = [n for n in names if re.fullmatch(r"[^/]+/data\.pkl", n)]
        if not pickles:
            raise UserError(f"{path} is a zip archive without a data.pkl record, so not a torch file")
        top = pickles[0][:-len("data.pkl")]
        if any(n.startswith((top + "code/", top + "constants.pkl")) for n in names):
            # torch.jit.load runs the archive's code, so it may read only OpenAI's own files, known by their SHA256
            if _sha256(path) not in _RELEASED:
                raise UserError(f"{path} is a TorchScript archive, which holds code, and not one of OpenAI's released "
                                f"CLIP files, so we do not load it; {_CONVERT} and pass that file")
            with warnings.catch_warnings():  # TorchScript is deprecated in recent PyTorch
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(path, map_location="cpu").state_dict()
    elif head[:1] != b"\x80":  # nor a pickle (torch.save before PyTorch 1.6), whose first byte is 0x80
        raise refuse("it is neither a zip archive nor a pickle")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise refuse(cause_of(e)) from None
    if not isinstance(state_dict, dict):
        raise UserError(f"{path} holds a {type(state_dict).__name__}, expected a CLIP state dict")
    return state_dict


def check_source(name_or_path):
    """A one-line error unless name_or_path is an official name or an existing file: cheap, so that a run can say it
    before anything else (what the file holds is checked once it is read)."""
    if name_or_path in _MODELS or os.path.isfile(name_or_path):
        return
    if os.path.isdir(name_or_path):
        raise UserError(f"CLIP checkpoint {name_or_path} is a folder, not a file")
    if os.path.splitext(name_or_path)[1]:  # it has a file extension, so it was meant as a path
        raise MissingFile(f"CLIP checkpoint {name_or_path} not found")
    raise UserError(f"unknown CLIP model {name_or_path!r}; available models: {', '.join(available_models())}")


def load(name_or_path, device="cpu", download_root=None, text=True):
    """Load a CLIP by official name (see available_models(); downloaded once into download_root, by default
    $XDG_CACHE_HOME/clip or else ~/.cache/clip, and checked against its SHA256) or from a file: one of OpenAI's
    released TorchScript archives (known by its SHA256), or a plain state dict saved with torch.save. Any other
    TorchScript archive is refused, since loading it would run its code. Returns the model in fp32 and eval mode; with
    text=False, its image encoder alone."""
    check_source(name_or_path)
    if name_or_path in _MODELS:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        path = _download(_MODELS[name_or_path], download_root or os.path.join(cache, "clip"))
    else:
        path = name_or_path
    state_dict = _read_state_dict(path)
    try:
        return build_model(state_dict, text).to(device)
    except UserError as e:  # we name the file in the message
        raise UserError(f"{path}: {e}") from None