"""One home per benchmark: read its files as their publishers ship them, predict with a trained run, write the
official submission file, and score it by the official rules (`eval.score`) when the answers are given.
launch/evaluate.py and the demo's recipe both run these.

  VQAv2 / OK-VQA  questions: the official file {"data_subtype", "questions": [{"question_id", "question",
                  "image_id"}]} (image <subset>/COCO_<subset>_<image_id:012d>.jpg under the image root, the
                  test sets' in test2015/; or an image pattern), or LAVIS's [{"question_id", "question", "image"}];
                  answers: the official {"annotations": [...]}. Submission [{"question_id", "answer"}].
  GQA             a balanced questions file {question_id: {"imageId", "question", "answer"?, "types"?}}, image
                  <imageId>.jpg (or a pattern); scored when its questions carry answers. Submission
                  [{"questionId", "prediction"}].
  Counting        [{"question_id", "question", "image", "count"}] (GVTBench-style); answers scored by the first
                  number in them. Submission [{"question_id", "answer"}].
  Captioning      COCO (Karpathy) splits as LAVIS ships them ([{"image", "caption": [...], "image_id"?}]) or in
                  the COCO captions format ({"images": [{"id", "file_name"}], "annotations": [{"image_id",
                  "caption"}]}; a test set's image_info file has no annotations); scored against a COCO
                  ground-truth file, or else the captions the file itself carries, if any. Submission
                  [{"image_id", "caption"}].
  Retrieval       Flickr30k / COCO splits as LAVIS ships them, one entry per image [{"image", "caption":
                  [captions]}]; ranked by `predict.rankings`.
"""
import dataclasses
import re
from typing import Optional, Sequence

from xformer_jax import storage
from xformer_jax.data.records import numeric_id
from xformer_jax.data.transforms import clean_question
from xformer_jax.eval.score import score
from xformer_jax.predict.captions import CAPTION_PROMPT, VQA_PROMPT, Captioner, generate_texts

PREDICTIONS, SCORES, GROUND_TRUTH = "predictions.json", "scores.json", "ground_truth.json"


@dataclasses.dataclass(frozen=True)
class Question:
    question_id: object
    question: str
    image: str  # the image file's full path


def read_vqa(path: str, image_root: str, image_pattern: str = "") -> list[Question]:
    """The questions of an official VQAv2 / OK-VQA questions file or a LAVIS question list."""
    data = _read(path)
    if isinstance(data, dict) and isinstance(data.get("questions"), list):
        pattern = image_pattern or _coco_pattern(data.get("data_subtype", ""), path)
        return [Question(q["question_id"], q["question"], storage.join(image_root, pattern.format(q["image_id"])))
                for q in _entries(data["questions"], ("question_id", "question", "image_id"), path)]
    if isinstance(data, list):
        return [Question(q["question_id"], q["question"], storage.join(image_root, q["image"]))
                for q in _entries(data, ("question_id", "question", "image"), path)]
    raise ValueError(f"{path}: neither an official VQA questions file ({{'questions': [...]}}) nor a LAVIS list of "
                     "questions ([{'question_id', 'question', 'image'}])")


