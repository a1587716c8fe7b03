"""The HTML reports: `run_page` (a run's page), `search_page` (a search's page), `markup` (the HTML and
plots both use), `eval_examples` (the final evaluation example by example), `write` (which page a folder gets).
"""
