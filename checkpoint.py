"""
Checkpoints: every file written atomically, a checkpoint read back without running any code, and the model rebuilt
from a checkpoint alone.

A checkpoint is a dict of tensors and plain Python values (dicts, lists, strings, numbers): the model's weights, its
CLIP and decoder configs, the prompts and attribute names, the training config and step. torch.load(...,
weights_only=True) reads exactly that and refuses anything else, so a checkpoint handed to us can never run code.
"""
import os
import warnings

import torch

import clip
from cli import MissingFile, UserError
from decoder import DecoderConfig, LinearHead, QueryHead, SequencePAR


def load_checkpoint(path):
    """A train.py checkpoint: a dict of tensors and plain values, read with weights_only=True, so no code in the file
    can run. Any other file gets a one-line error naming it."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; expected a checkpoint file such as {os.path.join(path, 'ckpt.pt')}")
    if not os.path.isfile(path):
        raise MissingFile(f"checkpoint {path} not found (train one with train.py, or pass --ckpt=PATH)")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path} is empty: not a checkpoint (was its run killed before it saved one?)")
    try:
        with warnings.catch_warnings():  # torch warns of a TorchScript archive before it refuses it
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # empty, truncated, random bytes, TorchScript, or a pickle of more than plain data
        raise UserError(f"{path} is not a checkpoint we can read safely ({clip.cause_of(e)})") from None
    keys = {"model", "config", "clip_config", "decoder_config", "attr_names", "prompts", "step"}
    if not isinstance(ckpt, dict) or keys - ckpt.keys():
        raise UserError(f"{path} is not a checkpoint of train.py (it lacks "
                        f"{', '.join(sorted(keys - ckpt.keys())) if isinstance(ckpt, dict) else 'a dict'})")
    return ckpt


def model_from_checkpoint(ckpt, path):
    """The model a checkpoint was trained as (SequencePAR, or the head of --head=query or --head=linear), rebuilt from
    its configs, prompts and weights alone."""
    head = ckpt.get("head", "sequencepar")  # (checkpoints from before the linear head have no "head")
    if head not in ("sequencepar", "query", "linear"):
        raise UserError(f"{path} holds a model with head {head!r}; this code knows sequencepar, query and linear")
    try:
        if head == "linear":
            model = LinearHead(clip.CLIP(clip.CLIPConfig(**ckpt["clip_config"]), text=False), len(ckpt["attr_names"]))
        else:
            decoder = SequencePAR if head == "sequencepar" else QueryHead
            model = decoder(clip.CLIP(clip.CLIPConfig(**ckpt["clip_config"])), ckpt["prompts"],
                            DecoderConfig(**ckpt["decoder_config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, RuntimeError) as e:  # from another version of the model
        # load_state_dict's message: a header line, then one line per kind of mismatch; we keep the first of those
        reason = " ".join(line.strip() for line in str(e).strip().splitlines()[:2])
        raise UserError(f"{path} does not fit this code's model ({reason[:300]})") from None
    return model


def check_attributes(ckpt, path, attr_names, advice):
    if sorted(ckpt["attr_names"]) == sorted(attr_names) and ckpt["attr_names"] != list(attr_names):
        k = next(k for k, (a, b) in enumerate(zip(ckpt["attr_names"], attr_names)) if a != b)
        raise UserError(f"{path} was trained on the same {len(attr_names)} attributes in another order (position "
                        f"{k} is {attr_names[k]}, was {ckpt['attr_names'][k]}): the order is the target sequence's; "
                        f"{advice}")
    if ckpt["attr_names"] != list(attr_names):
        raise UserError(f"{path} was trained on {len(ckpt['attr_names'])} other attributes "
                        f"({', '.join(ckpt['attr_names'][:4])}, ...) than this dataset's {len(attr_names)}; {advice}")
