"""Evaluate a trained run, or score an existing predictions file, as the official tools do.

  launch/evaluate.py vqa --workdir=W --questions=LAVIS_Q.json --image_root=R --annotations=A.json \\
      --out=DIR [--task=vqav2|okvqa]               # zero-shot VQAv2 / OK-VQA
  launch/evaluate.py gqa --workdir=W --questions=GQA_QUESTIONS.json --image_root=R --out=DIR \\
      [--image_pattern={}.jpg]                     # zero-shot GQA (e.g. testdev_balanced_questions.json)
  launch/evaluate.py count --workdir=W --questions=COUNT.json --image_root=R --out=DIR
                                                   # GVTBench-style object counting
  launch/evaluate.py caption --workdir=W --images=LAVIS_CAPTIONS.json --image_root=R --annotations=GT.json \\
      --out=DIR                                    # captioning with the prompt "a photo of"
  launch/evaluate.py retrieval --workdir=W --images=LAVIS_CAPTIONS.json --image_root=R --out=DIR \\
      [--k_test=128]                               # image-text retrieval of a stage-1 run
  launch/evaluate.py score --task=vqav2|okvqa|gqa|coco_caption|gvt_count --predictions=P --annotations=A \\
      [--questions=Q]

Every run mode writes DIR/scores.json and prints the scores as one JSON object (accuracy / CIDEr /
recall in percent). The question modes (vqa, gqa, count) run a stage-2 run with BLIP-2's zero-shot
settings (LAVIS's blip2 VQA / GQA eval configs and blip2_opt.predict_answers): questions cleaned as
LAVIS's question processor does (lowercase, its punctuation dropped; --no-clean_questions keeps them
as written), the prompt "Question: {} Short answer:", beam search with 5 beams, 1 to 10 new tokens,
length penalty 0. `caption` uses LAVIS's COCO caption eval settings: beam 5, 8 to 30 new tokens, the
"a photo of" prompt. OK-VQA (`vqa --task=okvqa`) lemmatises the predicted answers before scoring, as
BLIP-2 does (xformer_jax/eval/lemmatize.py). They write DIR/predictions.json in the task's official
result format. Inputs:
  vqa        LAVIS questions [{"question_id", "question", "image"}] + VQAv2 annotations (--annotations)
  gqa        GQA's questions JSON {question_id: {"imageId", "question", "answer", "types"}}; the image of
             a question is --image_root / --image_pattern with {} replaced by its imageId
  count      [{"question_id", "question", "image", "count"}], also the annotations of `score
             --task=gvt_count`; predictions are free-form answers, scored by the first number in them
  caption    LAVIS caption file [{"image", "image_id"}] + COCO ground truth (--annotations)
  retrieval  LAVIS caption file, one entry per image: [{"image", "caption": [captions]}]; R@1/5/10 both
             ways from ITC with ITM re-ranking of each query's top --k_test (LAVIS compute_sim_matrix),
             the ITC-only recall under "itc", and DIR/rankings.json with every query's top 10
Image paths are relative to --image_root. The synthetic benchmark ships every one of these files
(`xformer_jax.data.synthetic`; its GQA images: --image_root=DATA/images/SPLIT --image_pattern={}.png).
"""
import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from xformer_jax import script_args, storage  # noqa: E402

QUESTION_MODES = ("vqa", "gqa", "count")
_TOP_RANKED = 10  # candidates per query written to rankings.json


def _load(path: str, flag: str):
    if not storage.isfile(path):
        raise SystemExit(f"{flag}: {path} not found")
    try:
        return storage.read_json(path)
    except ValueError as e:
        raise SystemExit(f"{flag}: {path} is not valid JSON ({e})") from None


def _require(entries, keys: tuple, path: str) -> None:
    """A list of objects with `keys`, or SystemExit naming the file, the entry and the key."""
    if not isinstance(entries, list):
        raise SystemExit(f"{path}: expected a list of objects with {keys}")
    for index, entry in enumerate(entries):
        missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise SystemExit(f"{path}: entry {index} has no {missing[0]!r}")


