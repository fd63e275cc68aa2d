"""Private implementation of simvue-otel; import from :mod:`simvue_otel` instead."""
