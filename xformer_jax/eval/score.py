"""Score a predictions file against a benchmark's official annotation files.

`score(task, predictions_path, annotations_path, questions_path=None)` returns a JSON-able
dict with the headline figure (`accuracy` in percent, 2 decimals; or `CIDEr` and `Bleu_4`)
and the breakdowns. File formats per task:

  vqav2, okvqa   predictions [{"question_id", "answer"}] (the official result format);
                 annotations {"annotations": [{"question_id", "question_type", "answer_type",
                 "answers": [{"answer"}, ...]}]}; optional questions {"questions":
                 [{"question_id", ...}]}, which must cover the same question ids. okvqa
                 lemmatises each predicted answer first (eval/lemmatize.py), as BLIP-2 does,
                 since OK-VQA's ground-truth answers are lemmatised.
  gqa            predictions [{"questionId", "prediction"}]; annotations: GQA's balanced
                 questions JSON {question_id: {"answer", "types": {"structural",
                 "semantic"}, ...}}. Ids compare as strings.
  coco_caption   predictions [{"image_id", "caption"}]; annotations: COCO ground truth
                 {"annotations": [{"image_id", "caption"}]}. `CIDEr` (CIDEr-D) and `Bleu_4`
                 are x100, the scale of the BLIP-2 paper tables (pycocoevalcap prints
                 fractions: 1.458 there is 145.8 here).
  gvt_count      predictions [{"question_id", "answer"}] (free-form answers); annotations
                 [{"question_id", "count"}] with a non-negative integer count.

Every prediction must belong to the annotations and every annotated question (image) must
have exactly one prediction, as the official tools require; anything else raises ValueError
naming the file and the offending key or id.
"""
from collections.abc import Hashable
import json

from xformer_jax import storage
from xformer_jax.eval.caption import caption_scores
from xformer_jax.eval.counting import counting_accuracy
from xformer_jax.eval.gqa import gqa_accuracy
from xformer_jax.eval.lemmatize import lemmatize_answer
from xformer_jax.eval.vqa import normalize_answer, vqa_accuracy

TASKS = ("vqav2", "okvqa", "gqa", "coco_caption", "gvt_count")
_SHOWN_IDS = 5


def _load_json(path: str, role: str):
    """Parsed JSON of `path`; a missing or malformed file is a ValueError naming it."""
    if not storage.isfile(path):
        raise ValueError(f"{role} file not found: {path}")
    try:
        return storage.read_json(path)
    except json.JSONDecodeError as error:
        raise ValueError(f"{role} file {path} is not valid JSON: {error}") from None


def _entries(data, path: str, key: str | None, fields: tuple[str, ...]) -> list[dict]:
    """The list of objects at data[key] (or data itself), each checked to have `fields`."""
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise ValueError(f"{path}: expected a JSON object holding the list '{key}'")
        data = data[key]
    where = f"'{key}'" if key is not None else "the top level"
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of objects with {fields} at {where}")
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry {index} of {where} is not an object")
        for field in fields:
            if field not in entry:
                raise ValueError(f"{path}: entry {index} of {where} has no '{field}'")
    return data


def _by_id(entries: list[dict], id_key: str, value_key: str, path: str,
           id_type=None) -> dict[Hashable, object]:
    """Map id -> text value, refusing duplicate ids (one prediction per question or image)."""
    mapping = {}
    for entry in entries:
        entry_id = id_type(entry[id_key]) if id_type else entry[id_key]
        if entry_id in mapping:
            raise ValueError(f"{path}: {id_key} {entry_id!r} appears more than once")
        if not isinstance(entry[value_key], str):
            raise ValueError(f"{path}: {id_key} {entry_id!r} has {value_key} "
                             f"{entry[value_key]!r}, not a string")
        mapping[entry_id] = entry[value_key]
    return mapping


def _check_same_ids(predicted: dict, expected, id_key: str, predictions_path: str,
                    annotations_path: str) -> None:
    """Predictions must cover exactly the annotated ids, as the official tools assert."""
    if not expected:
        raise ValueError(f"{annotations_path}: no {id_key} to score")
    unknown = [entry_id for entry_id in predicted if entry_id not in expected]
    if unknown:
        raise ValueError(f"{predictions_path}: {len(unknown)} prediction(s) for {id_key} not in "
                         f"{annotations_path}, e.g. {unknown[:_SHOWN_IDS]}")
    missing = [entry_id for entry_id in expected if entry_id not in predicted]
    if missing:
        raise ValueError(f"{predictions_path}: no prediction for {len(missing)} {id_key}(s) of "
                         f"{annotations_path}, e.g. {missing[:_SHOWN_IDS]}")


