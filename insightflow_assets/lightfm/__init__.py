"""LightFM hybrid (`lightfm_model`): customers × products with product and customer features."""
