"""Runnable pipelines, their options, and the ``sealbeam`` command line."""
