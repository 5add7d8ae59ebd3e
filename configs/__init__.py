"""The built-in study configs (docs/studies.md); pip installs this folder as the package `labjax.configs`.

Name one with `--config=configs/NAME.py[:ARG]` from a clone, or `--config=NAME[:ARG]` from
anywhere (labjax/config_files.py).
"""
