"""T2I-CompBench scoring (Huang et al. 2023), official formulas over our models.

Per category (official script in brackets):

* color / shape / texture — BLIP-VQA [BLIPvqa_eval/BLIP_vqa.py]: split the prompt
  into noun phrases, ask BLIP "{phrase}?", take P(yes) = p_yes / (p_yes + p_no)
  from the answer decoder's first-token distribution, multiply over phrases
  (at most 8, the official ``np_num``).
* spatial — detector [UniDet_eval/2D_spatial_eval.py]: 0.25·s1 + 0.25·s2 +
  position/2 for the two objects, a lone object gives 0.25·s, anything < 0.5 → 0.
* numeracy — detector [UniDet_eval/numeracy_eval.py]: per object named with a
  number, +0.5 if detected and +0.5 if the count matches, averaged over objects.
* non_spatial — CLIPScore [CLIPScore_eval/CLIP_similarity.py]: the raw cosine of
  CLIP ViT-B/32 image and text embeddings (no 2.5 scale, no clamp).
* complex — 3-in-1 [3_in_1_eval/3_in_1.py]: BLIP-VQA with the spatial score for
  complex_val_spatial prompts, with CLIPScore (adjectives removed) for
  complex_val_action prompts, the mean of all three otherwise.
* 3d_spatial needs a depth model (official: UniDet + DPT); not scored here.

Differences from the official code, by necessity or on purpose:

* The detector is pluggable (Mask2Former on COCO's 80 classes for real images)
  instead of UniDet's unified ~700-class label space, so objects outside COCO
  (lamp, desk, key, ...) are never found and score 0. Detections below 0.5 are
  dropped, as UniDet's default confidence threshold does.
* spaCy is not a dependency. :func:`noun_phrases` is a small rule-based chunker
  (determiners open a phrase; prepositions, conjunctions, auxiliaries, a list of
  common verbs and punctuation close it). On the attribute-binding forms "a X Y
  and a Z W" it gives the same chunks as spaCy's noun_chunks; on long sentences it
  can keep a verb that spaCy would tag. Object heads are matched against the
  detector vocabulary (longest suffix, plural → singular, boy/girl/man/woman →
  person as officially, a few synonyms such as sofa → couch), instead of spaCy's
  first/last NOUN token.
* Spatial: 'on top of' is treated as 'on the top of' (the official function has
  no branch for it and scores it 0), relation words match on word boundaries
  (officially 'near' also matches inside 'nearby'), and the 150 px distance
  threshold is rescaled from UniDet's 479-480 px input to our image size. In
  complex prompts the two objects are the noun phrases right before and after
  the relation (the official 3-in-1 run takes the first and last noun).
* Numeracy: an unknown noun after a number word still counts as an expected
  object (never detected); the official substring renaming of detections
  ("dog" matching "hot dog") is not done; a prompt without countable objects
  scores 0 instead of dividing by zero.
* Complex CLIPScore removes a fixed list of attribute words instead of spaCy ADJ tokens.
* BLIP questions use the transformers BLIP convention (question starts with
  [CLS]); the original LAVIS code swaps in an [ENC] token.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .detection import Detection, Detector
from .detectors import GENEVAL_CLASSES, load_open_clip, resolve_weights, weights_error
from .layout import to_pil
from .prompts import GENEVAL_COLORS, T2I_COMPBENCH_CATEGORIES, complex_prompt_key

DEFAULT_BLIP_VQA = "Salesforce/blip-vqa-capfilt-large"  # official: BLIP model_base_vqa_capfilt_large
DEFAULT_CLIPSCORE = "ViT-B-32"  # official: OpenAI CLIP ViT-B/32
MAX_PHRASES = 8  # official BLIP_vqa.py --np_num
UNIDET_SCORE_THRESHOLD = 0.5  # UniDet's default --confidence-threshold in the official model bank

# ---------------------------------------------------------------- noun phrases

_NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
                 "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_DETERMINERS = set(_NUMBER_WORDS) | {"the", "this", "these", "those", "its", "their", "his", "her", "my",
                                     "our", "your", "some", "each", "every", "another", "several", "many"}
_PREPOSITIONS = {"of", "on", "in", "at", "by", "for", "with", "without", "from", "to", "into", "onto", "over",
                 "under", "above", "below", "beneath", "beside", "besides", "between", "behind", "near",
                 "next", "through", "across", "against", "along", "around", "among", "inside", "outside",
                 "past", "toward", "towards", "upon", "within", "like", "via", "during", "after", "before",
                 "than", "as", "atop", "underneath", "throughout"}
_CONJUNCTIONS = {"and", "or", "but", "nor", "so", "yet", "while", "whereas", "because", "although", "though",
                 "if", "when", "where", "which", "who", "whom", "whose", "that", "then"}
_AUX_AND_PRONOUNS = {"is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "do",
                     "does", "did", "can", "could", "will", "would", "should", "may", "might", "must",
                     "there", "it", "they", "he", "she", "we", "you", "i", "them", "other", "others",
                     "very", "nearby", "together", "up", "down", "out", "off", "away", "also", "not"}
# Verbs frequent in the val prompts; a heuristic stand-in for spaCy's POS tags.
_VERBS = {"sit", "sits", "sitting", "sat", "stand", "stands", "standing", "stood", "lie", "lies", "lying", "lay",
          "rest", "rests", "resting", "hang", "hangs", "hanging", "hung", "hold", "holds", "holding", "held",
          "display", "displays", "features", "feature", "contains", "contain", "containing", "contrasted",
          "contrasts", "provide", "provides", "serve", "serves", "release", "releases", "mix", "mixes", "boil",
          "boils", "stir", "stirs", "attract", "attracts", "illuminate", "illuminates", "measure", "measures",
          "supported", "supports", "zoomed", "cooked", "rolled", "dripped", "poured", "placed", "parked",
          "carried", "gathered", "floated", "lounged", "looking", "speaking", "making", "heading", "marveling",
          "nap", "naps", "kept", "shines", "shine", "telling", "reflecting", "covered", "filled", "made",
          "eating", "playing", "running", "walking", "flying", "riding", "reading", "drinking", "wearing",
          "sleeping", "swimming", "jumping", "watching", "waiting", "lies", "sits", "shows", "showing"}
_BREAK_WORDS = _PREPOSITIONS | _CONJUNCTIONS | _AUX_AND_PRONOUNS | _VERBS
_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*|[,.;:!?()\"]")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def noun_phrases(prompt: str) -> list[str]:
    """Rule-based noun chunks: 'a green bench and a blue bowl' → ['a green bench', 'a blue bowl']."""
    phrases: list[str] = []
    cur: list[str] = []

    def flush() -> None:
        if any(w not in _DETERMINERS for w in cur):
            phrases.append(" ".join(cur))
        cur.clear()

    for tok in _tokens(prompt):
        if not tok[0].isalnum() or tok in _BREAK_WORDS:
            flush()
        elif tok in _DETERMINERS:
            if any(w not in _DETERMINERS for w in cur):
                flush()
            cur.append(tok)
        else:
            cur.append(tok)
    flush()
    return phrases


def blip_questions(prompt: str, max_phrases: int = MAX_PHRASES) -> list[str]:
    """The official BLIP-VQA questions for a prompt: '{noun phrase}?' for its first ``max_phrases`` chunks."""
    return [f"{p}?" for p in noun_phrases(prompt)[:max_phrases]]


def blip_vqa_score(p_yes: Iterable[float]) -> float:
    """Product of P(yes) over the prompt's questions (1.0 without questions, as the official script)."""
    score = 1.0
    for p in p_yes:
        score *= float(p)
    return score


