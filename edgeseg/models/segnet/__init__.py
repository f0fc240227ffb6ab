"""SegNet (Badrinarayanan et al. 2017): VGG16 encoder, decoder upsampling with pooling indices."""
