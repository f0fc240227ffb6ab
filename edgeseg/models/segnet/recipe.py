"""SegNet's training recipe (Badrinarayanan et al. 2017, section 4.1)."""

RECIPE = {
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "batch": 12,
    "class_weighting": "median",  # median frequency balancing
    "weight_map": False,
    "elastic": False,
}
