"""Show-o (showlab/Show-o, 512x512 text-to-image) as a ``MaskedT2IAdapter``.

The public release is three hub repositories; ``--model showo:DIR`` takes a folder
holding one of each::

    DIR/showo/     showlab/show-o-512x512   config.json + pytorch_model.bin (or *.safetensors)
    DIR/vq_model/  showlab/magvitv2         config.json + pytorch_model.bin (or *.safetensors)
    DIR/llm/       microsoft/phi-1_5        config.json + tokenizer files (weights not needed)

(``showo:showlab/show-o-512x512``, a hub id, fetches the three when the hub is reachable.)

What the public ``t2i_generate`` does per step, reproduced here (see ``showo_prompting``
and ``showo_transformer`` for the sequence layout and omni-attention):

* one forward over ``[text prefix, <|soi|>, image tokens, <|eoi|>]``; conditional and
  unconditional rows differ only in the text prefix (unconditional prompt ``""``);
* guidance ``(1 + w) l_c - w l_u`` over the codebook slice of the vocabulary;
* sampling from ``softmax(l)``, confidence ``log p + τ_t · Gumbel`` with the cosine
  schedule, and τ_t annealed *multiplicatively*: the loop does
  ``temperature = temperature * (1 - (t+1)/T)`` every step (``gumbel_temperature``);
  its default start is 1.0 (``training.generation_temperature``), the demo uses w = 5
  and T = 50 at 512 px;
* no timestep input: the network sees only the partially masked grid.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from torch import nn

from maskfocus_cli.models.folders import (HUB_ID, ModelFolderError, check_device_dtype, check_layout,
                                                 expect_class, load_state_strict, read_config,
                                                 save_folder_atomically)
from maskfocus_cli.models.base import Cond, MaskedT2IAdapter, StepInfo
from maskfocus_cli.models.showo_magvit import MAGVITv2, MagvitConfig
from maskfocus_cli.models.showo_prompting import ShowoPrompting
from maskfocus_cli.models.showo_transformer import ShowoTransformer, omni_attention_mask

LAYOUT = ("showo/config.json", "vq_model/config.json", "llm/config.json", "llm/tokenizer_config.json")
HUB_VQ_MODEL = "showlab/magvitv2"
HUB_LLM = "microsoft/phi-1_5"
WEIGHT_STEMS = ("pytorch_model", "model", "diffusion_pytorch_model")
SHOWO_REQUIRED = ("vocab_size", "llm_vocab_size", "codebook_size", "num_vq_tokens")


class ShowoAdapter(MaskedT2IAdapter):
    """Show-o: Phi-1.5 over [text; image tokens] with omni-attention, MAGVIT-v2 tokens."""

    family = "showo"
    guidance_form = "showo"
    #: LoRA targets: every Phi linear except the (vocabulary-sliced) lm_head
    lora_targets = ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]

    def __init__(self, transformer: ShowoTransformer, vq_model: MAGVITv2, prompting: ShowoPrompting,
                 sources: dict[str, Path] | None = None) -> None:
        self.transformer = transformer
        self.vq_model = vq_model
        self.prompting = prompting
        self.sources = dict(sources or {})
        self._mask_id = transformer.mask_token_id
        self._codebook = transformer.codebook_size
        self._code_offset = transformer.code_offset
        side = math.isqrt(transformer.num_vq_tokens)
        if side * side != transformer.num_vq_tokens:
            raise ModelFolderError(f"num_vq_tokens {transformer.num_vq_tokens} is not a square token grid")
        self._grid = (side, side)
        if prompting.vocab_size != self._code_offset:
            raise ModelFolderError(
                f"the tokenizer has {prompting.vocab_size} tokens after Show-o's special tokens, but the "
                f"checkpoint puts image code 0 at id {self._code_offset} (vocab_size - 1 - codebook_size): "
                "llm/ must hold microsoft/phi-1_5's tokenizer")
        if vq_model.config.codebook_size != self._codebook:
            raise ModelFolderError(f"the MAGVIT-v2 tokenizer has {vq_model.config.codebook_size} codes but "
                                   f"the Show-o checkpoint predicts {self._codebook}")

    # ------------------------------------------------------------------ geometry
    @property
    def mask_id(self) -> int:
        """Show-o's ``mask_token_id`` (vocab_size - 1); grids hold codes 0..K-1 or this id."""
        return self._mask_id

    @property
    def codebook_size(self) -> int:
        return self._codebook

    @property
    def grid(self) -> tuple[int, int]:
        return self._grid

    @property
    def image_size(self) -> tuple[int, int]:
        f = self.vq_model.config.downsample_factor
        return self._grid[0] * f, self._grid[1] * f

    # ------------------------------------------------------------------ conditioning
    def encode_prompts(self, prompts: list[str]) -> Cond:
        """Show-o has no separate text encoder: the conditioning is the tokenised text prefix."""
        return {"prompt_ids": self.prompting.prompt_ids(list(prompts)).to(self.device)}

    def sequence(self, tokens: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) grid (codes or mask_id) + text prefix → full Show-o input ids."""
        image = torch.where(tokens == self._mask_id, tokens, tokens + self._code_offset)
        return self.prompting.sequence(prompt_ids, image)

    # ------------------------------------------------------------------ network
    def call_transformer(self, net: nn.Module, tokens: torch.Tensor, cond: Cond,
                         step: StepInfo) -> torch.Tensor:
        seq = self.sequence(tokens, cond["prompt_ids"].to(tokens.device))
        mask = omni_attention_mask(seq, self.prompting.pad_id, self.prompting.text_len)
        return net(seq, attention_mask=mask, num_image_tokens=tokens.shape[1])

    def gumbel_temperature(self, step: int, total: int, start: float) -> float:
        """Show-o's τ_t = start · Π_{s≤t} (1 - (s+1)/T) (its loop rescales the running value)."""
        tau = float(start)
        for s in range(step + 1):
            tau *= 1.0 - (s + 1) / total
        return tau

    # ------------------------------------------------------------------ VQ side
    @torch.no_grad()
    def code_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        dev = self.vq_model.quantize.embedding.device
        return self.vq_model.get_codebook_entry(tokens.reshape(tokens.shape[0], -1).to(dev), self._grid)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        dev = self.vq_model.quantize.embedding.device
        codes = tokens.reshape(tokens.shape[0], -1).to(dev).clamp(0, self._codebook - 1)
        img = self.vq_model.decode_code(codes, self._grid)
        return ((img.float() + 1.0) / 2.0).clamp(0, 1)

    def describe(self) -> dict:
        d = super().describe()
        d["parameters"] = sum(p.numel() for p in self.transformer.parameters())
        d["image_size"] = list(self.image_size)
        d["text_tokens"] = self.prompting.text_len
        return d

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> None:
        """Write the three-part folder with *this* transformer's weights.

        ``showo/`` gets the source config.json and ``pytorch_model.safetensors`` (the
        name Show-o's own ``from_pretrained`` looks for first); ``vq_model/`` and
        ``llm/`` are copied from where they were loaded (or saved when built in memory).
        """
        from safetensors.torch import save_file

        def fill(tmp: Path) -> None:
            (tmp / "showo").mkdir(parents=True)
            src = self.sources.get("showo")
            if src is not None and (src / "config.json").is_file():
                shutil.copy2(src / "config.json", tmp / "showo" / "config.json")
            else:
                cfg = {"_class_name": "Showo", **self.transformer.showo_config}
                (tmp / "showo" / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            state = {k: v.detach().contiguous() for k, v in self.transformer.state_dict().items()}
            save_file(state, str(tmp / "showo" / "pytorch_model.safetensors"), metadata={"format": "pt"})
            vq = self.sources.get("vq_model")
            if vq is not None and (vq / "config.json").is_file():
                shutil.copytree(vq, tmp / "vq_model")
            else:
                self.vq_model.save(tmp / "vq_model")
            llm = self.sources.get("llm")
            if llm is not None and (llm / "config.json").is_file():
                shutil.copytree(llm, tmp / "llm", ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.h5"))
            else:
                phi = self.transformer.showo.config
                phi.architectures = ["PhiForCausalLM"]
                phi.save_pretrained(tmp / "llm")
                self.prompting.tokenizer.save_pretrained(tmp / "llm")

        save_folder_atomically(Path(folder), fill)


# ---------------------------------------------------------------------- folders
def resolve_parts(path_or_id: str) -> dict[str, Path]:
    """``showo:PATH_OR_ID`` → the showo / vq_model / llm component folders."""
    p = Path(path_or_id).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelFolderError(f"--model showo:{path_or_id} is a file; point to the model folder "
                                   f"(containing {', '.join(LAYOUT)})")
        if not (p / "showo").exists() and (p / "config.json").is_file():
            cfg = read_config(p / "config.json")
            if cfg.get("_class_name") == "Showo":
                raise ModelFolderError(
                    f"{p} is a bare Show-o checkpoint; put it in DIR/showo next to DIR/vq_model "
                    f"({HUB_VQ_MODEL}) and DIR/llm ({HUB_LLM} config and tokenizer), then use --model showo:DIR")
        check_layout(p, "showo", LAYOUT)
        return {"showo": p / "showo", "vq_model": p / "vq_model", "llm": p / "llm"}
    if not HUB_ID.match(path_or_id):
        raise ModelFolderError(f"--model showo:{path_or_id}: no such folder (expected a folder containing "
                               f"{', '.join(LAYOUT)}, or a hub id such as showlab/show-o-512x512)")
    return _from_hub(path_or_id)


def _from_hub(repo_id: str) -> dict[str, Path]:
    try:
        from huggingface_hub import snapshot_download
        showo = Path(snapshot_download(repo_id, allow_patterns=["config.json", "*.safetensors", "*.json",
                                                                "pytorch_model*.bin"]))
        llm_id = read_config(showo / "config.json").get("llm_model_path") or HUB_LLM
        vq = Path(snapshot_download(HUB_VQ_MODEL, allow_patterns=["config.json", "*.safetensors", "*.bin"]))
        llm = Path(snapshot_download(llm_id, allow_patterns=["*.json", "*.txt"]))
    except ModelFolderError:
        raise
    except Exception as e:  # offline, unknown repo, gated, ... : all mean "give us a folder"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFolderError(f"--model showo:{repo_id}: not a local folder and the hub id could not be "
                               f"fetched ({first[:160]}); download it and pass a folder with "
                               f"{', '.join(LAYOUT)}") from None
    return {"showo": showo, "vq_model": vq, "llm": llm}


def weight_files(component: Path) -> list[Path]:
    """Safetensors (single or sharded, any of Show-o's / transformers' / diffusers' names) or a .bin."""
    for stem in WEIGHT_STEMS:
        single = component / f"{stem}.safetensors"
        if single.is_file():
            return [single]
        index = component / f"{stem}.safetensors.index.json"
        if index.is_file():
            return [component / n for n in sorted(set(read_config(index).get("weight_map", {}).values()))]
    for stem in WEIGHT_STEMS:
        if (component / f"{stem}.bin").is_file():
            return [component / f"{stem}.bin"]
    raise ModelFolderError(f"{component} has no weights (expected pytorch_model.bin or "
                           f"pytorch_model.safetensors / model.safetensors)")


def load_weights_strict(module: nn.Module, files: list[Path]) -> None:
    """Strict key/shape loading; pickled ``.bin`` checkpoints are read with ``weights_only``."""
    if files[0].suffix == ".safetensors":
        load_state_strict(module, files)
        return
    try:
        state = torch.load(files[0], map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelFolderError(f"{files[0]} is not a readable PyTorch weights file ({first[:160]})") from None
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or bad:
        what = (f"missing {len(missing)} keys (e.g. {missing[0]})" if missing else
                f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})" if unexpected else
                f"shape mismatch for {bad[0]}")
        raise ModelFolderError(f"{files[0].parent} does not fit the architecture in its config.json: {what} "
                               "(is it a checkpoint of another architecture?)")
    module.load_state_dict(state, strict=True, assign=True)


