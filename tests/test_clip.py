"""clip.py against open_clip's independent CLIP, the official file formats, the download path and the errors."""
import hashlib
import http.server
import os
import re
import shlex
import threading
import warnings
import zipfile
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

import clip
from tokenizer import tokenize

open_clip_model = pytest.importorskip("open_clip.model")

# The released ViT shapes (embed dim, resolution, vision width, patch, text width) with 1 layer each to stay fast.
SHAPES = {
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_width=768, vision_patch_size=32, transformer_width=512),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_width=768, vision_patch_size=16, transformer_width=512),
    "ViT-L/14": dict(embed_dim=768, image_resolution=224, vision_width=1024, vision_patch_size=14, transformer_width=768),
    "ViT-L/14@336px": dict(embed_dim=768, image_resolution=336, vision_width=1024, vision_patch_size=14,
                           transformer_width=768),
}
PROMPTS = ["A pedestrian wearing a hat", "a person with long hair, a backpack and leather shoes", "boots"]


def official_state_dict(shape, layers=1, seed=0):
    """Random weights in the layout of OpenAI's release: fp16 tensors under CLIP's names, plus the three
    non-tensor-like entries. Every tensor (LayerNorm gains and biases too) is perturbed so nothing is trivial."""
    torch.manual_seed(seed)
    config = clip.CLIPConfig(vision_layers=layers, transformer_layers=layers, vision_heads=shape["vision_width"] // 64,
                             transformer_heads=shape["transformer_width"] // 64, **shape)
    sd = clip.CLIP(config).state_dict()
    sd = {k: (v + 0.02 * torch.randn_like(v)).half() for k, v in sd.items()}
    sd.update(input_resolution=torch.tensor(shape["image_resolution"]), context_length=torch.tensor(77),
              vocab_size=torch.tensor(49408))
    return sd


def save_torchscript(state_dict, path):
    # a TorchScript archive with exactly these state-dict keys, built from plain modules (not from clip.py)
    root = nn.Module()
    for key, value in state_dict.items():
        *parents, name = key.split(".")
        module = root
        for p in parents:
            if not hasattr(module, p):
                module.add_module(p, nn.Module())
            module = getattr(module, p)
        module.register_buffer(name, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(root).save(path)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", list(SHAPES))
def test_matches_open_clip(name):
    sd = official_state_dict(SHAPES[name])
    ours = clip.build_model(dict(sd))
    ref = open_clip_model.build_model_from_openai_state_dict(dict(sd), cast_dtype=torch.float32).float().eval()
    res = SHAPES[name]["image_resolution"]
    image = torch.randn(2, 3, res, res)
    text = tokenize(PROMPTS)
    with torch.no_grad():
        assert rel_err(ours.encode_image(image), ref.encode_image(image)) < 1e-4
        assert rel_err(ours.encode_text(text), ref.encode_text(text)) < 1e-4
        logits_per_image, logits_per_text = ours(image, text)
        img, txt, scale = ref(image, text)  # open_clip returns normalised features and the logit scale
        assert rel_err(logits_per_image, scale * img @ txt.t()) < 1e-4
        assert torch.equal(logits_per_text, logits_per_image.t())
    assert ours.config.vision_heads == SHAPES[name]["vision_width"] // 64
    assert ours.config.image_resolution == res and ours.config.vision_layers == 1
    # the table of released sizes agrees with what the weights' shapes say (the fixture has 1 layer each)
    assert ours.config == replace(clip.config(name), vision_layers=1, transformer_layers=1)


def test_all_tokens():
    model = clip.build_model(official_state_dict(SHAPES["ViT-B/32"]))
    image = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        tokens = model.encode_image(image, all_tokens=True)
        pooled = model.encode_image(image)
    assert tokens.shape == (2, 1 + 7 * 7, 512)
    torch.testing.assert_close(tokens[:, 0], pooled, rtol=1e-5, atol=1e-5)


def test_short_context_is_exact():
    # cutting the context to the longest prompt changes nothing (causal mask + pooling at EOT)
    model = clip.build_model(official_state_dict(SHAPES["ViT-B/32"]))
    text = tokenize(PROMPTS)
    longest = int((text != 0).sum(1).max())
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(text[:, :longest]), model.encode_text(text), rtol=0, atol=1e-5)


def test_clip_attention_equals_the_formula_written_out():
    torch.manual_seed(0)
    for causal in (False, True):
        attn = clip.Attention(64, 4, causal)
        nn.init.normal_(attn.in_proj_weight, std=0.2)
        x = torch.randn(2, 9, 64)
        q, k, v = (x @ attn.in_proj_weight.t() + attn.in_proj_bias).split(64, dim=2)
        q, k, v = (t.view(2, 9, 4, 16).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / 16 ** 0.5
        if causal:
            scores = scores.masked_fill(torch.ones(9, 9).triu(1).bool(), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 9, 64)
        torch.testing.assert_close(attn(x), attn.out_proj(y), rtol=1e-5, atol=1e-5)


def test_a_released_archive_and_its_state_dict_load_identically(tmp_path, monkeypatch):
    sd = official_state_dict(SHAPES["ViT-B/32"])
    save_torchscript(sd, str(tmp_path / "archive.pt"))
    torch.save(sd, tmp_path / "plain.pt")
    monkeypatch.setattr(clip, "_RELEASED", {sha256(tmp_path / "archive.pt")})  # it stands for an OpenAI file
    calls = count_jit_loads(monkeypatch)
    a, b = clip.load(str(tmp_path / "archive.pt")), clip.load(str(tmp_path / "plain.pt"))
    assert calls == [str(tmp_path / "archive.pt")]  # the state dict is read by torch.load alone
    assert not a.training and all(p.dtype == torch.float32 for p in a.parameters())  # the fp16 file loads as fp32
    image, text = torch.randn(1, 3, 224, 224), tokenize(PROMPTS)
    with torch.no_grad():
        assert torch.equal(a.encode_image(image), b.encode_image(image))
        assert torch.equal(a.encode_text(text), b.encode_text(text))
        ref = open_clip_model.build_model_from_openai_state_dict(dict(sd), cast_dtype=torch.float32).float().eval()
        assert rel_err(a.encode_image(image), ref.encode_image(image)) < 1e-4


class Server:
    """A local HTTP server over one folder that counts the requests it answers."""

    def __init__(self, folder):
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=folder, **kwargs)

            def do_GET(self):
                server.requests += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.requests = 0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def served_checkpoint(tmp_path, monkeypatch):
    sd = official_state_dict(SHAPES["ViT-B/32"])
    blob = tmp_path / "blob.pt"
    save_torchscript(sd, str(blob))
    sha = sha256(blob)
    monkeypatch.setattr(clip, "_RELEASED", {sha})  # the served file stands for an OpenAI file
    for digest in (sha, "0" * 64):  # the right checksum, and one the file will not match
        os.makedirs(tmp_path / "www" / digest)
        os.link(blob, tmp_path / "www" / digest / "ViT-T.pt")
    server = Server(str(tmp_path / "www"))
    url = f"http://127.0.0.1:{server.port}/{{}}/ViT-T.pt"
    monkeypatch.setattr(clip, "_MODELS", {"ViT-T": url.format(sha), "ViT-Bad": url.format("0" * 64)})
    yield server, tmp_path / "cache"
    server.httpd.shutdown()


def test_download_then_reuse_then_repair(served_checkpoint):
    server, cache = served_checkpoint
    assert clip.available_models() == ["ViT-T", "ViT-Bad"]
    model = clip.load("ViT-T", download_root=str(cache))
    assert server.requests == 1 and os.listdir(cache) == ["ViT-T.pt"]
    clip.load("ViT-T", download_root=str(cache))
    assert server.requests == 1  # the verified cached file is reused
    (cache / "ViT-T.pt").write_bytes(b"corrupted")
    again = clip.load("ViT-T", download_root=str(cache))
    assert server.requests == 2 and os.listdir(cache) == ["ViT-T.pt"]
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model.encode_image(image), again.encode_image(image))


