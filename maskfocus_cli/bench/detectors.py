"""Learned detectors for real images, behind the ``Detector`` protocol of bench/detection.py.

* :class:`Mask2FormerDetector` — transformers' Mask2Former, COCO instance
  segmentation. GenEval's official detector is Mask2Former Swin-S (mmdetection
  2.x); ``facebook/mask2former-swin-small-coco-instance`` is the same model family
  in transformers. Boxes come from the masks (as mmdetection does), and the mask
  stays in ``Detection.extra["mask"]`` for colour classification.
* :class:`ClipColorClassifier` — GenEval's colour check: crop the box, paste the
  object mask onto #999999 grey, zero-shot classify with open_clip over the 10
  GenEval colours using GenEval's three templates.

Nothing here downloads weights implicitly when offline: pass a local folder (or
file) and it loads; pass a hub id and it is fetched only when the network and
HF_HUB_OFFLINE allow, otherwise a ValueError says how to supply the weights.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from .detection import Detection
from .layout import to_pil
from .prompts import GENEVAL_COLORS

DEFAULT_MASK2FORMER = "facebook/mask2former-swin-small-coco-instance"
DEFAULT_COLOR_CLIP = "ViT-L-14"  # GenEval: open_clip ViT-L-14, pretrained="openai"

#: GenEval's class names (its object_names.txt), in COCO's contiguous 80-class order.
GENEVAL_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote", "computer keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)

#: Other spellings of the COCO classes found in checkpoints' id2label → GenEval name.
COCO_LABEL_ALIASES: dict[str, str] = {
    "mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
    "tvmonitor": "tv", "tv monitor": "tv", "motorbike": "motorcycle", "aeroplane": "airplane",
    "sofa": "couch", "diningtable": "dining table", "pottedplant": "potted plant",
    "hair dryer": "hair drier", "doughnut": "donut", "cellphone": "cell phone",
}

_TRUTHY = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a connection to the hub at all? Without this check an offline machine spends ~100 s
    in huggingface_hub's retries before the same error. Behind a proxy the direct probe proves nothing,
    so it is skipped (True)."""
    import socket
    import urllib.parse
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        with socket.create_connection((host or "huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def hub_cached(repo_id: str) -> bool:
    """Is the repo's config already in the local hub cache (usable without network)?"""
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an odd cache is the same as no cache
        return False


def resolve_weights(path_or_id: str | os.PathLike, what: str, option: str) -> tuple[str, bool]:
    """Decide where weights come from: (source, is_local). Raise ValueError when they cannot be had.

    A hub id is returned only when HF_HUB_OFFLINE is unset; the caller wraps the
    actual load so a failed download also ends in a ValueError with the fix.
    """
    s = str(path_or_id)
    p = Path(s).expanduser()
    if p.exists():
        return str(p), True
    looks_like_hub_id = s.count("/") == 1 and not s.startswith((".", "/", "~")) and "\\" not in s
    if not looks_like_hub_id:
        raise ValueError(f"{what} weights not found: {s} does not exist; pass {option} with a local "
                         f"model folder")
    if hub_offline():
        raise ValueError(f"{what} weights '{s}' are not a local folder and HF_HUB_OFFLINE is set; download "
                         f"the model folder elsewhere (e.g. `huggingface-cli download {s}`) and pass "
                         f"{option} /path/to/folder")
    if not hub_cached(s) and not hub_reachable():
        raise ValueError(f"{what} weights '{s}' are not a local folder, not in the hub cache, and the hub is "
                         f"unreachable; download the model folder elsewhere (e.g. `huggingface-cli download {s}`) "
                         f"and pass {option} /path/to/folder")
    return s, False


def weights_error(what: str, source: str, option: str, err: Exception) -> ValueError:
    return ValueError(f"could not load {what} weights from '{source}' ({type(err).__name__}: {err}); pass "
                      f"{option} with a local model folder (hub ids need network access)")


def coco_label_map(id2label: dict) -> dict[int, str]:
    """Model label id → GenEval class name; ids that are not COCO things are left out.

    Checkpoints name classes differently ("mouse", "tvmonitor", "LABEL_3"); names
    are matched through :data:`COCO_LABEL_ALIASES`, and a bare 80-class model with
    generic names falls back to COCO's contiguous order.
    """
    known = set(GENEVAL_CLASSES)
    out: dict[int, str] = {}
    for k, name in id2label.items():
        n = str(name).strip().lower().replace("_", " ").removesuffix("-merged").removesuffix("-other")
        n = COCO_LABEL_ALIASES.get(n, n)
        if n in known:
            out[int(k)] = n
    if not out and len(id2label) == len(GENEVAL_CLASSES):
        out = {int(k): GENEVAL_CLASSES[int(k)] for k in id2label}
    return out


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool masks → (N, 4) boxes (x0, y0, x1, y1), x1/y1 exclusive like mmdetection's mask2bbox.

    Empty masks give an all-zero box.
    """
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4)
    cols = masks.any(dim=1)  # (N, W)
    rows = masks.any(dim=2)  # (N, H)
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    big = max(h, w) + 1
    x0 = torch.where(cols, xs, big).min(dim=1).values
    x1 = torch.where(cols, xs, -1).max(dim=1).values + 1
    y0 = torch.where(rows, ys, big).min(dim=1).values
    y1 = torch.where(rows, ys, -1).max(dim=1).values + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    return torch.where(cols.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


def cap_per_class(dets: Sequence[Detection], max_per_class: int) -> list[Detection]:
    """Sort by score (GenEval reads the first ``count`` of each class) and keep the best N of each class."""
    kept: list[Detection] = []
    seen: dict[str, int] = {}
    for d in sorted(dets, key=lambda d: -d.score):
        if seen.get(d.cls, 0) < max_per_class:
            kept.append(d)
            seen[d.cls] = seen.get(d.cls, 0) + 1
    return kept


class Mask2FormerDetector:
    """COCO instance segmentation with transformers' Mask2Former, as GenEval-style detections.

    ``score_threshold`` is the lowest score kept (GenEval's rules apply 0.3 / 0.9
    themselves; T2I-CompBench's rules use 0.5); at most ``max_per_class`` objects
    per class, best first.
    """

    def __init__(self, path_or_id: str | os.PathLike = DEFAULT_MASK2FORMER, device: str | torch.device = "cpu",
                 score_threshold: float = 0.3, max_per_class: int = 16, batch_size: int = 4,
                 color_classifier: ClipColorClassifier | None = None, option: str = "--detector"):
        source, _ = resolve_weights(path_or_id, "Mask2Former", option)  # before the slow import: fail fast
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        try:
            self.processor = AutoImageProcessor.from_pretrained(source)
            self.model = Mask2FormerForUniversalSegmentation.from_pretrained(source)
        except ImportError as e:  # transformers builds the training loss even for inference: needs scipy
            raise ValueError(f"Mask2Former needs an extra package: {e}; `pip install scipy`") from e
        except (OSError, ValueError) as e:
            raise weights_error("Mask2Former", source, option, e) from e
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.labels = coco_label_map(self.model.config.id2label)
        if not self.labels:
            raise ValueError(f"Mask2Former model at '{source}' has no COCO classes in its id2label; use a COCO "
                             f"instance-segmentation checkpoint such as {DEFAULT_MASK2FORMER}")
        self.score_threshold = score_threshold
        self.max_per_class = max_per_class
        self.batch_size = batch_size
        self.color_classifier = color_classifier

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[list[Detection]]:
        results: list[list[Detection]] = []
        h, w = images.shape[-2:]
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start:start + self.batch_size].float().clamp(0, 1).cpu()
            inputs = self.processor(images=list(batch), do_rescale=False, input_data_format="channels_first",
                                    return_tensors="pt")
            kwargs = {"pixel_values": inputs["pixel_values"].to(self.device)}
            if "pixel_mask" in inputs:
                kwargs["pixel_mask"] = inputs["pixel_mask"].to(self.device)
            outputs = self.model(**kwargs)
            post = self.processor.post_process_instance_segmentation(
                outputs, threshold=self.score_threshold, target_sizes=[(h, w)] * batch.shape[0],
                return_binary_maps=True)
            for res in post:
                results.append(self._to_detections(res))
        return results

    def _to_detections(self, res: dict) -> list[Detection]:
        info = res["segments_info"]
        if not info:
            return []
        masks = res["segmentation"].bool().cpu()  # (N, H, W) with return_binary_maps
        boxes = boxes_from_masks(masks)
        dets = []
        for k, seg in enumerate(info):
            cls = self.labels.get(int(seg["label_id"]))
            if cls is None or not masks[k].any():
                continue
            dets.append(Detection(cls=cls, box=tuple(boxes[k].tolist()), score=float(seg["score"]),
                                  extra={"mask": masks[k]}))
        return cap_per_class(dets, self.max_per_class)

    def classify_colors(self, images: torch.Tensor, detections: list[list[Detection]],
                        colors: list[str]) -> list[list[Detection]]:
        if self.color_classifier is None:
            raise ValueError("colour checks need a CLIP model: pass --clip with a local open_clip checkpoint "
                             "(GenEval uses ViT-L-14 'openai')")
        return self.color_classifier.classify_colors(images, detections, colors)


def load_open_clip(model: str | os.PathLike, pretrained: str | os.PathLike | None,
                   device: str | torch.device = "cpu", option: str = "--clip"):
    """Build an open_clip model, its eval transform and tokenizer from local weights.

    ``model`` is an open_clip architecture name (``pretrained`` = a checkpoint
    file, or a tag like 'openai' when online), a local folder holding
    open_clip_config.json + weights, or a 'local-dir:'/'hf-hub:' spec.
    """
    spec = str(model)
    if Path(spec).expanduser().is_dir():
        spec = "local-dir:" + str(Path(spec).expanduser())
    elif spec.startswith("hf-hub:") and hub_offline():
        raise ValueError(f"CLIP model '{spec}' needs the hub but HF_HUB_OFFLINE is set; pass {option} with a "
                         f"local folder (open_clip_config.json + weights)")
    elif not spec.startswith(("local-dir:", "hf-hub:")):
        if pretrained is None:
            raise ValueError(f"CLIP model '{spec}' needs weights: pass {option} with a checkpoint file or a "
                             f"folder holding open_clip_config.json + weights")
        p = Path(str(pretrained)).expanduser()
        if p.exists():
            pretrained = str(p)
        elif hub_offline() or any(c in str(pretrained) for c in "/\\."):
            raise ValueError(f"CLIP weights '{pretrained}' not found locally; pass {option} with a checkpoint "
                             f"file (pretrained tags such as 'openai' download and need the network)")
    import open_clip  # after the checks above: a missing-weights error should not wait for this import

    try:
        net, _, preprocess = open_clip.create_model_and_transforms(
            spec, pretrained=None if spec.startswith(("local-dir:", "hf-hub:")) else str(pretrained),
            device=device)
        tokenizer = open_clip.get_tokenizer(spec)
    except AssertionError as e:  # open_clip's shape asserts: weights of another architecture
        raise ValueError(f"CLIP weights '{pretrained}' do not fit open_clip architecture {spec!r} ({e}); name the "
                         f"weights' architecture (--clip-arch, or the reward's arch/model option)") from None
    except (RuntimeError, OSError, FileNotFoundError, ValueError) as e:
        if isinstance(e, RuntimeError) and "size mismatch" in str(e):
            raise ValueError(f"CLIP weights '{pretrained}' do not fit open_clip architecture {spec!r}; name the "
                             f"weights' architecture (--clip-arch, or the reward's arch/model option)") from None
        raise weights_error("CLIP", f"{spec} / {pretrained}", option, e) from e
    net.eval()
    return net, preprocess, tokenizer


def color_crop(image: torch.Tensor, det: Detection, background: tuple[float, float, float]) -> Image.Image:
    """GenEval's colour input: object pixels over a flat grey background, cropped to the box."""
    mask = det.extra.get("mask")
    if mask is not None:
        bg = torch.tensor(background, dtype=image.dtype).view(3, 1, 1)
        image = torch.where(mask.to(image.device).bool().unsqueeze(0), image, bg)
    h, w = image.shape[-2:]
    x0, y0, x1, y1 = (int(round(v)) for v in det.box)
    x0, y0 = min(max(x0, 0), w - 1), min(max(y0, 0), h - 1)
    x1, y1 = max(min(x1, w), x0 + 1), max(min(y1, h), y0 + 1)
    return to_pil(image[:, y0:y1, x0:x1])


class ClipColorClassifier:
    """Zero-shot colour of each detected object with open_clip, exactly as GenEval asks it.

    Text side: per object class, each colour's embedding is the renormalised mean
    of the normalised embeddings of GenEval's three templates (clip_benchmark's
    zero_shot_classifier). Image side: masked, grey-composited box crops.
    """

    TEMPLATES = ("a photo of a {c} {o}", "a photo of a {c}-colored {o}", "a photo of a {c} object")

    def __init__(self, model: str | os.PathLike = DEFAULT_COLOR_CLIP, pretrained: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 32, background: str = "#999999",
                 option: str = "--clip"):
        self.device = torch.device(device)
        self.model, self.preprocess, self.tokenizer = load_open_clip(model, pretrained, self.device, option)
        self.batch_size = batch_size
        rgb = Image.new("RGB", (1, 1), background).getpixel((0, 0))
        self.background = tuple(c / 255.0 for c in rgb)
        self._text_cache: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}

    @torch.no_grad()
    def _text_classifier(self, obj: str, colors: tuple[str, ...]) -> torch.Tensor:
        key = (obj, colors)
        if key not in self._text_cache:
            texts = [t.format(c=c, o=obj) for c in colors for t in self.TEMPLATES]
            emb = F.normalize(self.model.encode_text(self.tokenizer(texts).to(self.device)).float(), dim=-1)
            emb = F.normalize(emb.view(len(colors), len(self.TEMPLATES), -1).mean(dim=1), dim=-1)
            self._text_cache[key] = emb  # (n_colors, D)
        return self._text_cache[key]

    @torch.no_grad()
    def classify_colors(self, images: torch.Tensor, detections: list[list[Detection]],
                        colors: Sequence[str] = GENEVAL_COLORS) -> list[list[Detection]]:
        colors = tuple(colors)
        todo = [(i, j) for i, dets in enumerate(detections) for j, d in enumerate(dets) if d.color is None]
        out = [list(dets) for dets in detections]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            crops = torch.stack([self.preprocess(color_crop(images[i].float().cpu(), detections[i][j],
                                                            self.background)) for i, j in chunk])
            feats = F.normalize(self.model.encode_image(crops.to(self.device)).float(), dim=-1)
            for k, (i, j) in enumerate(chunk):
                det = detections[i][j]
                pred = int((feats[k] @ self._text_classifier(det.cls, colors).T).argmax())
                out[i][j] = dataclasses.replace(det, color=colors[pred])
        return out
