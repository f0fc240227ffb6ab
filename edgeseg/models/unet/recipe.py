"""U-Net's training recipe (Ronneberger et al. 2015, section 3)."""

RECIPE = {
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.99,  # "a high momentum (0.99)", batch of one large tile
    "weight_decay": 0.0,
    "batch": 1,
    "class_weighting": "median",  # w_c balances the class frequencies
    "weight_map": True,  # w0 = 10, sigma = 5 px border term
    "elastic": True,  # 3x3 grid, 10 px standard deviation
}
