"""Offline analysis of a sweep folder: trial and history dataframes, figures, reports."""