def phi_config(llm: Path):
    """The Phi architecture from llm/config.json (Show-o builds its network from it)."""
    from transformers import PhiConfig
    path = llm / "config.json"
    cfg = read_config(path)
    if cfg.get("model_type") != "phi":
        expect_class(cfg, path, "PhiForCausalLM", "showo", key="architectures")
    try:
        return PhiConfig.from_dict({k: v for k, v in cfg.items() if k != "_name_or_path"})
    except (TypeError, ValueError, KeyError) as e:
        raise ModelFolderError(f"{path} is not a usable Phi config ({e})") from None


def build_transformer(showo_cfg: dict, phi, empty: bool = False) -> ShowoTransformer:
    """A ShowoTransformer for a Show-o config dict; ``empty`` builds it without memory (meta weights)."""
    if empty:
        from accelerate import init_empty_weights
        with init_empty_weights():
            return ShowoTransformer(showo_cfg, phi)
    return ShowoTransformer(showo_cfg, phi)


def load_transformer(showo_dir: Path, llm_dir: Path, dtype: torch.dtype) -> ShowoTransformer:
    path = showo_dir / "config.json"
    cfg = read_config(path)
    expect_class(cfg, path, "Showo", "showo")
    missing = [k for k in SHOWO_REQUIRED if k not in cfg]
    if missing:
        raise ModelFolderError(f"{path} lacks {', '.join(missing)} (not a Show-o config)")
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    model = build_transformer(cfg, phi_config(llm_dir), empty=True)
    load_weights_strict(model, weight_files(showo_dir))
    return model.to(dtype)