# ---------------------------------------------------------------- object vocabulary

#: Prompt words → detector class (GenEval/COCO names). boy/girl/man/woman → person, ship → boat and
#: telivision → tv are the official renames; the rest bridge COCO's names to everyday words.
OBJECT_SYNONYMS: dict[str, str] = {
    "boy": "person", "girl": "person", "man": "person", "woman": "person", "people": "person",
    "child": "person", "kid": "person", "baby": "person", "lady": "person", "guy": "person",
    "ship": "boat", "telivision": "tv", "television": "tv", "plane": "airplane", "aeroplane": "airplane",
    "motorbike": "motorcycle", "bike": "bicycle", "sofa": "couch", "table": "dining table",
    "mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
    "phone": "cell phone", "cellphone": "cell phone", "smartphone": "cell phone", "plant": "potted plant",
    "hair dryer": "hair drier", "ball": "sports ball", "doughnut": "donut", "bag": "handbag",
    "fridge": "refrigerator",
}
_IRREGULAR_PLURALS = {"people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
                      "geese": "goose", "feet": "foot", "teeth": "tooth", "knives": "knife", "leaves": "leaf",
                      "wolves": "wolf", "shelves": "shelf", "loaves": "loaf", "dice": "die", "oxen": "ox"}


def _singular_candidates(word: str) -> list[str]:
    cands = [word]
    if word in _IRREGULAR_PLURALS:
        cands.append(_IRREGULAR_PLURALS[word])
    if word.endswith("ies") and len(word) > 4:
        cands.append(word[:-3] + "y")
    if word.endswith("ves"):
        cands += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("es"):
        cands.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss"):
        cands.append(word[:-1])
    return cands


