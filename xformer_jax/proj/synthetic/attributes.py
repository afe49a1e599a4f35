"""Does a generated caption of a synthetic scene name what is in it? CIDEr rewards the frequent phrases;
this checks the facts.

A caption's object phrases ("three small red circles", "a blue square") are parsed into (count,
colour, shape). For every group of the scene three facts are checked: its colour is named (by any
phrase), its colour is named with its shape, and that phrase's number is its count. The score is the
percentage of facts right over all groups of all scenes; `precision` is the percentage of parsed
phrases that name a (colour, shape) group of the scene with its count.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from xformer_jax.data import synthetic

FACTS = ("colour", "shape", "count")
_NUMBERS = {"a": 1, "an": 1, **{word: n for n, word in enumerate(synthetic.NUMBER_WORDS)}}
_PHRASE = re.compile(r"\b({})\s+(?:(?:small|large)\s+)?({})\s+({})s?\b".format(
    "|".join(_NUMBERS), "|".join(synthetic.PALETTE), "|".join(synthetic.SHAPES)))


def parse(caption: str) -> list[tuple[int, str, str]]:
    """(count, colour, shape) of every object phrase in the caption, in order."""
    return [(_NUMBERS[n], colour, shape) for n, colour, shape in _PHRASE.findall(caption.lower())]


def caption_facts(caption: str, scene: synthetic.Scene) -> tuple[dict[str, list[bool]], list[bool]]:
    """({fact: [right per group]}, [right per parsed phrase]) for one caption of one scene."""
    phrases = parse(caption)
    named = {(colour, shape): count for count, colour, shape in phrases}
    colours = {colour for _, colour, _ in phrases}
    facts = {fact: [] for fact in FACTS}
    for group in scene.groups:
        facts["colour"].append(group.color in colours)
        facts["shape"].append((group.color, group.shape) in named)
        facts["count"].append(named.get((group.color, group.shape)) == group.count)
    truth = {(g.color, g.shape): g.count for g in scene.groups}
    return facts, [truth.get((colour, shape)) == count for count, colour, shape in phrases]


def attribute_scores(captions: Sequence[str], scenes: Sequence[synthetic.Scene]) -> dict[str, float]:
    """Percent of facts right per kind, over all groups ("score": all facts), and phrase precision."""
    facts, precise = {fact: [] for fact in FACTS}, []
    for caption, scene in zip(captions, scenes, strict=True):
        per_group, per_phrase = caption_facts(caption, scene)
        for fact in FACTS:
            facts[fact] += per_group[fact]
        precise += per_phrase
    scores = {fact: 100 * float(np.mean(values)) for fact, values in facts.items()}
    scores["score"] = float(np.mean([scores[fact] for fact in FACTS]))
    scores["precision"] = 100 * float(np.mean(precise)) if precise else 0.0
    return scores


def best_constant_caption(candidates: Sequence[str], scenes: Sequence[synthetic.Scene]) -> str:
    """The candidate caption that, given to every scene, scores highest: what a blind model can reach."""
    return max(candidates, key=lambda c: attribute_scores([c] * len(scenes), scenes)["score"])