def load_vq_model(vq_dir: Path) -> MAGVITv2:
    """MAGVIT-v2 in float32 (the public inference code never casts it)."""
    from accelerate import init_empty_weights
    path = vq_dir / "config.json"
    cfg = read_config(path)
    expect_class(cfg, path, "MAGVITv2", "showo")
    try:
        mcfg = MagvitConfig.from_json(cfg)
    except (TypeError, ValueError) as e:
        raise ModelFolderError(f"{path}: {e}") from None
    with init_empty_weights():
        model = MAGVITv2(mcfg)
    load_weights_strict(model, weight_files(vq_dir))
    return model.float()


def load(path: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> ShowoAdapter:
    """Load a Show-o folder (see module docstring) or hub id on ``device`` in ``dtype``."""
    from transformers import AutoTokenizer
    check_device_dtype(device, dtype)
    parts = resolve_parts(path)
    transformer = load_transformer(parts["showo"], parts["llm"], dtype)
    vq_model = load_vq_model(parts["vq_model"])
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(parts["llm"]))
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelFolderError(f"{parts['llm']}: no usable tokenizer ({first[:160]})") from None
    for m in (transformer, vq_model):
        m.to(device).eval().requires_grad_(False)
    return ShowoAdapter(transformer, vq_model, ShowoPrompting(tokenizer), sources=parts)