def _score_vqa(predictions_path, annotations_path, questions_path, lemmatize: bool = False) -> dict:
    predictions = _by_id(
        _entries(_load_json(predictions_path, "predictions"), predictions_path, None,
                 ("question_id", "answer")),
        "question_id", "answer", predictions_path)
    annotations = _entries(
        _load_json(annotations_path, "annotations"), annotations_path, "annotations",
        ("question_id", "question_type", "answer_type", "answers"))
    for annotation in annotations:
        answers = annotation["answers"]
        if not answers or not all(isinstance(a, dict) and "answer" in a for a in answers):
            raise ValueError(f"{annotations_path}: question_id {annotation['question_id']} needs "
                             "a non-empty 'answers' list of {'answer': ...} objects")
    annotated_ids = {annotation["question_id"] for annotation in annotations}
    if questions_path is not None:
        questions = _entries(_load_json(questions_path, "questions"), questions_path,
                             "questions", ("question_id",))
        question_ids = {question["question_id"] for question in questions}
        if question_ids != annotated_ids:
            stray = sorted(question_ids ^ annotated_ids, key=str)[:_SHOWN_IDS]
            raise ValueError(f"{questions_path} and {annotations_path} cover different "
                             f"question_ids, e.g. {stray}")
    _check_same_ids(predictions, annotated_ids, "question_id", predictions_path,
                    annotations_path)
    if lemmatize:
        # After the official normalisation, so that punctuation never hides a plural ("dogs." -> "dog").
        predictions = {question_id: lemmatize_answer(normalize_answer(answer))
                       for question_id, answer in predictions.items()}
    return vqa_accuracy(predictions, annotations)


def _score_gqa(predictions_path, annotations_path) -> dict:
    predictions = _by_id(
        _entries(_load_json(predictions_path, "predictions"), predictions_path, None,
                 ("questionId", "prediction")),
        "questionId", "prediction", predictions_path, id_type=str)
    questions = _load_json(annotations_path, "annotations")
    if not isinstance(questions, dict):
        raise ValueError(f"{annotations_path}: expected GQA's questions JSON, an object "
                         "mapping question ids to questions")
    for question_id, question in questions.items():
        types = question.get("types") if isinstance(question, dict) else None
        if (not isinstance(types, dict) or "answer" not in question
                or "structural" not in types or "semantic" not in types):
            raise ValueError(f"{annotations_path}: question {question_id!r} needs 'answer' "
                             "and 'types' with 'structural' and 'semantic'")
    _check_same_ids(predictions, questions, "questionId", predictions_path, annotations_path)
    return gqa_accuracy(predictions, questions)


def _score_caption(predictions_path, annotations_path) -> dict:
    predictions = _by_id(
        _entries(_load_json(predictions_path, "predictions"), predictions_path, None,
                 ("image_id", "caption")),
        "image_id", "caption", predictions_path)
    references: dict[Hashable, list[str]] = {}
    for annotation in _entries(_load_json(annotations_path, "annotations"), annotations_path,
                               "annotations", ("image_id", "caption")):
        if not isinstance(annotation["caption"], str):
            raise ValueError(f"{annotations_path}: image_id {annotation['image_id']!r} has "
                             f"caption {annotation['caption']!r}, not a string")
        references.setdefault(annotation["image_id"], []).append(annotation["caption"])
    _check_same_ids(predictions, references, "image_id", predictions_path, annotations_path)
    return caption_scores(predictions, references)


def _score_count(predictions_path, annotations_path) -> dict:
    predictions = _by_id(
        _entries(_load_json(predictions_path, "predictions"), predictions_path, None,
                 ("question_id", "answer")),
        "question_id", "answer", predictions_path)
    counts = {}
    for entry in _entries(_load_json(annotations_path, "annotations"), annotations_path, None,
                          ("question_id", "count")):
        question_id, count = entry["question_id"], entry["count"]
        if question_id in counts:
            raise ValueError(f"{annotations_path}: question_id {question_id!r} appears more "
                             "than once")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"{annotations_path}: question_id {question_id!r} has count "
                             f"{count!r}, not a non-negative integer")
        counts[question_id] = count
    _check_same_ids(predictions, counts, "question_id", predictions_path, annotations_path)
    return counting_accuracy(predictions, counts)


def score(task: str, predictions_path: str, annotations_path: str,
          questions_path: str | None = None) -> dict:
    """Score `predictions_path` for `task` (one of TASKS); see the module docstring for formats."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if questions_path is not None and task not in ("vqav2", "okvqa"):
        raise ValueError(f"task {task!r} takes no questions file (got {questions_path})")
    if task in ("vqav2", "okvqa"):
        result = _score_vqa(predictions_path, annotations_path, questions_path, lemmatize=task == "okvqa")
    elif task == "gqa":
        result = _score_gqa(predictions_path, annotations_path)
    elif task == "coco_caption":
        result = _score_caption(predictions_path, annotations_path)
    else:
        result = _score_count(predictions_path, annotations_path)
    return {"task": task, **result}
