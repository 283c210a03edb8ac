"""One comparator and one tolerance table for every stage (export, quantize, validate, eval).

hrdeploy.parity.comparator runs runners on a loader's batches (hrdeploy.parity.loaders) and applies compare
functions; hrdeploy.parity.tolerances holds the table, hrdeploy.parity.compare the metrics and the verdict,
hrdeploy.parity.pose the keypoint check, hrdeploy.parity.coco COCO keypoint AP with pycocotools,
hrdeploy.parity.crops the person crops.
"""
