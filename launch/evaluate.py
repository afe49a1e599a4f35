"""Evaluate a trained run on a benchmark's files as published, or score an existing predictions file.

  launch/evaluate.py vqa --workdir=W --questions=v2_OpenEnded_mscoco_val2014_questions.json --image_root=COCO \\
      --annotations=v2_mscoco_val2014_annotations.json --out=DIR      # zero-shot VQAv2 (--task=okvqa: OK-VQA)
  launch/evaluate.py vqa --workdir=W --questions=v2_OpenEnded_mscoco_test-dev2015_questions.json \\
      --image_root=COCO --out=DIR                                     # test-dev: the submission file only
  launch/evaluate.py gqa --workdir=W --questions=testdev_balanced_questions.json --image_root=GQA/images --out=DIR
  launch/evaluate.py count --workdir=W --questions=COUNT.json --image_root=R --out=DIR   # GVTBench-style counting
  launch/evaluate.py caption --workdir=W --images=coco_karpathy_test.json --image_root=COCO \\
      [--annotations=coco_karpathy_test_gt.json] --out=DIR            # COCO captioning (Karpathy test)
  launch/evaluate.py retrieval --workdir=W --images=flickr30k_test.json --image_root=FLICKR --out=DIR \\
      [--k_test=128]                                                  # image-text retrieval of a stage-1 run
  launch/evaluate.py score --task=vqav2|okvqa|gqa|coco_caption|gvt_count --predictions=P --annotations=A \\
      [--questions=Q]

Inputs are read as their publishers ship them (`xformer_jax/predict/benchmarks.py` says which layouts): the
official VQAv2 / OK-VQA questions and annotations files (COCO images found under --image_root as
<subset>/COCO_<subset>_<id>.jpg, or --image_pattern) or LAVIS's question lists; GQA's balanced question
files (images --image_root/<imageId>.jpg, or --image_pattern); COCO Karpathy caption splits as LAVIS ships
them or in the COCO captions format; Flickr30k / COCO retrieval splits as LAVIS ships them. Every mode
writes DIR/predictions.json in the benchmark's official submission format (VQAv2: [{"question_id",
"answer"}]; GQA: [{"questionId", "prediction"}]; captions: [{"image_id", "caption"}]) and, when the answers
are given (--annotations; GQA's and the counting file's own answers; a caption file's own captions), scores
it as the official tools do, writes DIR/scores.json and prints the scores as one JSON object (accuracy /
CIDEr / recall in percent); without answers it predicts only and prints where the submission file is.

The question modes run a stage-2 run with BLIP-2's zero-shot settings (LAVIS's blip2 VQA / GQA eval configs
and blip2_opt.predict_answers): questions cleaned as LAVIS's question processor does (lowercase, its
punctuation dropped; --no-clean_questions keeps them as written), the prompt "Question: {} Short answer:",
beam search with 5 beams, 1 to 10 new tokens, length penalty 0. `caption` uses LAVIS's COCO caption eval
settings: beam 5, 8 to 30 new tokens, the "a photo of" prompt. OK-VQA (`vqa --task=okvqa`) lemmatises the
predicted answers before scoring, as BLIP-2 does. `retrieval`: R@1/5/10 both ways from ITC with ITM
re-ranking of each query's top --k_test (LAVIS compute_sim_matrix), the ITC-only recall under "itc", and
DIR/rankings.json with every query's top 10. The synthetic benchmark ships every one of these files
(`xformer_jax.data.synthetic`; its GQA images: --image_root=DATA/images/SPLIT --image_pattern={}.png).
"""
import argparse
import json
import os

import script_args  # launch/script_args.py, beside this script

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from xformer_jax import storage  # noqa: E402

QUESTION_MODES = ("vqa", "gqa", "count")
_TOP_RANKED = 10  # candidates per query written to rankings.json


def _captioner(args):
    """The stage-2 run of --workdir with the decoding settings of the flags."""
    from xformer_jax.predict.captions import Captioner
    return Captioner.from_workdir(args.workdir, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                                  min_new_tokens=args.min_new_tokens, length_penalty=args.length_penalty)


def _limited(args, questions, annotations_for):
    """The first --limit questions, and (when answers are given) an answers file cut to them in DIR."""
    if not args.limit:
        return questions, None
    questions = questions[:args.limit]
    return questions, annotations_for({q.question_id for q in questions})


def run_vqa(args) -> dict:
    from xformer_jax.predict import benchmarks
    questions = benchmarks.read_vqa(args.questions, args.image_root, args.image_pattern)

    def cut(ids):
        data = storage.read_json(args.annotations)
        return storage.write_json(storage.join(args.out, "annotations_subset.json"),
                                  {**data, "annotations": [a for a in data["annotations"] if a["question_id"] in ids]})
    questions, subset = _limited(args, questions, cut if args.annotations else lambda ids: None)
    return benchmarks.answer_questions(_captioner(args), questions, args.out, args.batch_size, task=args.task,
                                       annotations=subset or args.annotations, prompt=args.prompt,
                                       clean=args.clean_questions)


