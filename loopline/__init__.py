"""Loopline: the closed data -> model -> business loop of a CTR recommender, free of Airflow."""

__version__ = "0.1.0"
