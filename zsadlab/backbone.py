"""CLIP backbones: loading real and tiny models, and tokens from any block.

Everything the methods need from CLIP goes through this module, so AnomalyCLIP
and InCTRL never touch open_clip internals themselves:

* :func:`load_clip` - a real open_clip model by name and pretrained tag, or from
  the tag's own local file (:func:`local_weights_file`); offline it fails in
  seconds with a message saying what to do. OpenAI's TorchScript ``.pt`` files
  are read as data: no code from a weight file ever runs.
* :func:`clip_from_openai_state_dict` - an fp32 open_clip CLIP from an OpenAI-format
  state dict (how the official AnomalyCLIP and InCTRL code build theirs).
* :func:`tiny_clip` - the smoke-profile models: random, deterministic from a seed,
  with the architectures of the golden fixtures.
* :func:`block_tokens` - residual-stream tokens after any set of blocks (1-based,
  as the papers count) at any square input size, with the positional table
  resized as the official code does, without mutating the model.
* :func:`factory_rebuilt` - the option to run a model as open_clip's factory rebuilds
  it at a non-native size (exact GELU, bicubic positional table), with or without
  antialiasing: MuSc's vendored copy resizes without it.

Shapes: ``B`` batch, ``g`` patch grid side, ``N = 1 + g*g`` tokens (CLS first,
then patches row-major), ``W`` tower width, ``D`` joint embedding dim.
"""
from __future__ import annotations

import functools
import json
import logging
import copy
import os
import socket
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, build_model_from_openai_state_dict, resize_pos_embed
from open_clip.transformer import QuickGELU

from .utils import is_torchscript_archive, load_torch_file, load_torchscript_tensors, pick_device, square_side

WEIGHTS_ENV = "ZSADLAB_CLIP_WEIGHTS"  # one file for WEIGHTS_ENV_MODEL only (kept from earlier versions)
WEIGHTS_ENV_MODEL = "ViT-L-14-336"
WEIGHTS_DIR_ENV = "ZSADLAB_WEIGHTS_DIR"  # a folder of weight files named by model and tag (weights_file_names)
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")  # not weights
OFFLINE_PROBE_SECONDS = 2.0

# ---------------------------------------------------------------------------
# Tiny smoke-profile models (architectures of the golden fixtures)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyCLIPConfig:
    """Constructor arguments of an open_clip ``CLIP`` for a smoke-profile model."""

    embed_dim: int
    vision: Mapping[str, int]
    text: Mapping[str, int]
    quick_gelu: bool
    tokenizer: str = field(default="ViT-B-16")  # every CLIP BPE tokenizer is the same


# Named by architecture (patch size - input size), never by the method that first used it.
TINY_CLIPS: dict[str, TinyCLIPConfig] = {
    # fixtures/anomalyclip/FIXTURES.md §2: ViT 128 wide, 8 blocks, patch 14, 112 px;
    # text 64 wide, 12 blocks, 1 head; QuickGELU as OpenAI's CLIP (a tiny ViT-L-14).
    "vit14-112": TinyCLIPConfig(
        embed_dim=64,
        vision=dict(image_size=112, layers=8, width=128, head_width=64, patch_size=14),
        text=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=12),
        quick_gelu=True,
    ),
    # fixtures/inctrl/FIXTURES.md §1: ViT 128 wide, 12 blocks, patch 16, 240 px
    # (225 patches); text 64 wide, 12 blocks; exact GELU; joint dim 640 (a tiny ViT-B-16-plus-240).
    "vit16-240": TinyCLIPConfig(
        embed_dim=640,
        vision=dict(image_size=240, layers=12, width=128, head_width=64, patch_size=16),
        text=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=12),
        quick_gelu=False,
    ),
}


# The names the tiny CLIPs had when they were named after a method (kept for code written against them).
FORMER_TINY_NAMES = {"anomalyclip": "vit14-112", "inctrl": "vit16-240"}


