"""The issue-5 experiments (see README.md): run each as `python -m experiments.<name>` from the repository root."""