def singularize(word: str) -> str:
    """Default plural → singular when no vocabulary entry decides it."""
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes", "zes", "oes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def match_object(words: Sequence[str], vocab: Iterable[str]) -> str | None:
    """The detector class named by exactly these words (last one maybe plural), else None."""
    if not words:
        return None
    vocab = set(vocab)
    head = list(words[:-1])
    for last in _singular_candidates(words[-1]):
        phrase = " ".join(head + [last])
        if phrase in vocab:
            return phrase
        if phrase in OBJECT_SYNONYMS:
            return OBJECT_SYNONYMS[phrase]
    return None


def head_object(phrase: str, vocab: Iterable[str]) -> str | None:
    """Detector class of a noun phrase's head: longest matching suffix (3, 2, 1 words), else the bare singular noun."""
    words = [w for w in _tokens(phrase) if w[0].isalnum() and w not in _DETERMINERS]
    if not words:
        return None
    vocab = set(vocab)
    for n in (3, 2, 1):
        if len(words) >= n:
            hit = match_object(words[-n:], vocab)
            if hit is not None:
                return hit
    return singularize(words[-1])


def _vocab(detections: Iterable[Detection] = ()) -> set[str]:
    return set(GENEVAL_CLASSES) | {d.cls for d in detections}


# ---------------------------------------------------------------- spatial (2D)

#: Official relation vocabulary, searched in this order.
SPATIAL_RELATIONS = ("on side of", "next to", "near", "on the left of", "on the right of", "on the bottom of",
                     "on the top of", "on top of")


def find_relation(prompt: str) -> str | None:
    """First official relation phrase in the prompt; 'on top of' is read as 'on the top of'."""
    text = " ".join(_tokens(prompt))
    for rel in SPATIAL_RELATIONS:
        if re.search(rf"\b{re.escape(rel)}\b", text):
            return "on the top of" if rel == "on top of" else rel
    return None


def unidet_distance_threshold(height: int, width: int, pixels: float = 150.0) -> float:
    """The official 150 px 'near' threshold, measured on UniDet's input (short side 479, long side ≤ 480), in our pixels."""
    scale = min(479.0 / min(height, width), 480.0 / max(height, width))
    return pixels / scale


def determine_position(relation: str | None, box1: Sequence[float], box2: Sequence[float],
                       iou_threshold: float = 0.1, distance_threshold: float = 150.0) -> float:
    """Official soft position score of object 1 relative to object 2 (boxes x0, y0, x1, y1; y down)."""
    cx1, cy1 = (box1[0] + box1[2]) / 2, (box1[1] + box1[3]) / 2
    cx2, cy2 = (box2[0] + box2[2]) / 2, (box2[1] + box2[3]) / 2
    dx, dy = cx2 - cx1, cy2 - cy1
    ix = max(0.0, min(box1[2], box2[2]) - max(box1[0], box2[0]))
    iy = max(0.0, min(box1[3], box2[3]) - max(box1[1], box2[1]))
    inter = ix * iy
    union = (box1[2] - box1[0]) * (box1[3] - box1[1]) + (box2[2] - box2[0]) * (box2[3] - box2[1]) - inter
    iou = inter / union if union > 0 else 0.0

    def directional(along: float, across: float, right_sign: bool) -> float:
        if not right_sign or abs(along) <= abs(across):
            return 0.0
        return 1.0 if iou < iou_threshold else iou_threshold / iou

    if relation in ("next to", "on side of", "near"):
        if abs(dx) < distance_threshold or abs(dy) < distance_threshold:
            return 1.0
        return distance_threshold / max(abs(dx), abs(dy))
    if relation == "on the right of":
        return directional(dx, dy, dx < 0)
    if relation == "on the left of":
        return directional(dx, dy, dx > 0)
    if relation == "on the bottom of":
        return directional(dy, dx, dy < 0)
    if relation == "on the top of":
        return directional(dy, dx, dy > 0)
    return 0.0


