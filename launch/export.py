"""Export a checkpoint to PyTorch: config.json + safetensors with transformers' names and layouts.

  launch/export.py --workdir=WORKDIR --out=OUT                 # the workdir's newest checkpoint
  launch/export.py --checkpoint=WORKDIR/checkpoints/2000 --out=OUT --dtype=bfloat16 --max_shard_size=2GB
Formats (--format): "hf" writes the blip2 variant with an EVA tower as transformers' own
Blip2ForConditionalGeneration (stage 2; with image_token_index, num_query_tokens and
generation_config.json) or Blip2ForImageTextRetrieval (stage 1); "xformer" writes every variant (the
same names plus the fusion and MAE weights) for xformer_jax.torch:
  from xformer_jax.torch import from_pretrained
  model = from_pretrained(OUT)           # model.generate(pixel_values, input_ids, mae_pixel_values=...)
"auto" (default) picks hf whenever the model can be written that way. Prints what it wrote.
"""
import os

import script_args  # launch/script_args.py, beside this script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # reading a checkpoint needs no accelerator


def main(argv=None):
    parser = script_args.ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="one checkpoint: WORKDIR/checkpoints/STEP (or a checkpoints/ folder)")
    source.add_argument("--workdir", help="a run directory: its newest checkpoint is exported")
    parser.add_argument("--out", required=True, help="the directory to write")
    parser.add_argument("--format", default="auto", help="auto | hf | xformer")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16")
    parser.add_argument("--max_shard_size", default="5GB", help="larger checkpoints are sharded (index json)")
    args = parser.parse_args(argv)

    from xformer_jax.convert import CheckpointMismatch
    from xformer_jax import rundir
    from xformer_jax.convert import to_hf
    try:
        rundir.check_run(args.checkpoint or args.workdir, "--checkpoint" if args.checkpoint else "--workdir")
        report = to_hf.export(args.checkpoint or args.workdir, args.out, export_format=args.format, dtype=args.dtype,
                               max_shard_size=args.max_shard_size)
    except (ValueError, FileNotFoundError, CheckpointMismatch) as e:
        raise SystemExit(f"launch/export.py: {e}") from None
    print(report)
    return report


if __name__ == "__main__":
    main()
