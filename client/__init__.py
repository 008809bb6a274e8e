"""Client CLI for people: `python run.py call VERB ...` (cli.py plus one verbs_*.py per family)."""
