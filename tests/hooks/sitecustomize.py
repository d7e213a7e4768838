"""Run at the start of every Python process the tests start (conftest puts this folder on
PYTHONPATH). With TEST_ZYGOTE set, a run of one of the repo's scripts is handed over to
the pytest process's zygote, which has imported torch already (tests/zygote.py); with
QUICK_PICTURES set, the run's figures are placeholders (quick_pictures)."""
import os
import sys

if os.environ.get("TEST_ZYGOTE") or os.environ.get("QUICK_PICTURES"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        if os.environ.get("TEST_ZYGOTE"):
            import zygote
            zygote.hand_over()  # (returns only if this process is to run on its own)
        if os.environ.get("QUICK_PICTURES"):
            import quick_pictures
            quick_pictures.install()
    finally:
        sys.path.pop(0)  # (the tests' own modules stay out of the run's way)
