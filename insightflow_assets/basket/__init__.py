"""Basket → complements: directional pairs (`basket_pairs`), the basket recommender, and `basket_eval`."""
