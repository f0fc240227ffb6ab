"""FCN-8s's training recipe (Long et al. 2015, section 4.3)."""

RECIPE = {
    "optimizer": "sgd",
    "lr": 1e-4,
    "momentum": 0.99,
    "weight_decay": 5e-4,
    "batch": 1,
    "class_weighting": "none",
    "weight_map": False,
    "elastic": False,
}
