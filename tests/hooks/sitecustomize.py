"""Run at the start of every Python process the tests start (conftest puts this folder on
PYTHONPATH): with QUICK_PICTURES set, the run's figures are placeholders (quick_pictures)."""
import os
import sys

if os.environ.get("QUICK_PICTURES"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        import quick_pictures
        quick_pictures.install()
    finally:
        sys.path.pop(0)  # (the tests' own modules stay out of the run's way)
