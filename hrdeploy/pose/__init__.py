"""Pose pre/post-processing shared by `hrdeploy infer` and `hrdeploy validate`.

preprocess  read images, mmpose top-down affine crop (1.25 padding) / letterbox, normalisation
samples     scikit-image's bundled photos as PNGs (default calibration / validation images)
decode      heatmap argmax, quarter-pixel shift, DARK, flip test (mmpose top_down_eval.py)
bottomup    HigherHRNet aggregation, heatmap NMS and associative-embedding grouping (group.py)
pipeline    image -> people through any Runner; PoseConfig from a manifest, ONNX metadata or ModelSpec
draw        skeleton drawing (COCO / MPII) with Pillow
"""