def read_gqa(path: str, image_root: str, image_pattern: str = "{}.jpg") -> tuple[list[Question], bool]:
    """(the questions of a GQA balanced questions file, whether every one carries its answer)."""
    data = _read(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected GQA's questions JSON, an object mapping question ids to questions")
    for question_id, question in data.items():
        missing = [k for k in ("imageId", "question") if not isinstance(question, dict) or k not in question]
        if missing:
            raise ValueError(f"{path}: question {question_id!r} has no {missing[0]!r}")
    questions = [Question(i, q["question"], storage.join(image_root, image_pattern.format(q["imageId"])))
                 for i, q in data.items()]
    return questions, all("answer" in q for q in data.values())


def read_count(path: str, image_root: str) -> list[Question]:
    return [Question(q["question_id"], q["question"], storage.join(image_root, q["image"]))
            for q in _entries(_read(path), ("question_id", "question", "image", "count"), path)]


def read_captions(path: str, image_root: str) -> tuple[list[dict], Optional[dict]]:
    """([{"image": full path, "image_id"}] one per image, the ground truth in the COCO captions format or None)
    of a LAVIS caption split or a COCO captions file."""
    data = _read(path)
    if isinstance(data, dict) and "images" in data:  # COCO's format; test sets (image_info_*) have no annotations
        images = [{"image": storage.join(image_root, im["file_name"]), "image_id": im["id"]}
                  for im in _entries(data["images"], ("id", "file_name"), path)]
        return images, data if data.get("annotations") else None
    entries = _entries(data, ("image",), path)
    images, truth = {}, []
    for entry in entries:
        image_id = entry.get("image_id")
        image_id = numeric_id(image_id, re.sub(r"\.\w+$", "", storage.basename(entry["image"])),
                              fallback=len(images))
        images.setdefault(entry["image"], {"image": storage.join(image_root, entry["image"]), "image_id": image_id})
        captions = entry.get("caption", [])
        truth += [{"image_id": image_id, "caption": c} for c in ([captions] if isinstance(captions, str) else captions)]
    ground_truth = {"images": [{"id": im["image_id"]} for im in images.values()], "annotations": truth}
    return list(images.values()), ground_truth if truth else None


def read_retrieval(path: str) -> list[dict]:
    """The entries of a LAVIS retrieval split (image paths relative to the image root, as `rank_captions` reads)."""
    return _entries(_read(path), ("image", "caption"), path)


def answer(captioner: Captioner, questions: Sequence[Question], batch_size: int, prompt: str = VQA_PROMPT,
           clean: bool = True) -> list[str]:
    """The run's answers, with BLIP-2's zero-shot prompt; questions cleaned as LAVIS's question processor does
    unless `clean` is False."""
    texts = [clean_question(q.question) if clean else q.question for q in questions]
    return generate_texts(captioner, [q.image for q in questions], [prompt.format(t) for t in texts], batch_size)


# The official result file's keys of each question benchmark: (question id, answer).
RESULT_KEYS = {"vqav2": ("question_id", "answer"), "okvqa": ("question_id", "answer"),
               "gqa": ("questionId", "prediction"), "gvt_count": ("question_id", "answer")}


def answer_questions(captioner: Captioner, questions: Sequence[Question], out: str, batch_size: int, *, task: str,
                     annotations: str = "", questions_file: str = "", prompt: str = VQA_PROMPT, clean: bool = True,
                     files: tuple[str, str] = (PREDICTIONS, SCORES)) -> dict:
    """VQAv2 / OK-VQA / GQA / counting (`task`, RESULT_KEYS): OUT/predictions.json in the benchmark's result
    format, and its scores (OUT/scores.json) when `annotations` is given (GQA and counting: their questions
    file, which carries the answers). With `questions_file` the VQA scorer checks that the questions and
    annotations cover the same question ids. `files`: the names of the two files ("" writes no scores file)."""
    answers = answer(captioner, questions, batch_size, prompt, clean)
    id_key, answer_key = RESULT_KEYS[task]
    path = _write(out, files[0], [{id_key: q.question_id, answer_key: a} for q, a in zip(questions, answers)])
    if not annotations:
        return {"task": task, "predictions": path, "num_questions": len(questions)}
    return _scores(out, files[1], score(task, path, annotations, questions_file or None))


def caption(captioner: Captioner, images: Sequence[dict], out: str, batch_size: int, *, annotations: str = "",
            ground_truth: Optional[dict] = None, files: tuple[str, str] = (PREDICTIONS, SCORES)) -> dict:
    """COCO captioning with the "a photo of" prompt: OUT/predictions.json (the text after the prompt, as LAVIS
    scores BLIP-2's captions) and, against `annotations` or else `ground_truth` (written to
    OUT/ground_truth.json), CIDEr-D and BLEU-4. `files` as `answer_questions`'s."""
    texts = generate_texts(captioner, [e["image"] for e in images], [CAPTION_PROMPT] * len(images), batch_size)
    path = _write(out, files[0], [{"image_id": e["image_id"], "caption": t} for e, t in zip(images, texts)])
    if not annotations and ground_truth is None:
        return {"task": "coco_caption", "predictions": path, "num_images": len(images)}
    truth = annotations or _write(out, GROUND_TRUTH, ground_truth)
    return _scores(out, files[1], score("coco_caption", path, truth))


def _coco_pattern(subset: str, path: str) -> str:
    """COCO's image file of a VQA questions file's data_subtype: val2014/COCO_val2014_000000000042.jpg; the
    test sets (test2015, test-dev2015) use the test2015 images."""
    if not subset:
        raise ValueError(f"{path}: the questions file has no data_subtype to find its COCO images by: "
                         "give --image_pattern")
    folder = "test2015" if subset.startswith("test") else subset
    return f"{folder}/COCO_{folder}_{{:012d}}.jpg"


def _read(path: str):
    if not storage.isfile(path):
        raise FileNotFoundError(f"{path} not found")
    try:
        return storage.read_json(path)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def _entries(entries, keys: tuple, path: str) -> list:
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of objects with {keys}")
    for index, entry in enumerate(entries):
        missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise ValueError(f"{path}: entry {index} has no {missing[0]!r}")
    return entries


def _write(out: str, name: str, data) -> str:
    return storage.write_json(storage.join(out, name), data)


def _scores(out: str, name: str, scores: dict) -> dict:
    if name:
        storage.write_json(storage.join(out, name), scores, indent=2)
    return scores
