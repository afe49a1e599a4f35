"""Caption image files, or answer a question about them, with a trained stage-2 run.

  launch/generate.py --workdir=workdir/stage2 --images=a.png,b.jpg
  launch/generate.py --workdir=workdir/stage2 --images=a.png --question="how many circles are there?"
Prints one JSON object per image. Decoding: beam search (BLIP-2: 5 beams), stopped at "\\n".
"""
import json
import os

import script_args  # launch/script_args.py, beside this script

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None):
    parser = script_args.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", required=True, help="a stage-2 directory written by launch/train.py")
    parser.add_argument("--images", required=True, help="comma-separated image files")
    parser.add_argument("--question", default=None, help="answer this question instead of captioning")
    parser.add_argument("--num_beams", type=int, default=5)
    parser.add_argument("--max_new_tokens", type=int, default=20)
    args = parser.parse_args(argv)

    from xformer_jax import rundir
    from xformer_jax.predict import inputs
    from xformer_jax.predict.captions import Captioner
    paths = [p for p in args.images.split(",") if p]
    try:
        rundir.check_run(args.workdir, "--workdir", "stage2")
    except ValueError as e:
        parser.error(str(e))
    try:
        images = inputs.load_images(paths)
    except (FileNotFoundError, ValueError) as e:
        parser.error(f"--images: {e}")
    captioner = Captioner.from_workdir(args.workdir, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    if args.question:
        outputs = captioner.vqa(images, [args.question] * len(images))
        key = "answer"
    else:
        outputs = captioner.caption(images)
        key = "caption"
    for path, text in zip(paths, outputs):
        print(json.dumps({"image": path, key: text, **({"question": args.question} if args.question else {})}))


if __name__ == "__main__":
    main()