def _write_json(out: str, name: str, data, indent=None) -> str:
    return storage.write_json(storage.join(out, name), data, indent=indent)


def _image(args, name: str) -> str:
    return storage.join(args.image_root, name)


def _write_scores(out: str, scores: dict) -> None:
    _write_json(out, "scores.json", scores, indent=2)
    print(json.dumps(scores))


def _captioner(args):
    """The stage-2 run of --workdir with the decoding settings of the flags."""
    from xformer_jax.predict.captions import Captioner
    return Captioner.from_workdir(args.workdir, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                                  min_new_tokens=args.min_new_tokens, length_penalty=args.length_penalty)


def _answers(args, questions: list[str], image_paths: list[str]) -> list[str]:
    """The stage-2 run's answers (`predict.captions.generate_texts`) to the questions, cleaned unless
    --no-clean_questions, in --prompt."""
    from xformer_jax.data.transforms import clean_question
    from xformer_jax.predict.captions import generate_texts
    if args.clean_questions:
        questions = [clean_question(q) for q in questions]
    return generate_texts(_captioner(args), image_paths, [args.prompt.format(q) for q in questions], args.batch_size)


def _scored(args, given: str, evaluated) -> str:
    """The annotations file `given`; with --limit, `evaluated()` (the evaluated part) written to DIR."""
    return _write_json(args.out, "annotations_subset.json", evaluated()) if args.limit else given


def run_vqa(args) -> None:
    from xformer_jax.eval.score import score
    entries = _load(args.questions, "--questions")
    _require(entries, ("question_id", "question", "image"), args.questions)
    entries = entries[: args.limit or None]
    answers = _answers(args, [e["question"] for e in entries], [_image(args, e["image"])
                                                                 for e in entries])
    predictions = [{"question_id": e["question_id"], "answer": a} for e, a in zip(entries, answers)]
    path = _write_json(args.out, "predictions.json", predictions)

    def evaluated():
        data, ids = _load(args.annotations, "--annotations"), {p["question_id"] for p in predictions}
        return {**data, "annotations": [a for a in data["annotations"] if a["question_id"] in ids]}
    _write_scores(args.out, score(args.task, path, _scored(args, args.annotations, evaluated)))


def run_gqa(args) -> None:
    from xformer_jax.eval.score import score
    questions = _load(args.questions, "--questions")
    if not isinstance(questions, dict):
        raise SystemExit(f"{args.questions}: expected GQA's questions JSON, an object mapping question ids to "
                         "questions")
    for question_id, question in questions.items():
        missing = [k for k in ("imageId", "question") if not isinstance(question, dict) or k not in question]
        if missing:
            raise SystemExit(f"{args.questions}: question {question_id!r} has no {missing[0]!r}")
    ids = list(questions)[: args.limit or None]
    answers = _answers(args, [questions[i]["question"] for i in ids],
                       [_image(args, args.image_pattern.format(questions[i]["imageId"]))
                        for i in ids])
    path = _write_json(args.out, "predictions.json",
                       [{"questionId": i, "prediction": a} for i, a in zip(ids, answers)])
    _write_scores(args.out, score("gqa", path, _scored(args, args.questions, lambda: {i: questions[i] for i in ids})))


def run_count(args) -> None:
    from xformer_jax.eval.score import score
    entries = _load(args.questions, "--questions")
    _require(entries, ("question_id", "question", "image", "count"), args.questions)
    entries = entries[: args.limit or None]
    answers = _answers(args, [e["question"] for e in entries], [_image(args, e["image"])
                                                                 for e in entries])
    path = _write_json(args.out, "predictions.json",
                       [{"question_id": e["question_id"], "answer": a} for e, a in zip(entries, answers)])
    _write_scores(args.out, score("gvt_count", path, _scored(args, args.questions, lambda: entries)))


def run_caption(args) -> None:
    from xformer_jax.eval.score import score
    from xformer_jax.predict.captions import caption_predictions
    entries = _load(args.images, "--images")
    _require(entries, ("image", "image_id"), args.images)
    predictions = caption_predictions(_captioner(args), entries, args.image_root, args.batch_size)
    path = _write_json(args.out, "predictions.json", predictions)
    _write_scores(args.out, score("coco_caption", path, args.annotations))


