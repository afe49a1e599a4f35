"""Hugging Face checkpoints -> what training and evaluation start from.

  launch/convert.py --hf=HF_DIR --out=OUT
A whole BLIP-2 directory (Blip2ForConditionalGeneration with an OPT / LLaMA language model, or
Blip2ForImageTextRetrieval) becomes a workdir: OUT/config.json describing the model and an orbax
checkpoint at step 0 under OUT/checkpoints (plus the LLM's tokenizer.json when HF_DIR has one). Then:
  launch/generate.py --workdir=OUT --images=a.jpg                     # captions (stage 2)
  launch/evaluate.py vqa --workdir=OUT ...                            # evaluation (stage 2)
  launch/train.py --config=... --config.init_from=OUT                 # training starts from its weights
A component directory (CLIPVisionModel / CLIPModel / Blip2VisionModel, ViTMAEForPreTraining,
OPTForCausalLM / LlamaForCausalLM) becomes OUT/<part>.msgpack; the config keys to set (its
params_file and the architecture fields it must match) are printed. BERT directories need no
conversion: set config.model.qformer.bert_dir (printed too).
"""
import os

import script_args  # launch/script_args.py, beside this script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # conversion computes nothing worth an accelerator


def main(argv=None):
    parser = script_args.ArgumentParser(description=__doc__)
    parser.add_argument("--hf", required=True, help="a transformers save_pretrained directory")
    parser.add_argument("--out", required=True,
                        help="the workdir (whole BLIP-2 models) or folder (components) to write")
    parser.add_argument("--overwrite", action="store_true", help="replace the checkpoints of an existing workdir")
    args = parser.parse_args(argv)

    from xformer_jax.configs import common
    from xformer_jax.convert import CheckpointMismatch
    from xformer_jax.convert import to_run
    try:
        report = to_run.convert(args.hf, args.out, base_config=common.base_config(), overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointMismatch) as e:
        raise SystemExit(f"launch/convert.py: {e}") from None
    print(report)
    if report.stage == "stage2":
        print(f"captions: launch/generate.py --workdir={report.out} --images=IMAGE")
    if report.stage:
        print(f"train from it: launch/train.py --config=CONFIG --config.init_from={report.out}")
    return report


if __name__ == "__main__":
    main()