def test_checksum_mismatch_raises_and_leaves_nothing(served_checkpoint):
    server, cache = served_checkpoint
    with pytest.raises(ValueError, match=r"ViT-T.pt has SHA256 [0-9a-f]{64}, expected 0{64}"):
        clip.load("ViT-Bad", download_root=str(cache))
    assert server.requests == 1 and os.listdir(cache) == []


def test_unknown_name_lists_models():
    with pytest.raises(ValueError, match=r"unknown CLIP model 'ViT-H/14'; available models: ViT-B/32, ViT-B/16, "
                                         r"ViT-L/14, ViT-L/14@336px"):
        clip.load("ViT-H/14")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CLIP checkpoint .*nothing.pt not found"):
        clip.load(str(tmp_path / "nothing.pt"))


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk.pt is neither a TorchScript archive nor a torch.save'd state dict"):
        clip.load(str(tmp_path / "junk.pt"))


def test_missing_key():
    sd = official_state_dict(SHAPES["ViT-B/32"])
    del sd["visual.ln_post.bias"]
    with pytest.raises(ValueError, match=r"key 'visual.ln_post.bias' is missing"):
        clip.build_model(sd)


def test_unexpected_key():
    sd = official_state_dict(SHAPES["ViT-B/32"])
    sd["visual.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected key 'visual.extra.weight'"):
        clip.build_model(sd)


