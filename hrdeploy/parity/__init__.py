"""One comparator and one tolerance table for every stage (export, quantize, validate, eval).

hrdeploy.parity.tolerances holds the table, hrdeploy.parity.compare the metrics and the verdict,
hrdeploy.parity.coco COCO keypoint AP with pycocotools, hrdeploy.parity.crops the person crops.
"""
