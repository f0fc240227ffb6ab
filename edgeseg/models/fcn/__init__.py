"""FCN-8s (Long, Shelhamer, Darrell 2015): fully convolutional VGG16 with skip fusion."""