def test_wrong_shape():
    sd = official_state_dict(SHAPES["ViT-B/32"])
    sd["transformer.resblocks.0.mlp.c_fc.bias"] = torch.zeros(100)
    with pytest.raises(ValueError, match=r"key 'transformer.resblocks.0.mlp.c_fc.bias' has shape \(100,\), "
                                         r"expected \(2048,\)"):
        clip.build_model(sd)


def test_conv_stem_keeps_the_token_grid():
    # the small from-scratch model's stem: three stride-2 convolutions, then conv1 covers the rest of the patch
    config = clip.CLIPConfig(embed_dim=32, image_resolution=64, vision_layers=1, vision_width=64, vision_heads=2,
                             vision_patch_size=16, vision_stem=3, transformer_width=64, transformer_heads=1,
                             transformer_layers=1)
    model = clip.CLIP(config).eval()
    assert model.visual.conv1.kernel_size == (2, 2) and model.visual.conv1.in_channels == 64
    assert [m.out_channels for m in model.visual.stem if isinstance(m, nn.Conv2d)] == [16, 32, 64]
    with torch.no_grad():
        assert model.encode_image(torch.randn(2, 3, 64, 64), all_tokens=True).shape == (2, 1 + 4 * 4, 32)
    # released models have no stem, so their state dicts gain no keys
    assert not [k for k in clip.CLIP(clip.CLIPConfig(vision_layers=1, transformer_layers=1)).state_dict()
                if k.startswith("visual.stem")]


def test_config_table():
    assert list(clip._CONFIGS) == clip.available_models()
    config = clip.config("ViT-L/14@336px")
    assert (config.embed_dim, config.image_resolution, config.vision_layers, config.vision_width,
            config.vision_heads, config.vision_patch_size, config.transformer_width,
            config.transformer_heads) == (768, 336, 24, 1024, 16, 14, 768, 12)
    config.vision_layers = 1
    assert clip.config("ViT-L/14@336px").vision_layers == 24  # callers get a copy of the table's row
    with pytest.raises(ValueError, match=r"^unknown CLIP model 'ViT-H/14'; available models: ViT-B/32, ViT-B/16, "
                                         r"ViT-L/14, ViT-L/14@336px$"):
        clip.config("ViT-H/14")


# TorchScript archives hold code, which torch.jit.load runs: clip.load hands it OpenAI's released files alone.

