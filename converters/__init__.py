"""Export of edgeseg models to deployable formats (installed as ``edgeseg.converters``)."""
