"""Evidence scripts for sb3_gmm: ``cases`` (mixtures and their ground truth, shared with the tests), ``_report``
(provenance and the generated blocks of the docs) and one module per benchmark, each split into run, summarise and
render steps (``python -m benchmarks.<name> --help``)."""