REAL_JIT_LOAD = torch.jit.load


def forbid_jit(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load was called")
    monkeypatch.setattr(torch.jit, "load", refuse)


def count_jit_loads(monkeypatch):
    calls = []

    def record(f, *args, **kwargs):
        calls.append(f)
        return REAL_JIT_LOAD(f, *args, **kwargs)
    monkeypatch.setattr(torch.jit, "load", record)
    return calls


def jit_state_dict(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return REAL_JIT_LOAD(str(path), map_location="cpu").state_dict()


def small_vocabulary(text, vocab_size=500):
    text = text.clone()
    text[text >= vocab_size] = vocab_size - 100
    text[torch.arange(len(text)), text.argmax(-1)] = vocab_size - 1  # EOT keeps the highest id
    return text


def save_traced_clip(path):
    # a tiny CLIP of clip.py, traced and written with torch.jit.save: a TorchScript archive of our own layout
    torch.manual_seed(0)
    config = clip.CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_heads=1,
                             vision_patch_size=16, vocab_size=500, transformer_width=64, transformer_heads=1,
                             transformer_layers=2)
    model = clip.CLIP(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # LayerNorm gains and biases too, so nothing is trivial
            p.add_(0.02 * torch.randn_like(p))
    image, text = torch.randn(2, 3, 32, 32), small_vocabulary(tokenize(PROMPTS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, (image, text)), str(path))
    return model, image, text


def assert_same_outputs(loaded, model, image, text):
    with torch.no_grad():
        for a, b in zip(loaded(image, text), model(image, text)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(loaded.encode_image(image, all_tokens=True),
                                   model.encode_image(image, all_tokens=True), rtol=1e-6, atol=1e-6)


def test_a_released_torchscript_archive_loads_through_torch_jit_load(tmp_path, monkeypatch):
    path = tmp_path / "traced.pt"
    model, image, text = save_traced_clip(path)
    monkeypatch.setattr(clip, "_RELEASED", {sha256(path)})  # as if it were one of OpenAI's files
    calls = count_jit_loads(monkeypatch)
    loaded = clip.load(str(path))
    assert calls == [str(path)]
    assert not loaded.training and all(p.dtype == torch.float32 for p in loaded.parameters())
    assert_same_outputs(loaded, model, image, text)


def test_any_other_torchscript_archive_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "traced.pt"
    model, image, text = save_traced_clip(path)
    forbid_jit(monkeypatch)  # nothing of the archive may run: torch.jit.load is never called
    with pytest.raises(ValueError) as error:
        clip.load(str(path))
    assert str(error.value) == (
        f"{path} is a TorchScript archive, which holds code, and not one of OpenAI's released CLIP files, so we do "
        "not load it; if you trust the file, convert it once to a state dict with torch.save(torch.jit.load(path, "
        "map_location='cpu').state_dict(), 'clip_state_dict.pt') and pass that file")
    # the advice works: the converted file loads (still without torch.jit.load) into the same model
    torch.save(jit_state_dict(path), tmp_path / "clip_state_dict.pt")
    assert_same_outputs(clip.load(str(tmp_path / "clip_state_dict.pt")), model, image, text)


def rewrite_archive(src, dst, top):
    # the layout PyTorch 1.7 wrote (OpenAI's files): the top folder is named after the file, no byteorder record
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            if not name.endswith(("/byteorder", "serialization_id")):
                zout.writestr(top + "/" + name.split("/", 1)[1], zin.read(name))


def test_the_official_layout_is_known_as_torchscript(tmp_path, monkeypatch):
    shape = dict(embed_dim=64, image_resolution=32, vision_width=128, vision_patch_size=16, transformer_width=64,
                 vocab_size=500)
    sd = official_state_dict(shape, layers=2)
    save_torchscript(sd, str(tmp_path / "archive.pt"))
    rewrite_archive(tmp_path / "archive.pt", tmp_path / "ViT-T.pt", "ViT-T")
    forbid_jit(monkeypatch)
    with pytest.raises(ValueError, match=r"ViT-T.pt is a TorchScript archive, which holds code, and not one of "
                                         r"OpenAI's released CLIP files"):
        clip.load(str(tmp_path / "ViT-T.pt"))
    monkeypatch.setattr(clip, "_RELEASED", {sha256(tmp_path / "ViT-T.pt")})
    calls = count_jit_loads(monkeypatch)
    model = clip.load(str(tmp_path / "ViT-T.pt"))
    assert len(calls) == 1
    ref_model = open_clip_model.build_model_from_openai_state_dict(dict(sd), cast_dtype=torch.float32).float().eval()
    image, text = torch.randn(2, 3, 32, 32), small_vocabulary(tokenize(PROMPTS))
    with torch.no_grad():
        assert rel_err(model.encode_image(image), ref_model.encode_image(image)) < 1e-4
        assert rel_err(model.encode_text(text), ref_model.encode_text(text)) < 1e-4


class FileWriter(nn.Module):
    # A crafted archive: its scripted __setstate__, which torch.jit.load runs, creates a file at a path it carries.
    def __init__(self, path):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))
        self.path = path

    def forward(self, x):
        return x * self.weight

    @torch.jit.export
    def __getstate__(self):
        return (self.weight, self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]):
        self.path = state[1]
        self.training = state[2]
        self.weight = state[0] + torch.from_file(self.path, shared=True, size=3)  # creates the file