def spatial_formula(relation: str | None, det1: Detection | None, det2: Detection | None,
                    distance_threshold: float = 150.0) -> float:
    """Official combination: both found → 0.25·s1 + 0.25·s2 + position/2; one → 0.25·s; below 0.5 → 0."""
    if det1 is not None and det2 is not None:
        score = 0.25 * det1.score + 0.25 * det2.score
        score += determine_position(relation, det1.box, det2.box, distance_threshold=distance_threshold) / 2
    elif det1 is not None:
        score = 0.25 * det1.score
    elif det2 is not None:
        score = 0.25 * det2.score
    else:
        score = 0.0
    return 0.0 if score < 0.5 else score


def spatial_objects(prompt: str, relation: str,
                    vocab: Iterable[str] = GENEVAL_CLASSES) -> tuple[str | None, str | None]:
    """Classes of the noun phrases right before and right after the relation phrase."""
    text = " ".join(_tokens(prompt))
    rel = "on top of" if relation == "on the top of" and "on the top of" not in text else relation
    m = re.search(rf"\b{re.escape(rel)}\b", text)
    if m is None:
        return None, None
    before, after = noun_phrases(text[:m.start()]), noun_phrases(text[m.end():])
    return (head_object(before[-1], vocab) if before else None,
            head_object(after[0], vocab) if after else None)


def _best_by_class(detections: Iterable[Detection], threshold: float) -> dict[str, Detection]:
    best: dict[str, Detection] = {}
    for d in detections:
        if d.score >= threshold and (d.cls not in best or d.score > best[d.cls].score):
            best[d.cls] = d
    return best


def spatial_score(prompt: str, detections: Sequence[Detection], image_size: tuple[int, int],
                  score_threshold: float = UNIDET_SCORE_THRESHOLD) -> float:
    """T2I-CompBench 2D-spatial score of one image; ``image_size`` is (H, W)."""
    relation = find_relation(prompt)
    if relation is None:
        return 0.0
    obj1, obj2 = spatial_objects(prompt, relation, _vocab(detections))
    best = _best_by_class(detections, score_threshold)
    return spatial_formula(relation, best.get(obj1) if obj1 else None, best.get(obj2) if obj2 else None,
                           unidet_distance_threshold(*image_size))


# ---------------------------------------------------------------- numeracy

def parse_numeracy(prompt: str, vocab: Iterable[str] = GENEVAL_CLASSES) -> list[tuple[str, int]]:
    """(class, count) for every object introduced by a number word: 'two dogs and a cat' → [('dog', 2), ('cat', 1)].

    Other number words always introduce an object; 'a'/'an' do when the next
    word(s) name a known class or the article heads an item of the enumeration
    (sentence start, after ',' or 'and'), so "a helicopter, two dogs" counts the
    helicopter but "gathered for a picnic" does not (officially an object list decides).
    """
    vocab = set(vocab)
    toks = _tokens(prompt)
    out: list[tuple[str, int]] = []
    for i, tok in enumerate(toks):
        n = _NUMBER_WORDS.get(tok, int(tok) if tok.isdigit() else None)
        if n is None or i + 1 >= len(toks) or not toks[i + 1][0].isalpha():
            continue
        obj = None
        if i + 2 < len(toks) and toks[i + 2][0].isalpha():
            obj = match_object(toks[i + 1:i + 3], vocab)
        if obj is None:
            obj = match_object(toks[i + 1:i + 2], vocab)
        listed = tok not in ("a", "an") or i == 0 or toks[i - 1] in (",", "and")
        if obj is None and listed:
            obj = singularize(toks[i + 1])
        if obj is not None:
            out.append((obj, n))
    return out


