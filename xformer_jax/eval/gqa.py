"""GQA accuracy with the structural / semantic breakdown of the official GQA eval script.

The official script scores exact string equality over the balanced questions. It was
written for classifiers that output one of GQA's (lowercase, unpunctuated) answers; a
generative model says "Yes." or "the table", so by default both sides first go through the
VQA answer normalisation, as BLIP-2's (LAVIS) GQA evaluation does. `normalize=False` gives
the official script's plain comparison.
"""
from collections.abc import Mapping

from xformer_jax.eval.vqa import normalize_answer


def _percent(scores: list[float]) -> float:
    """Mean in percent, rounded to the 2 decimals the official script prints."""
    return round(100.0 * sum(scores) / len(scores), 2)


def gqa_accuracy(predictions: Mapping[str, str], questions: Mapping[str, Mapping],
                 normalize: bool = True) -> dict:
    """Accuracy in percent (2 decimals): overall, binary / open, per structural and semantic type.

    `questions` is GQA's balanced questions JSON (question id -> {"answer", "types": {...},
    "isBalanced"}); questions marked isBalanced false are not scored, as in the official
    script. `predictions` maps every question id to the predicted answer. "open" are the
    `query` questions, "binary" all others (yes/no and two-way choices).
    """
    overall: list[float] = []
    by_answer_kind: dict[str, list[float]] = {}
    per_structural: dict[str, list[float]] = {}
    per_semantic: dict[str, list[float]] = {}
    for question_id, question in questions.items():
        if not question.get("isBalanced", True):
            continue
        predicted, gold = predictions[question_id], question["answer"]
        if normalize:
            predicted, gold = normalize_answer(predicted), normalize_answer(gold)
        score = 1.0 if predicted == gold else 0.0
        structural = question["types"]["structural"]
        overall.append(score)
        by_answer_kind.setdefault("open" if structural == "query" else "binary", []).append(score)
        per_structural.setdefault(structural, []).append(score)
        per_semantic.setdefault(question["types"]["semantic"], []).append(score)
    if not overall:
        raise ValueError("no balanced GQA question to score")
    return {
        "accuracy": _percent(overall),
        **{kind: _percent(scores) for kind, scores in sorted(by_answer_kind.items())},
        "per_structural_type": {name: _percent(s) for name, s in per_structural.items()},
        "per_semantic_type": {name: _percent(s) for name, s in per_semantic.items()},
        "num_questions": len(overall),
    }
