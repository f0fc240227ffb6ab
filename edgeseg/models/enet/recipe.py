"""ENet's training recipe (Paszke et al. 2016, section 5.1; ANCHORS.md)."""

RECIPE = {
    "optimizer": "adam",
    "lr": 5e-4,
    "weight_decay": 2e-4,
    "batch": 10,
    "class_weighting": "enet",  # 1 / ln(1.02 + p)
    "weight_map": False,
    "elastic": False,
}
