"""Evaluation: test replies scored with the task reward, statistics, plots."""