def run_retrieval(args) -> None:
    import numpy as np

    from xformer_jax.predict.rankings import Retriever, rank_captions
    entries = _load(args.images, "--images")
    _require(entries, ("image", "caption"), args.images)
    rankings = rank_captions(Retriever.from_workdir(args.workdir), entries, args.image_root, args.batch_size,
                             args.k_test)
    top = lambda scores: np.argsort(-scores, axis=1, kind="stable")[:, :_TOP_RANKED].tolist()  # noqa: E731
    _write_json(args.out, "rankings.json", {"images": [e["image"] for e in entries], "texts": rankings.texts,
                                            "i2t": top(rankings.scores_i2t), "t2i": top(rankings.scores_t2i)})
    _write_scores(args.out, {"task": "retrieval", **rankings.recall(), "k_test": args.k_test,
                             "num_images": len(entries), "num_texts": len(rankings.texts)})


def _parser() -> script_args.ArgumentParser:
    parser = script_args.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    score_cmd = commands.add_parser("score", help="score an existing predictions file")
    score_cmd.add_argument("--task", required=True)
    score_cmd.add_argument("--predictions", required=True)
    score_cmd.add_argument("--annotations", required=True)
    score_cmd.add_argument("--questions", default=None)
    for name in (*QUESTION_MODES, "caption", "retrieval"):
        cmd = commands.add_parser(name, help=f"run a trained model ({name}) and score it")
        cmd.add_argument("--workdir", required=True)
        cmd.add_argument("--image_root", required=True)
        cmd.add_argument("--out", required=True)
        cmd.add_argument("--batch_size", type=int, default=16)
        if name == "retrieval":
            cmd.add_argument("--images", required=True, help="LAVIS caption file, one entry per image")
            cmd.add_argument("--k_test", type=int, default=128, help="candidates per query ITM re-ranks (0: ITC only)")
            continue
        cmd.add_argument("--num_beams", type=int, default=5)
        cmd.add_argument("--max_new_tokens", type=int, default=30 if name == "caption" else 10)
        cmd.add_argument("--min_new_tokens", type=int, default=8 if name == "caption" else 1)  # LAVIS min_len
        cmd.add_argument("--length_penalty", type=float, default=1.0 if name == "caption" else 0.0)
        if name == "caption":
            cmd.add_argument("--images", required=True, help="LAVIS-format caption file (image, image_id)")
            cmd.add_argument("--annotations", required=True, help="COCO caption ground truth")
            continue
        cmd.add_argument("--questions", required=True, help="the questions file (see above)")
        cmd.add_argument("--prompt", default="Question: {} Short answer:")
        cmd.add_argument("--clean_questions", action=argparse.BooleanOptionalAction, default=True,
                         help="LAVIS's question cleaning (BlipQuestionProcessor) before the prompt")
        cmd.add_argument("--limit", type=int, default=0, help="evaluate the first N questions only")
        if name == "vqa":
            cmd.add_argument("--annotations", required=True, help="official VQAv2 / OK-VQA annotations")
            cmd.add_argument("--task", default="vqav2", choices=("vqav2", "okvqa"))
        elif name == "gqa":
            cmd.add_argument("--image_pattern", default="{}.jpg", help="image file of an imageId under --image_root")
    return parser


RUNS = {"vqa": run_vqa, "gqa": run_gqa, "count": run_count, "caption": run_caption, "retrieval": run_retrieval}


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        if args.command != "score":  # the run first: nothing is read or built for a run that is not there
            from xformer_jax import rundir
            rundir.check_run(args.workdir, "--workdir", None if args.command == "retrieval" else "stage2")
        if args.command == "score":
            from xformer_jax.eval.score import score
            print(json.dumps(score(args.task, args.predictions, args.annotations, args.questions)))
        else:
            RUNS[args.command](args)
    except (ValueError, FileNotFoundError) as e:  # bad input files, a run of the wrong stage
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