def run_gqa(args) -> dict:
    from xformer_jax.predict import benchmarks
    questions, answered = benchmarks.read_gqa(args.questions, args.image_root, args.image_pattern or "{}.jpg")

    def cut(ids):
        data = storage.read_json(args.questions)
        return storage.write_json(storage.join(args.out, "annotations_subset.json"), {i: data[i] for i in ids})
    questions, subset = _limited(args, questions, cut)
    return benchmarks.answer_questions(_captioner(args), questions, args.out, args.batch_size, task="gqa",
                                       annotations=(subset or args.questions) if answered else "",
                                       prompt=args.prompt, clean=args.clean_questions)


def run_count(args) -> dict:
    from xformer_jax.predict import benchmarks
    questions = benchmarks.read_count(args.questions, args.image_root)

    def cut(ids):
        return storage.write_json(storage.join(args.out, "annotations_subset.json"),
                                  [e for e in storage.read_json(args.questions) if e["question_id"] in ids])
    questions, subset = _limited(args, questions, cut)
    return benchmarks.answer_questions(_captioner(args), questions, args.out, args.batch_size, task="gvt_count",
                                       annotations=subset or args.questions, prompt=args.prompt,
                                       clean=args.clean_questions)


def run_caption(args) -> dict:
    from xformer_jax.predict import benchmarks
    images, ground_truth = benchmarks.read_captions(args.images, args.image_root)
    return benchmarks.caption(_captioner(args), images, args.out, args.batch_size, annotations=args.annotations,
                              ground_truth=ground_truth)


def run_retrieval(args) -> dict:
    import numpy as np

    from xformer_jax.predict import benchmarks
    from xformer_jax.predict.rankings import Retriever, rank_captions
    entries = benchmarks.read_retrieval(args.images)
    rankings = rank_captions(Retriever.from_workdir(args.workdir), entries, args.image_root, args.batch_size,
                             args.k_test)
    top = lambda scores: np.argsort(-scores, axis=1, kind="stable")[:, :_TOP_RANKED].tolist()  # noqa: E731
    storage.write_json(storage.join(args.out, "rankings.json"),
                       {"images": [e["image"] for e in entries], "texts": rankings.texts,
                        "i2t": top(rankings.scores_i2t), "t2i": top(rankings.scores_t2i)})
    scores = {"task": "retrieval", **rankings.recall(), "k_test": args.k_test, "num_images": len(entries),
              "num_texts": len(rankings.texts)}
    storage.write_json(storage.join(args.out, "scores.json"), scores, indent=2)
    return scores


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
            cmd.add_argument("--images", required=True, help="LAVIS retrieval split, one entry per image")
            cmd.add_argument("--k_test", type=int, default=128, help="candidates per query ITM re-ranks (0: ITC only)")
            continue
        cmd.add_argument("--num_beams", type=int, default=5)
        cmd.add_argument("--max_new_tokens", type=int, default=30 if name == "caption" else 10)
        cmd.add_argument("--min_new_tokens", type=int, default=8 if name == "caption" else 1)  # LAVIS min_len
        cmd.add_argument("--length_penalty", type=float, default=1.0 if name == "caption" else 0.0)
        if name == "caption":
            cmd.add_argument("--images", required=True, help="a LAVIS caption split or a COCO captions file")
            cmd.add_argument("--annotations", default="", help="COCO caption ground truth (default: the captions "
                             "--images carries, if any)")
            continue
        cmd.add_argument("--questions", required=True, help="the questions file (see above)")
        cmd.add_argument("--prompt", default="Question: {} Short answer:")
        cmd.add_argument("--clean_questions", action=argparse.BooleanOptionalAction, default=True,
                         help="LAVIS's question cleaning (BlipQuestionProcessor) before the prompt")
        cmd.add_argument("--limit", type=int, default=0, help="evaluate the first N questions only")
        if name in ("vqa", "gqa"):
            cmd.add_argument("--image_pattern", default="", help="the image file of an image id under --image_root "
                             "(vqa default: COCO's <subset>/COCO_<subset>_{:012d}.jpg; gqa: {}.jpg)")
        if name == "vqa":
            cmd.add_argument("--annotations", default="", help="official VQAv2 / OK-VQA annotations (none: "
                             "predict only)")
            cmd.add_argument("--task", default="vqav2", choices=("vqav2", "okvqa"))
    return parser


RUNS = {"vqa": run_vqa, "gqa": run_gqa, "count": run_count, "caption": run_caption, "retrieval": run_retrieval}


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        if args.command == "score":
            from xformer_jax.eval.score import score
            print(json.dumps(score(args.task, args.predictions, args.annotations, args.questions)))
            return
        # The run and the input files first: nothing is built for a run or a file that is not there.
        from xformer_jax import rundir
        rundir.check_run(args.workdir, "--workdir", None if args.command == "retrieval" else "stage2")
        for flag in ("questions", "images", "annotations"):
            path = getattr(args, flag, "")
            if path:
                storage.check_bucket(path, f"--{flag}")
                if not storage.isfile(path):
                    raise ValueError(f"--{flag}: {path} not found")
        storage.check_bucket(args.out, "--out")
        print(json.dumps(RUNS[args.command](args)))
    except (ValueError, FileNotFoundError) as e:  # bad input files, a run of the wrong stage
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
