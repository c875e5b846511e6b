"""The quickstart's demo: a two-domain image set drawn by the project (data) and the score that measures a trained
generator on it with what the drawer knows (score). Used by main.py, the tests and scripts; the method never
imports it.
"""