def test_crafted_archive_runs_nothing(tmp_path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("proof", "victim"):
            torch.jit.script(FileWriter(str(tmp_path / f"{name}.written"))).save(str(tmp_path / f"{name}.pt"))
    jit_state_dict(tmp_path / "proof.pt")
    assert (tmp_path / "proof.written").exists()  # torch.jit.load runs the archive's code
    forbid_jit(monkeypatch)
    with pytest.raises(ValueError) as error:
        clip.load(str(tmp_path / "victim.pt"))
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "victim.pt"))
    assert "is a TorchScript archive, which holds code" in message and "torch.jit.load(path" in message
    assert not (tmp_path / "victim.written").exists()


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def test_pickle_that_runs_a_command_is_refused(tmp_path, monkeypatch):
    torch.save({"visual.proj": RunsACommand(str(tmp_path / "ran"))}, tmp_path / "evil.pt")
    forbid_jit(monkeypatch)
    with pytest.raises(ValueError, match=r"evil.pt is neither a TorchScript archive nor a torch.save'd state dict "
                                         r"of plain tensors \(.*\); if you trust the file, convert it") as error:
        clip.load(str(tmp_path / "evil.pt"))
    assert "\n" not in str(error.value) and not (tmp_path / "ran").exists()


def bad_files(folder):
    # one file of each kind that is not a CLIP checkpoint, and the message that should name it
    sd = official_state_dict(dict(embed_dim=64, image_resolution=32, vision_width=64, vision_patch_size=16,
                                  transformer_width=64, vocab_size=500))
    save_torchscript(sd, str(folder / "archive.pt"))
    torch.save(sd, folder / "state_dict.pt")
    torch.save(sd, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    files = {
        "empty.pt": (b"", r"is empty, not a CLIP checkpoint"),
        "random.pt": (b"\x00" + os.urandom(4095), r"is neither a TorchScript archive nor a torch.save'd state dict "
                                                  r"of plain tensors \(it is neither a zip archive nor a pickle\)"),
        "cut_archive.pt": ((folder / "archive.pt").read_bytes()[:30000], r"truncated or damaged zip archive"),
        "cut_state_dict.pt": ((folder / "state_dict.pt").read_bytes()[:30000], r"truncated or damaged zip archive"),
        "cut_legacy.pt": ((folder / "legacy.pt").read_bytes()[:30000], r"is neither a TorchScript archive"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    with zipfile.ZipFile(folder / "photos.zip", "w") as z:
        z.writestr("photos/readme.txt", "not a torch file")
    files["photos.zip"] = (None, r"is a zip archive without a data.pkl record, so not a torch file")
    files["archive.pt"] = (None, r"is a TorchScript archive, which holds code, and not one of OpenAI's released CLIP "
                                 r"files, so we do not load it; if you trust the file, convert it")
    torch.save({"model": sd, "step": 3}, folder / "train_ckpt.pt")
    files["train_ckpt.pt"] = (None, r": not a CLIP state dict: its entry 'model' holds a dict, not a tensor")
    torch.save({"weight": torch.zeros(3)}, folder / "other.pt")
    files["other.pt"] = (None, r": not a CLIP ViT state dict: key 'visual.conv1.weight' is missing")
    torch.save({"visual.conv1.weight": "a string"}, folder / "strings.pt")
    files["strings.pt"] = (None, r": not a CLIP state dict: its entry 'visual.conv1.weight' holds a str")
    torch.save([torch.zeros(3)], folder / "list.pt")
    files["list.pt"] = (None, r" holds a list, expected a CLIP state dict")
    return {name: expected for name, (_, expected) in files.items()}


def test_load_errors_are_one_line(tmp_path, monkeypatch):
    cases = bad_files(tmp_path)
    forbid_jit(monkeypatch)
    for name, expected in cases.items():
        with pytest.raises(ValueError, match=expected) as error:
            clip.load(str(tmp_path / name))
        message = str(error.value)
        assert "\n" not in message and message.startswith(str(tmp_path / name)), message
    with pytest.raises(ValueError, match=r"^CLIP checkpoint .* is a folder, not a file$"):
        clip.load(str(tmp_path))


def test_no_network(tmp_path, monkeypatch):
    # a port that nothing listens on any more: the download fails at once
    server = Server(str(tmp_path))
    server.httpd.shutdown()
    server.httpd.server_close()
    sha = "1" * 64
    url = f"http://127.0.0.1:{server.port}/{sha}/ViT-T.pt"
    monkeypatch.setattr(clip, "_MODELS", {"ViT-T": url})
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the default cache is ~/.cache/clip
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    cache = tmp_path / "home" / ".cache" / "clip"
    with pytest.raises(ValueError, match=re.escape(f"could not download {url} (") + r"[^\n]*Connection refused\); "
                       + re.escape(f"put the file there by hand as {cache / 'ViT-T.pt'} (SHA256 {sha}), or pass "
                                   "the path of a copy as --clip=FILE") + "$"):
        clip.load("ViT-T")
    assert os.listdir(cache) == []


def test_missing_on_the_server(tmp_path, monkeypatch):
    server = Server(str(tmp_path))  # serves an empty folder: every request gets 404
    url = f"http://127.0.0.1:{server.port}/{'2' * 64}/ViT-U.pt"
    monkeypatch.setattr(clip, "_MODELS", {"ViT-U": url})
    with pytest.raises(ValueError, match="^" + re.escape(f"could not download {url} (File not found); put the file "
                                                         f"there by hand as {tmp_path / 'cache' / 'ViT-U.pt'} (SHA256")):
        clip.load("ViT-U", download_root=str(tmp_path / "cache"))
    assert server.requests == 1 and os.listdir(tmp_path / "cache") == []
    server.httpd.shutdown()


def test_a_cache_folder_we_cannot_create_names_it_and_the_option(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    url = clip._MODELS["ViT-B/32"]
    for env in (dict(XDG_CACHE_HOME=str(tmp_path / "a_file")), dict(HOME=str(tmp_path / "a_file"))):
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        cache = tmp_path / "a_file" / ("clip" if "XDG_CACHE_HOME" in env else ".cache/clip")
        with pytest.raises(ValueError, match="^" + re.escape(f"cannot create the CLIP cache folder {cache} (Not a "
                                                             f"directory); set XDG_CACHE_HOME to a writable folder, "
                                                             f"or download {url} and pass the file as --clip=FILE")
                           + "$"):
            clip.load("ViT-B/32")
