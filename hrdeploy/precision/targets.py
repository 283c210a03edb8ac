"""Targets of the INT8 accuracy search (hrdeploy.precision.search), kept free of heavy imports for the CLI."""

MIN_TUNING_PEOPLE = 20
DEFAULT_TUNE_SHARE = 0.5
DEFAULT_SEED = 0
DEFAULT_MAX_AP_DROP = 0.5
# Every point the search keeps must agree with fp32's keypoints on the tuning people at this mean OKS (with
# annotations, besides the AP drop: ~100 tuning people measure AP to about +-1 point, keypoint agreement far
# closer). On the trained PP-TinyPose network's coco-train tuning people, INT8 variants at OKS 0.978-0.983
# lost 0.4 to 2.6 AP and one at 0.988 lost 0.2 (benchmarks/RESULTS.md, INT8 search section).
DEFAULT_MIN_OKS = 0.985
