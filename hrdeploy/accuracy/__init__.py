"""The eval stage: COCO keypoint AP of every artifact of a bundle on annotated people (`hrdeploy eval`)."""