def same_object(box1: Sequence[float], box2: Sequence[float]) -> bool:
    """Official duplicate test (+1 pixel areas): IoU > 0.9 or either box 90% inside the other."""
    ix = max(0.0, min(box1[2], box2[2]) - max(box1[0], box2[0]) + 1)
    iy = max(0.0, min(box1[3], box2[3]) - max(box1[1], box2[1]) + 1)
    inter = ix * iy
    a1 = (box1[2] - box1[0] + 1) * (box1[3] - box1[1] + 1)
    a2 = (box2[2] - box2[0] + 1) * (box2[3] - box2[1] + 1)
    return inter / (a1 + a2 - inter) > 0.9 or inter / a1 > 0.9 or inter / a2 > 0.9


def dedup_detections(detections: Iterable[Detection]) -> list[Detection]:
    """Drop same-class detections that duplicate a higher-scored one."""
    kept: list[Detection] = []
    for d in sorted(detections, key=lambda d: -d.score):
        if not any(k.cls == d.cls and same_object(d.box, k.box) for k in kept):
            kept.append(d)
    return kept


def numeracy_formula(expected: Sequence[tuple[str, int]], counts: Counter) -> float:
    """Per expected object: +0.5 if any detected, +0.5 more if exactly as many; mean over objects."""
    if not expected:
        return 0.0
    w = 1.0 / len(expected)
    return sum(w * (0.5 * (counts[obj] > 0) + 0.5 * (counts[obj] > 0 and counts[obj] == n))
               for obj, n in expected)


def numeracy_score(prompt: str, detections: Sequence[Detection],
                   score_threshold: float = UNIDET_SCORE_THRESHOLD) -> float:
    kept = dedup_detections(d for d in detections if d.score >= score_threshold)
    return numeracy_formula(parse_numeracy(prompt, _vocab(detections)), Counter(d.cls for d in kept))


# ---------------------------------------------------------------- complex

ATTRIBUTE_WORDS = frozenset(GENEVAL_COLORS) | {
    "grey", "gray", "beige", "silver", "gold", "golden", "tan", "whitish", "cyan", "violet", "navy", "teal",
    "oblong", "teardrop", "pentagonal", "spherical", "cubic", "cylindrical", "round", "square", "conical",
    "oval", "rectangular", "triangular", "pyramidal", "hexagonal", "circular", "big", "small", "tall",
    "short", "large", "tiny", "long", "narrow", "plastic", "metallic", "rubber", "wooden", "fabric", "fluffy",
    "leather", "soft", "smooth", "rough", "fresh", "crisp", "shiny", "striped", "sticky", "tender", "old",
    "rusty", "heavy", "sweet", "crunchy", "silky", "cozy", "grand", "ancient", "intricate", "bright", "dark",
    "stainless", "checkered", "sloped", "spotted", "furry", "fuzzy", "glossy", "delicate", "warm", "cold"}


def strip_attributes(prompt: str) -> str:
    """Prompt without attribute adjectives, for the complex category's CLIPScore (official: drop spaCy ADJ)."""
    return " ".join(t for t in _tokens(prompt) if t not in ATTRIBUTE_WORDS)


def three_in_one(attribute: float, spatial: float, action: float, kind: str | None = None) -> float:
    """Official 3-in-1: (attr + spatial)/2 for 'spatial' prompts, (attr + action)/2 for 'action', else the mean of 3."""
    if kind == "spatial":
        return (attribute + spatial) / 2
    if kind == "action":
        return (attribute + action) / 2
    return (attribute + spatial + action) / 3


# ---------------------------------------------------------------- models

def _channels_first(images: torch.Tensor) -> list[torch.Tensor]:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    return list(images.detach().float().clamp(0, 1).cpu())


