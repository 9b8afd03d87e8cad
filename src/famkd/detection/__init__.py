"""Object detection on MS-COCO, the paper's detection experiments (Faster R-CNN FPN teachers and students).

Submodules are imported by name (e.g. `famkd.detection.detectron2_import`); this package imports
nothing itself, so that `import famkd.detection` stays light.
"""
