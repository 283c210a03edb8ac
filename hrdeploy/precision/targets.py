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
# Without annotations the tuning crops are the people the fp32 model itself finds: the clearer, larger people of
# each photo, on which any INT8 agrees with fp32 more closely than on annotated boxes. The bar on them is the
# agreement that the annotated search's chosen INT8 (AP drop within DEFAULT_MAX_AP_DROP on coco-train tuning
# people) reaches on the found crops of the same coco-train photos ("found OKS" in benchmarks/RESULTS.md).
DEFAULT_MIN_OKS_FOUND = 0.992


def default_min_oks(annotated: bool) -> float:
    """The search's keypoint-agreement bar: on annotated people, or on the crops the fp32 model finds."""
    return DEFAULT_MIN_OKS if annotated else DEFAULT_MIN_OKS_FOUND