class BlipVqa:
    """BLIP VQA answering yes/no questions, as a probability (transformers BlipForQuestionAnswering)."""

    def __init__(self, path_or_id: str | os.PathLike = DEFAULT_BLIP_VQA, device: str | torch.device = "cpu",
                 batch_size: int = 16, option: str = "--blip"):
        source, _ = resolve_weights(path_or_id, "BLIP-VQA", option)  # before the slow import: fail fast
        from transformers import AutoProcessor, BlipForQuestionAnswering

        try:
            self.processor = AutoProcessor.from_pretrained(source)
            self.model = BlipForQuestionAnswering.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise weights_error("BLIP-VQA", source, option, e) from e
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        tok = self.processor.tokenizer
        self.yes_id, self.no_id = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
        if tok.unk_token_id in (self.yes_id, self.no_id):
            raise ValueError(f"BLIP tokenizer at '{source}' has no 'yes'/'no' tokens; is it a BLIP VQA model?")
        self.bos_id = self.model.config.text_config.bos_token_id

    @torch.no_grad()
    def prob_yes(self, images: torch.Tensor, questions: Sequence[Sequence[str]]) -> list[list[float]]:
        """P(yes) / (P(yes) + P(no)) of the first answer token, for each image's list of questions."""
        pixels = self.processor.image_processor(images=_channels_first(images), do_rescale=False,
                                                input_data_format="channels_first",
                                                return_tensors="pt")["pixel_values"]
        embeds = torch.cat([self.model.vision_model(pixel_values=pixels[i:i + self.batch_size].to(self.device))
                            .last_hidden_state for i in range(0, len(pixels), self.batch_size)])
        pairs = [(i, q) for i, qs in enumerate(questions) for q in qs]
        probs: list[float] = []
        tok = self.processor.tokenizer
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            enc = tok([q for _, q in chunk], padding="longest", truncation=True, max_length=35,
                      return_tensors="pt").to(self.device)
            img = embeds[torch.tensor([i for i, _ in chunk], device=self.device)]
            img_mask = torch.ones(img.shape[:-1], dtype=torch.long, device=self.device)
            q = self.model.text_encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                        encoder_hidden_states=img, encoder_attention_mask=img_mask).last_hidden_state
            bos = torch.full((len(chunk), 1), self.bos_id, dtype=torch.long, device=self.device)
            logits = self.model.text_decoder(input_ids=bos, encoder_hidden_states=q,
                                             encoder_attention_mask=enc["attention_mask"]).logits[:, 0, :]
            p = logits.float().softmax(dim=-1)
            probs += (p[:, self.yes_id] / (p[:, self.yes_id] + p[:, self.no_id])).tolist()
        out: list[list[float]] = [[] for _ in questions]
        for (i, _), p in zip(pairs, probs):
            out[i].append(p)
        return out


class ClipScorer:
    """CLIPScore as T2I-CompBench reports it: cosine of normalised image and text embeddings."""

    def __init__(self, model: str | os.PathLike = DEFAULT_CLIPSCORE, pretrained: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 32, option: str = "--clip"):
        self.device = torch.device(device)
        self.model, self.preprocess, self.tokenizer = load_open_clip(model, pretrained, self.device, option)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        imgs = _channels_first(images)
        if len(imgs) != len(texts):
            raise ValueError(f"{len(imgs)} images but {len(texts)} texts")
        sims = []
        for s in range(0, len(imgs), self.batch_size):
            pix = torch.stack([self.preprocess(to_pil(im)) for im in imgs[s:s + self.batch_size]]).to(self.device)
            fi = F.normalize(self.model.encode_image(pix).float(), dim=-1)
            ft = F.normalize(self.model.encode_text(self.tokenizer(list(texts[s:s + self.batch_size]))
                                                    .to(self.device)).float(), dim=-1)
            sims.append((fi * ft).sum(dim=-1).cpu())
        return torch.cat(sims) if sims else torch.zeros(0)


def _as_clip(clip, device):
    """A path becomes a ClipScorer (folder: open_clip local dir; file: ViT-B-32 weights); callables pass through."""
    if not isinstance(clip, (str, os.PathLike)):
        return clip
    p = Path(str(clip)).expanduser()
    if p.is_dir():
        return ClipScorer(model=p, device=device)
    return ClipScorer(DEFAULT_CLIPSCORE, pretrained=clip, device=device)


_NEEDS = {"color": {"blip"}, "shape": {"blip"}, "texture": {"blip"}, "spatial": {"detector"},
          "numeracy": {"detector"}, "non_spatial": {"clip"}, "complex": {"blip", "detector", "clip"}}
_OPTION = {"blip": "--blip PATH (a BLIP VQA model folder)", "detector": "--detector PATH (a Mask2Former folder)",
           "clip": "--clip PATH (open_clip ViT-B-32 weights)"}


