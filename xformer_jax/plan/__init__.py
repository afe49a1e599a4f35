"""Planning a run before renting it, and seeing where a step's time goes.

  chips     published specs of the TPU / GPU targets, roofline
  targets   deviceless TPU slices and GPU hosts to compile for
  flops     THE FLOP count of a step: matmul FLOPs of its jaxpr (MFU, plans, benchmarks/gpu_report.py)
  profile   a compiled step's per-op time from a trace, each op's FLOPs read from its HLO so that the time
            is attributed by op kind and pass (benchmarks/step_profile.py)
"""