def tiny_clip(kind: str, seed: int = 0) -> CLIP:
    """A small random CLIP for the smoke profile, identical for identical ``seed``.

    ``kind`` is a key of :data:`TINY_CLIPS` (``"vit14-112"`` or ``"vit16-240"``; the former
    names ``"anomalyclip"`` / ``"inctrl"`` of :data:`FORMER_TINY_NAMES` are still accepted).
    The global RNG is left untouched (the draw happens in a forked RNG state).
    """
    kind = FORMER_TINY_NAMES.get(kind, kind)
    if kind not in TINY_CLIPS:
        raise ValueError(f"unknown tiny CLIP {kind!r}; choose one of {sorted(TINY_CLIPS)}")
    cfg = TINY_CLIPS[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(
            embed_dim=cfg.embed_dim,
            vision_cfg=dict(cfg.vision),
            text_cfg=dict(cfg.text),
            quick_gelu=cfg.quick_gelu,
        )
    return model.float().eval()


def clip_from_openai_state_dict(state_dict: Mapping[str, "torch.Tensor | np.ndarray"]) -> CLIP:
    """An fp32 open_clip CLIP built from an OpenAI-format state dict.

    open_clip's builder infers the architecture from the shapes, converts to fp16
    and loads; we return it in fp32 (the official AnomalyCLIP code also runs fp32).
    NumPy arrays are accepted (the fixtures are ``.npz`` files).
    """
    sd = {k: torch.as_tensor(np.asarray(v)) if not torch.is_tensor(v) else v
          for k, v in state_dict.items() if k != "attn_mask"}  # a buffer open_clip builds itself
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    return build_model_from_openai_state_dict(sd, cast_dtype=None).float().eval()


# ---------------------------------------------------------------------------
# Real weights
# ---------------------------------------------------------------------------


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither on disk nor downloadable from here."""


class WeightsFileError(WeightsUnavailableError, ValueError):
    """A weights file that is there but cannot be loaded (truncated, damaged, another model's)."""


def _hf_cached_file(hf_hub: str, cache_dir: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip depends on it
        return None
    repo_id, filename = os.path.split(hf_hub.rstrip("/")) if not hf_hub.endswith("/") else (hf_hub.rstrip("/"), "")
    candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in candidates:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def cached_weights(name: str, pretrained: str, cache_dir: str | None = None) -> Path | None:
    """Path of the weight file for ``(name, pretrained)`` if it is already on disk, else ``None``."""
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(f"open_clip has no pretrained tag {pretrained!r} for {name!r}; known tags: {tags}")
    if cfg.get("hf_hub") and hub_identifies_tag(name, pretrained):
        found = _hf_cached_file(cfg["hf_hub"], cache_dir)
        if found:
            return found
    if cfg.get("url"):
        url_cache = Path(cache_dir or os.path.expanduser("~/.cache/clip"))
        candidate = url_cache / os.path.basename(cfg["url"])
        if candidate.is_file():
            return candidate
    return None


def hub_identifies_tag(name: str, pretrained: str) -> bool:
    """False when open_clip points another tag of ``name`` at the same model-hub repository.

    open_clip (3.3) gives ViT-B-16-plus-240 ``laion400m_e32`` the hub repository of ``laion400m_e31``
    (``timm/vit_base_patch16_plus_clip_240.laion400m_e31``), so a hub copy would give InCTRL WinCLIP's
    weights; such a tag is looked up and downloaded by its own URL only.
    """
    hub = (open_clip.get_pretrained_cfg(name, pretrained) or {}).get("hf_hub")
    others = [t for t in open_clip.list_pretrained_tags_by_model(name) if t != pretrained]
    return bool(hub) and all((open_clip.get_pretrained_cfg(name, t) or {}).get("hf_hub") != hub for t in others)


def _can_connect(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def host_reachable(host: str, port: int = 443, timeout: float = OFFLINE_PROBE_SECONDS) -> bool:
    """One short TCP probe of ``host:port``, in a daemon thread so that a DNS lookup that hangs
    cannot hold us longer than ``timeout`` either."""
    answer: list[bool] = []
    probe = threading.Thread(target=lambda: answer.append(_can_connect(host, port, timeout)), daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(answer and answer[0])


def hub_reachable(timeout: float = OFFLINE_PROBE_SECONDS) -> bool:
    """One short probe of the weight host; ``False`` when offline or ``HF_HUB_OFFLINE`` is set."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    return host_reachable("huggingface.co", 443, timeout)


def weights_available(name: str, pretrained: str) -> bool:
    """True when :func:`load_clip` would find loadable weights of ``name`` without a download: a file
    that is truncated or holds another model's weights (:func:`weights_file_problem`) does not count.

    A weights variable or ``pretrained`` path that names a missing file raises
    :class:`WeightsUnavailableError` instead of quietly answering ``False``.
    """
    local = local_weights_file(name, pretrained)
    if local is None:
        try:
            local = cached_weights(name, pretrained)
        except ValueError:
            return False
    return local is not None and weights_file_problem(local, name) is None


@functools.lru_cache(maxsize=None)
def _parameter_count(name: str) -> int:
    """Elements in the state dict of open_clip model ``name`` (built on the meta device: no memory, no init)."""
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model(name, pretrained=None, device="meta")
    finally:
        logging.getLogger().removeFilter(quiet)
    return sum(t.numel() for t in model.state_dict().values())


def _stored_bytes(path: Path) -> int | None:
    """Bytes of tensor data in a weights file, read from its index only (zip directory, safetensors header);
    None for a format without one (a legacy pickle). Raises ``ValueError`` for a truncated or damaged file."""
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix == ".safetensors":
        size = int.from_bytes(head, "little") if len(head) == 8 else -1
        try:
            with open(path, "rb") as f:
                f.seek(8)
                header = json.loads(f.read(size)) if 0 < size < 100 * 2**20 else None
            end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        except (TypeError, ValueError, KeyError, AttributeError):
            raise ValueError("its safetensors header is damaged") from None
        if path.stat().st_size < 8 + size + end:
            raise ValueError("it is truncated (shorter than its safetensors header says)")
        return end
    if not head.startswith(b"PK"):
        return None
    try:
        with zipfile.ZipFile(path) as archive:  # reads only the central directory at the end
            return sum(i.file_size for i in archive.infolist() if i.filename.split("/")[-2:-1] == ["data"])
    except (zipfile.BadZipFile, OSError):
        raise ValueError("it is truncated or damaged (its zip directory cannot be read)") from None


def weights_file_problem(path: str | os.PathLike, name: str) -> str | None:
    """Why the file at ``path`` cannot hold the weights of open_clip model ``name`` (truncated, damaged, or
    the size of another model's), from its header and size only; None when it looks right. The verdict is
    remembered per file version (path, size, modification time)."""
    stat = Path(path).stat()
    return _weights_file_verdict(str(path), stat.st_size, stat.st_mtime_ns, name)


@functools.lru_cache(maxsize=256)
def _weights_file_verdict(path: str, size: int, mtime_ns: int, name: str) -> str | None:
    try:
        stored = _stored_bytes(Path(path))
    except (ValueError, OSError) as err:
        return str(err)
    count = _parameter_count(name)
    low, high = 2 * count * 0.9, 4 * count * 1.1  # fp16 .. fp32 tensors, with room for extra buffers
    stored = size if stored is None else stored
    if stored < low or (stored > high and stored != size):
        return (f"it holds {stored / 2**20:.0f} MiB of tensors, but {name} needs {low / 2**20:.0f}-"
                f"{high / 2**20:.0f} MiB ({count / 1e6:.0f}M values): it is truncated or another model's weights")
    return None


def _looks_like_path(pretrained: str | None) -> bool:
    return bool(pretrained) and ("/" in pretrained or os.sep in pretrained or pretrained.endswith(WEIGHT_SUFFIXES))


def _existing_file(path: str, source: str) -> Path:
    found = Path(path).expanduser()
    if not found.is_file():
        raise WeightsUnavailableError(f"{source} names {found}, which does not exist or is not a file. "
                                      "Fix the path (or unset the variable).")
    return found


def weights_file_names(name: str, pretrained: str) -> list[str]:
    """File names :func:`local_weights_file` accepts for ``(name, pretrained)`` in ``$ZSADLAB_WEIGHTS_DIR``.

    One file per pretrained tag: ``<name>-<tag>.pt`` (``.pth``, ``.bin``, ``.safetensors``) and the
    official download's own name (e.g. ``vit_b_16_plus_240-laion400m_e31-8fb26589.pt``). The plain
    ``<name>.pt`` only where the model has this one tag (``ViT-L-14-336.pt`` can only be ``openai``):
    WinCLIP's ViT-B-16-plus-240 ``laion400m_e31`` and InCTRL's ``laion400m_e32`` are never crossed.
    """
    url = (open_clip.get_pretrained_cfg(name, pretrained) or {}).get("url")
    names = [f"{name}-{pretrained}{suffix}" for suffix in WEIGHT_SUFFIXES] + ([os.path.basename(url)] if url else [])
    if open_clip.list_pretrained_tags_by_model(name) == [pretrained]:
        names += [name + suffix for suffix in WEIGHT_SUFFIXES]
    return names


def refuse_untagged_file(folder: Path, name: str, pretrained: str) -> None:
    """Raise :class:`WeightsUnavailableError` when ``folder`` holds a plain ``<name>.pt`` for a model with
    several pretrained tags (say ViT-B-16-plus-240: ``laion400m_e31`` for WinCLIP, ``laion400m_e32`` for
    InCTRL), whose tag cannot be told from the file; the message names both candidate file names."""
    tags = open_clip.list_pretrained_tags_by_model(name)
    plain = next((folder / (name + s) for s in WEIGHT_SUFFIXES if (folder / (name + s)).is_file()), None)
    if plain is None or len(tags) < 2:
        return
    candidates = " or ".join(f"{name}-{tag}{plain.suffix}" for tag in tags)
    raise WeightsUnavailableError(
        f"{plain} could hold any of the pretrained tags {tags} of {name} and {pretrained!r} is needed: "
        f"rename it to {candidates} after the tag it holds (one file per tag).")


def local_weights_file(name: str, pretrained: str | None) -> Path | None:
    """The local weight file for ``(name, pretrained)``, or ``None`` (then open_clip's cache or the hub is used).

    In order: ``pretrained`` itself when it is a path; ``$ZSADLAB_CLIP_WEIGHTS``, which
    feeds :data:`WEIGHTS_ENV_MODEL` (ViT-L-14-336) only, never a model of another shape;
    ``$ZSADLAB_WEIGHTS_DIR/<file>`` with a name from :func:`weights_file_names`
    (e.g. ``ViT-L-14-336.pt``, ``ViT-B-16-plus-240-laion400m_e32.pt``); a plain file whose tag is
    ambiguous is refused (:func:`refuse_untagged_file`). A path that is set but missing raises
    :class:`WeightsUnavailableError` naming it.
    """
    if _looks_like_path(pretrained):
        return _existing_file(pretrained, f"the weights path given for {name!r}")
    if name == WEIGHTS_ENV_MODEL and os.environ.get(WEIGHTS_ENV):
        return _existing_file(os.environ[WEIGHTS_ENV], f"{WEIGHTS_ENV} (the {WEIGHTS_ENV_MODEL} weights)")
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    if not folder or not pretrained:
        return None
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise WeightsUnavailableError(f"{WEIGHTS_DIR_ENV} names {folder}, which is not a folder. "
                                      "Fix the path (or unset the variable).")
    found = next((folder / n for n in weights_file_names(name, pretrained) if (folder / n).is_file()), None)
    if found is None:
        refuse_untagged_file(folder, name, pretrained)
    return found


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from an OpenAI TorchScript archive, a safetensors file or a torch file.

    TorchScript archives are read as data; their code never runs (:func:`load_torchscript_tensors`).
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for a damaged header
            raise ValueError(f"cannot read CLIP weights {path}: {err}. Re-download the file.") from None
    if is_torchscript_archive(path):  # OpenAI's released .pt files are TorchScript archives
        return load_torchscript_tensors(path, what="CLIP weights")
    obj = load_torch_file(path, what="CLIP weights")
    obj = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(obj, dict):
        raise ValueError(f"CLIP weights {path} hold a {type(obj).__name__}, not a state dict.")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_matching(model: CLIP, state_dict: dict, name: str, source: Path) -> None:
    """Load ``state_dict`` into ``model``; one line naming the model and the file when it does not fit."""
    state_dict = {k: v for k, v in state_dict.items() if k not in OPENAI_EXTRA_KEYS}
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [k for k, v in state_dict.items() if k in shapes and tuple(v.shape) != shapes[k]]
    missing = [k for k in shapes if k not in state_dict and k != "logit_scale"]
    unexpected = [k for k in state_dict if k not in shapes]
    problems = [
        f"{len(wrong)} tensors of another shape (e.g. {wrong[0]}: {tuple(state_dict[wrong[0]].shape)} in the file, "
        f"{shapes[wrong[0]]} in the model)" if wrong else "",
        f"{len(missing)} missing keys (e.g. {missing[:3]})" if missing else "",
        f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})" if unexpected else "",
    ]
    if any(problems):
        raise ValueError(
            f"weights in {source} do not fit open_clip model {name!r}: {'; '.join(p for p in problems if p)}. "
            f"The file belongs to another model: {WEIGHTS_ENV} feeds {WEIGHTS_ENV_MODEL} only; give each "
            f"model and pretrained tag its own file ({WEIGHTS_DIR_ENV}/{name}-<tag>.pt)."
        )
    model.load_state_dict(state_dict, strict=False)


def _offline_message(name: str, pretrained: str) -> str:
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface")
    variable = f", or for this model only set {WEIGHTS_ENV}=/path/to/file" if name == WEIGHTS_ENV_MODEL else ""
    return (
        f"CLIP weights for {name!r} / {pretrained!r} are not on this machine and the model hub cannot be "
        f"reached (checked in {OFFLINE_PROBE_SECONDS:.0f} s; cache directory: {cache}). Either run once with "
        f"network access so open_clip caches them, or download the weight file yourself and save it as "
        f"{weights_file_names(name, pretrained)[0]} in the folder named by {WEIGHTS_DIR_ENV}{variable}. "
        f"For CPU smoke runs without weights use profile='smoke'."
    )


def _offline_hint(name: str, pretrained: str) -> str:
    return f"e.g. {WEIGHTS_DIR_ENV}/{weights_file_names(name, pretrained)[0]}; see README, 'Weights: one file per backbone'"


def _uses_quick_gelu(name: str, pretrained: str | None) -> bool:
    """QuickGELU for OpenAI weights (open_clip's tag config says so); for a weight file, when the
    model name has OpenAI weights only (e.g. ViT-L-14-336)."""
    cfg = open_clip.get_pretrained_cfg(name, pretrained) if pretrained else {}
    if cfg:
        return bool(cfg.get("quick_gelu", False))
    return open_clip.list_pretrained_tags_by_model(name) == ["openai"]


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns "No pretrained weights loaded ... initialized randomly" before we load the file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


def clip_from_file(name: str, path: Path, quick_gelu: bool) -> CLIP:
    """open_clip model ``name`` with the weights of ``path`` (any format of :func:`_state_dict_from_file`).

    The architecture always comes from ``name``, never from the file, so a file of
    another model fails here with both names instead of later with a shape error.
    """
    state_dict = _state_dict_from_file(path)
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu)
    finally:
        logging.getLogger().removeFilter(quiet)
    _load_matching(model, state_dict, name, path)
    print(f"zsadlab: {name} weights loaded from {path}", file=sys.stderr)
    return model


def load_clip(name: str, pretrained: str, device: str | torch.device | None = None) -> CLIP:
    """A real CLIP in fp32 and eval mode, from a local file, open_clip's cache, or the hub.

    ``pretrained`` is an open_clip tag (``"openai"``) or a path to a weight file
    (OpenAI TorchScript ``.pt``, open_clip ``.bin``/``.pt``, or ``.safetensors``).
    Given a tag, :func:`local_weights_file` looks for the tag's own file first
    (``$ZSADLAB_WEIGHTS_DIR/<name>-<tag>.pt``; ``$ZSADLAB_CLIP_WEIGHTS`` for ViT-L-14-336 only).
    Offline with nothing on disk it raises :class:`WeightsUnavailableError` within
    a few seconds rather than retrying the hub for a minute.
    """
    device = pick_device(str(device) if device is not None else None)
    quick_gelu = _uses_quick_gelu(name, None if _looks_like_path(pretrained) else pretrained)
    local = local_weights_file(name, pretrained) or cached_weights(name, pretrained)
    problem = weights_file_problem(local, name) if local is not None else None
    if problem is not None:
        raise WeightsFileError(f"{local} cannot be the {name} weights: {problem}. Replace it with the "
                               f"complete {name} file ({_offline_hint(name, pretrained)}).")
    if local is None and not hub_reachable():
        raise WeightsUnavailableError(_offline_message(name, pretrained))
    if local is None and not hub_identifies_tag(name, pretrained):  # the tag's own URL, never a shared hub copy
        downloaded = open_clip.download_pretrained(open_clip.get_pretrained_cfg(name, pretrained), prefer_hf_hub=False)
        if not downloaded:
            raise WeightsUnavailableError(_offline_message(name, pretrained))
        local = Path(downloaded)
    if local is not None:
        model = clip_from_file(name, local, quick_gelu)
    else:
        model = open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=quick_gelu)
    return model.float().eval().to(device)


# ---------------------------------------------------------------------------
# Tokens from any block
# ---------------------------------------------------------------------------


def grid_size(visual: torch.nn.Module, image_size: int) -> int:
    """Patch-grid side ``g`` for a square input of ``image_size`` pixels."""
    patch = visual.patch_size[0] if isinstance(visual.patch_size, tuple) else visual.patch_size
    if image_size % patch:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
    return image_size // patch


def resized_positional_embedding(visual: torch.nn.Module, grid: int) -> torch.Tensor:
    """The positional table for a ``grid`` x ``grid`` patch grid, as the official code resizes it.

    Patch rows are laid out row-major on the native grid, resized with bilinear,
    ``align_corners=False``, no antialias, flattened row-major, CLS row prepended
    unchanged (fixtures/anomalyclip §5.1). Unlike the official code, the model's
    parameter is never overwritten, so every call starts from the native table.
    """
    table = visual.positional_embedding  # [1 + n*n, W]
    native = square_side(table.shape[0] - 1)
    if native == grid:
        return table
    cls, patches = table[:1], table[1:]
    width = table.shape[1]
    patches = patches.reshape(1, native, native, width).permute(0, 3, 1, 2)  # [1, W, n, n]
    patches = F.interpolate(patches, size=(grid, grid), mode="bilinear", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid * grid, width)  # [g*g, W]
    return torch.cat([cls, patches], dim=0)  # [1 + g*g, W]


def embed_image(visual: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Patchify, prepend CLS, add the (resized) positional table and apply ``ln_pre``.

    ``x``: ``[B, 3, S, S]`` normalised images. Returns ``[B, 1+g*g, W]``.
    """
    grid = grid_size(visual, x.shape[-1])
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"square images expected, got {tuple(x.shape[-2:])}")
    tokens = visual.conv1(x)  # [B, W, g, g]
    tokens = tokens.flatten(2).transpose(1, 2)  # [B, g*g, W], row-major patches
    cls = visual.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)  # [B, 1, W]
    tokens = torch.cat([cls, tokens], dim=1)  # [B, 1+g*g, W]
    tokens = tokens + resized_positional_embedding(visual, grid).to(tokens.dtype)
    return visual.ln_pre(tokens)


def factory_rebuilt(clip: CLIP, image_size: int, antialias: bool = True) -> CLIP:
    """``clip`` as open_clip's factory rebuilds a pretrained model for another ``image_size``.

    At a size other than the native one, ``create_model_and_transforms(name, image_size,
    pretrained='openai')`` of the open_clip copies vendored by the official code (2.16,
    ``factory.py:147-169``) builds a fresh ``CLIP(**model_cfg)`` - exact ``nn.GELU``, because the
    model configs (e.g. ``ViT-L-14-336.json``) carry no ``quick_gelu`` key - and loads the OpenAI
    weights with the positional table passed through ``resize_pos_embed`` (bicubic,
    ``align_corners=False``). ``antialias`` chooses that resize's antialiasing:

    * ``True`` - open_clip and APRIL-GAN's copy;
    * ``False`` - MuSc's copy (``model.py:436-441`` drops the argument, so torch's default
      applies; fixtures/musc §2.2). The two tables differ by up to 3.1e-2 on the tiny fixture CLIP.

    At the native size ``clip`` itself is returned. Otherwise the result **shares every weight**
    with ``clip`` (nothing is copied, ``clip`` is not mutated); only its activations and its
    positional table differ, so its features differ from the native model's in both towers.
    """
    visual = clip.visual
    grid = grid_size(visual, image_size)
    if (grid, grid) == tuple(visual.grid_size):
        return clip
    weights = {id(t): t for t in [*clip.parameters(), *clip.buffers()]}
    rebuilt = copy.deepcopy(clip, memo=weights)  # new modules around the same tensors
    for module in rebuilt.modules():
        for name, child in module.named_children():
            if isinstance(child, QuickGELU):
                setattr(module, name, torch.nn.GELU())
    rebuilt.visual.image_size, rebuilt.visual.grid_size = (image_size, image_size), (grid, grid)
    tables = {"visual.positional_embedding": visual.positional_embedding.detach()}
    resize_pos_embed(tables, rebuilt, interpolation="bicubic", antialias=antialias)  # [1 + g*g, W]
    rebuilt.visual.positional_embedding = torch.nn.Parameter(tables["visual.positional_embedding"],
                                                             requires_grad=False)
    return rebuilt


def check_blocks(blocks: Sequence[int], depth: int) -> tuple[int, ...]:
    blocks = tuple(int(b) for b in blocks)
    bad = [b for b in blocks if not 1 <= b <= depth]
    if bad:
        raise ValueError(f"blocks are counted 1..{depth} (1-based, as in the papers); got {bad}")
    return blocks


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, N, C]`` -> ``[B, H, N, C/H]`` (contiguous head slices, as nn.MultiheadAttention)."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, hd]`` -> ``[B, N, H*hd]``."""
    return x.transpose(1, 2).flatten(2)


def block_qkv(block: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys, values ``[B, H, N, hd]`` of a block for the stream ``x``: ``in_proj(ln_1(x))`` split
    into rows ``[0:C], [C:2C], [2C:3C]`` and heads, exactly as ``nn.MultiheadAttention`` does."""
    attn = block.attn
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # [B, N, 3C]
    q, k, v = qkv.chunk(3, dim=-1)
    return split_heads(q, attn.num_heads), split_heads(k, attn.num_heads), split_heads(v, attn.num_heads)


def residual_block(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One ViT block ``[B, N, W] -> [B, N, W]``, the same function as open_clip's block.

    Attention runs through ``scaled_dot_product_attention`` (measured ~1.2-1.8x faster than
    ``nn.MultiheadAttention`` on this CPU at 1370 tokens; equal to it within ~5e-7, not bit for bit);
    blocks of another kind run as they are. Used on the DPAM encoder's plain blocks.
    """
    if not isinstance(block.attn, torch.nn.MultiheadAttention) or hasattr(block, "ln_1_kv"):
        return block(x)
    q, k, v = block_qkv(block, x)
    x = x + block.ls_1(block.attn.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v))))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def block_tokens(
    visual: torch.nn.Module, x: torch.Tensor, blocks: Sequence[int]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Raw residual-stream tokens after each block in ``blocks`` (1-based), and the final stream.

    Returns ``(tokens, final)`` with ``tokens[i]``: ``[B, 1+g*g, W]`` after block
    ``blocks[i]`` (no ``ln_post``, no ``proj``) and ``final``: ``[B, 1+g*g, W]``
    after the last block. Works at any square size that is a multiple of the patch.
    """
    resblocks = visual.transformer.resblocks
    wanted = check_blocks(blocks, len(resblocks))
    stream = embed_image(visual, x)  # [B, N, W]
    taken: dict[int, torch.Tensor] = {}
    for index, block in enumerate(resblocks, start=1):
        stream = block(stream)  # open_clip's own block: bit-identical to encode_image
        if index in wanted:
            taken[index] = stream
    return [taken[b] for b in wanted], stream


def project_tokens(visual: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``ln_post`` then ``proj`` on every token: ``[..., W]`` -> ``[..., D]``."""
    return visual.ln_post(tokens) @ visual.proj


def pooled_image_embedding(visual: torch.nn.Module, final: torch.Tensor) -> torch.Tensor:
    """CLIP's image embedding from the final stream: ``ln_post(CLS) @ proj`` -> ``[B, D]``.

    Identical to open_clip's ``encode_image`` for ViTs with CLS pooling.
    """
    return project_tokens(visual, final[:, 0])


def preprocess_config(model: CLIP) -> dict:
    """Mean/std of the model's normalisation (OpenAI CLIP constants for every model used here)."""
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    return {
        "mean": tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        "std": tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
    }


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Turn off gradients of every parameter of ``model`` (the CLIP backbone is never trained)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------
# Text tower
# ---------------------------------------------------------------------------

def tokenize(texts: Sequence[str] | str) -> torch.Tensor:
    """CLIP BPE token ids ``[P, 77]`` (SOT, text, EOT, zero padding), as the official tokenizers."""
    return open_clip.tokenize(list(texts) if not isinstance(texts, str) else [texts])


def encode_text_embeddings(
    clip: CLIP, embeddings: torch.Tensor, eot_index: torch.Tensor,
    before_block: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run the text tower on token embeddings and pool at the EOT position.

    ``embeddings``: ``[P, L, W]`` token embeddings *without* positional embedding;
    ``eot_index``: ``[P]`` EOT positions (the argmax of the token ids). Returns
    ``[P, D]`` = ``text_projection(ln_final(x[eot]))``, as open_clip's ``encode_text``.

    Speed-up: with CLIP's causal mask the EOT feature depends only on positions
    ``<= EOT``, so the sequence is cut after the last EOT of the batch (the 242
    InCTRL prompts need ~12 of 77 positions). ``before_block(i, x)`` (1-based
    block index) may rewrite the tokens before block ``i`` - deep text prompts.
    """
    length = int(eot_index.max()) + 1
    x = embeddings[:, :length] + clip.positional_embedding[:length].to(embeddings.dtype)  # [P, L, W]
    mask = clip.attn_mask[:length, :length].to(x.dtype) if clip.attn_mask is not None else None
    for index, block in enumerate(clip.transformer.resblocks, start=1):
        if before_block is not None:
            x = before_block(index, x)
        x = block(x, attn_mask=mask)
    x = clip.ln_final(x)  # [P, L, W]
    pooled = x[torch.arange(x.shape[0], device=x.device), eot_index]  # [P, W]
    return pooled @ clip.text_projection  # [P, D]


def encode_text(clip: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """``[P, 77]`` token ids -> ``[P, D]`` unnormalised text features (open_clip ``encode_text``, truncated)."""
    tokens = tokens.to(clip.token_embedding.weight.device)
    return encode_text_embeddings(clip, clip.token_embedding(tokens), tokens.argmax(dim=-1))


# ---------------------------------------------------------------------------
# Which CLIP a method runs on
# ---------------------------------------------------------------------------

TINY_PREFIX = "tiny-"


@dataclass(frozen=True)
class Backbone:
    """Which CLIP to build: an open_clip ``name`` + ``pretrained`` tag, or ``tiny-<kind>`` with a seed."""

    name: str
    pretrained: str | None = None

    @property
    def is_tiny(self) -> bool:
        return self.name.startswith(TINY_PREFIX)

    def build(self, device: str | torch.device | None = None, seed: int = 0):
        """The CLIP model (fp32, eval mode) on ``device``."""
        if self.is_tiny:
            return tiny_clip(self.name[len(TINY_PREFIX):], seed=seed).to(device or "cpu")
        return load_clip(self.name, self.pretrained, device=device)

    def available(self) -> bool:
        return self.is_tiny or weights_available(self.name, self.pretrained)


def tiny_backbone(kind: str) -> Backbone:
    """The smoke-profile :class:`Backbone` of tiny CLIP ``kind`` (a key of :data:`TINY_CLIPS`)."""
    if kind not in TINY_CLIPS:
        raise ValueError(f"unknown tiny CLIP {kind!r}; choose one of {sorted(TINY_CLIPS)}")
    return Backbone(TINY_PREFIX + kind)


def tiny_image_size(kind: str) -> int:
    """The native input side (pixels) of tiny CLIP ``kind``."""
    return TINY_CLIPS[kind].vision["image_size"]
