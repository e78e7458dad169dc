"""The HTTP API over latest/ (README "Serving"): no assets here, so not a stage package."""
