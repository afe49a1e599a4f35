"""Evaluate a stage-2 run, or score an existing predictions file, as the official tools do.

  launch/evaluate.py vqa --workdir=W --questions=LAVIS_Q.json --image_root=R --annotations=A.json \\
      --official_questions=Q.json --out=DIR        # zero-shot VQA, "Question: {} Short answer:"
  launch/evaluate.py caption --workdir=W --images=LAVIS_CAPTIONS.json --image_root=R --annotations=GT.json \\
      --out=DIR                                    # captioning with the prompt "a photo of"
  launch/evaluate.py score --task=vqav2|okvqa|gqa|coco_caption|gvt_count --predictions=P --annotations=A \\
      [--questions=Q]
`vqa` / `caption` write DIR/predictions.json in the official result format and DIR/scores.json, and
print the scores as one JSON object (accuracy / CIDEr in percent). LAVIS-format inputs are lists of
{"question_id", "question", "image"} (VQA) or {"image", "image_id"} (captions), image paths relative
to --image_root. The synthetic benchmark ships all of these (`xformer_jax.data.synthetic`).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _load(path: str, flag: str):
    if not os.path.isfile(path):
        raise SystemExit(f"{flag}: {path} not found")
    with open(path) as f:
        return json.load(f)


def _images(entries, image_root: str):
    from PIL import Image
    return [Image.open(os.path.join(image_root, e["image"])).convert("RGB") for e in entries]


def _batches(entries, size: int):
    for start in range(0, len(entries), size):
        yield entries[start:start + size]


def _write_predictions(out: str, predictions: list) -> str:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "predictions.json")
    with open(path, "w") as f:
        json.dump(predictions, f)
    return path


def _write_scores(out: str, scores: dict) -> None:
    with open(os.path.join(out, "scores.json"), "w") as f:
        json.dump(scores, f, indent=2)
    print(json.dumps(scores))


def run_vqa(args) -> None:
    from xformer_jax.eval.score import score
    from xformer_jax.inference import Captioner
    entries = _load(args.questions, "--questions")[: args.limit or None]
    captioner = Captioner.from_workdir(args.workdir, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    predictions = []
    for batch in _batches(entries, args.batch_size):
        answers = captioner.vqa(_images(batch, args.image_root), [e["question"] for e in batch])
        predictions += [{"question_id": e["question_id"], "answer": a} for e, a in zip(batch, answers)]
    path = _write_predictions(args.out, predictions)
    annotations = _subset_annotations(args, {p["question_id"] for p in predictions})
    _write_scores(args.out, score(args.task, path, annotations))


def _subset_annotations(args, ids: set) -> str:
    """With --limit, score against the annotations of the evaluated questions only."""
    if not args.limit:
        return args.annotations
    data = _load(args.annotations, "--annotations")
    data = {**data, "annotations": [a for a in data["annotations"] if a["question_id"] in ids]}
    path = os.path.join(args.out, "annotations_subset.json")
    os.makedirs(args.out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def run_caption(args) -> None:
    from xformer_jax.eval.score import score
    from xformer_jax.inference import Captioner
    entries = _load(args.images, "--images")
    captioner = Captioner.from_workdir(args.workdir, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    predictions = []
    for batch in _batches(entries, args.batch_size):
        captions = captioner.caption(_images(batch, args.image_root))
        predictions += [{"image_id": int(e["image_id"]), "caption": c} for e, c in zip(batch, captions)]
    path = _write_predictions(args.out, predictions)
    _write_scores(args.out, score("coco_caption", path, args.annotations))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    score_cmd = commands.add_parser("score", help="score an existing predictions file")
    score_cmd.add_argument("--task", required=True)
    score_cmd.add_argument("--predictions", required=True)
    score_cmd.add_argument("--annotations", required=True)
    score_cmd.add_argument("--questions", default=None)
    for name in ("vqa", "caption"):
        cmd = commands.add_parser(name, help=f"run a stage-2 model ({name}) and score it")
        cmd.add_argument("--workdir", required=True)
        cmd.add_argument("--image_root", required=True)
        cmd.add_argument("--annotations", required=True, help="official annotations / COCO ground truth")
        cmd.add_argument("--out", required=True)
        cmd.add_argument("--batch_size", type=int, default=16)
        cmd.add_argument("--num_beams", type=int, default=5)
        cmd.add_argument("--max_new_tokens", type=int, default=10 if name == "vqa" else 30)
        if name == "vqa":
            cmd.add_argument("--questions", required=True, help="LAVIS-format questions with image paths")
            cmd.add_argument("--task", default="vqav2", choices=("vqav2", "okvqa"))
            cmd.add_argument("--limit", type=int, default=0, help="evaluate the first N questions only")
        else:
            cmd.add_argument("--images", required=True, help="LAVIS-format caption file (image, image_id)")
    args = parser.parse_args()
    if args.command == "score":
        from xformer_jax.eval.score import score
        try:
            print(json.dumps(score(args.task, args.predictions, args.annotations, args.questions)))
        except ValueError as e:
            raise SystemExit(str(e)) from None
    elif args.command == "vqa":
        run_vqa(args)
    else:
        run_caption(args)


if __name__ == "__main__":
    main()
