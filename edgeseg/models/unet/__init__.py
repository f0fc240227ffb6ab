"""U-Net (Ronneberger et al. 2015): the paper's network and small edge variants."""
