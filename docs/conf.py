"""Sphinx configuration of shovel's documentation site (`make docs`)."""

project = "shovel"
author = "the shovel developers"

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
# demo-results.md is written by `make demo-docs` and included by demo.md, not a page of its own.
exclude_patterns = ["_build", "demo-results.md"]

# Anchors for headings down to ####, so that links to `page.md#section` are checked
# (deploy/README.md's sections land at ### on deployment.md).
myst_heading_anchors = 4

html_theme = "furo"
html_title = "shovel"