class T2ICompBenchScorer:
    """Score a batch of images against their prompts for one T2I-CompBench category.

    ``complex_kinds`` maps :func:`~maskfocus_cli.bench.prompts.complex_prompt_key`
    to 'spatial' / 'action' (see ``load_complex_kinds``); prompts not in it get the
    three-way mean.
    """

    def __init__(self, category: str, blip_path: BlipVqa | str | os.PathLike | None = None,
                 detector: Detector | None = None, clip: ClipScorer | str | os.PathLike | None = None,
                 complex_kinds: dict[str, str] | None = None, device: str | torch.device = "cpu",
                 detector_threshold: float = UNIDET_SCORE_THRESHOLD, max_phrases: int = MAX_PHRASES):
        if category == "3d_spatial":
            raise ValueError("T2I-CompBench 3d_spatial needs a depth model and is not scored; choose another "
                             "--category")
        if category not in _NEEDS:
            raise ValueError(f"unknown T2I-CompBench category {category!r}; choose one of "
                             f"{', '.join(c for c in T2I_COMPBENCH_CATEGORIES if c != '3d_spatial')}")
        have = {"blip": blip_path is not None, "detector": detector is not None, "clip": clip is not None}
        missing = [k for k in sorted(_NEEDS[category]) if not have[k]]
        if missing:
            raise ValueError(f"T2I-CompBench '{category}' needs " + " and ".join(_OPTION[k] for k in missing))
        self.category = category
        # Paths are loaded here; anything else is used as is (a BlipVqa, or any object with prob_yes).
        self.blip = BlipVqa(blip_path, device=device) if isinstance(blip_path, (str, os.PathLike)) else blip_path
        self.detector = detector
        self.clip = _as_clip(clip, device)
        self.complex_kinds = complex_kinds or {}
        self.detector_threshold = detector_threshold
        self.max_phrases = max_phrases

    def _blip_scores(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        questions = [blip_questions(p, self.max_phrases) for p in prompts]
        return [blip_vqa_score(ps) for ps in self.blip.prob_yes(images, questions)]

    def _spatial_scores(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        size = tuple(images.shape[-2:])
        dets = self.detector.detect(images)
        return [spatial_score(p, d, size, self.detector_threshold) for p, d in zip(prompts, dets)]

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        """One score per image (images (B, 3, H, W) in [0, 1], prompts aligned with them)."""
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        c = self.category
        if c in ("color", "shape", "texture"):
            return self._blip_scores(images, prompts)
        if c == "spatial":
            return self._spatial_scores(images, prompts)
        if c == "numeracy":
            dets = self.detector.detect(images)
            return [numeracy_score(p, d, self.detector_threshold) for p, d in zip(prompts, dets)]
        if c == "non_spatial":
            return self.clip(images, list(prompts)).tolist()
        attr = self._blip_scores(images, prompts)
        spatial = self._spatial_scores(images, prompts)
        action = self.clip(images, [strip_attributes(p) for p in prompts]).tolist()
        return [three_in_one(a, s, x, self.complex_kinds.get(complex_prompt_key(p)))
                for a, s, x, p in zip(attr, spatial, action, prompts)]


def build_scorers(categories: list[str], blip_path: str, detector_path: str, clip: str, clip_arch: str,
                 device: str, complex_spatial: str | None, complex_action: str | None) -> dict:
    """One scorer per category; each model (BLIP, Mask2Former, CLIP) is loaded once and shared, and only the
    models the categories need are loaded."""
    needs = set().union(*(_NEEDS[c] for c in categories))
    blip = BlipVqa(blip_path, device=device) if "blip" in needs else None
    det = None
    if "detector" in needs:
        from maskfocus_cli.bench.detectors import Mask2FormerDetector
        det = Mask2FormerDetector(detector_path, device=device, score_threshold=0.3)
    scorer_clip = None
    if "clip" in needs:
        p = Path(str(clip)).expanduser()
        scorer_clip = ClipScorer(p, device=device) if p.is_dir() else ClipScorer(clip_arch, pretrained=clip,
                                                                                 device=device)
    kinds = None
    if "complex" in categories:
        from maskfocus_cli.bench.prompts import load_complex_kinds
        kinds = load_complex_kinds(complex_spatial, complex_action)
    return {c: T2ICompBenchScorer(c, blip_path=blip, detector=det, clip=scorer_clip, complex_kinds=kinds,
                                  device=device) for c in categories}
