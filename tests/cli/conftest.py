import os
import stat

import pytest


@pytest.fixture(autouse=True)
def dev_null_stays_a_device():
    """No CLI test may turn the machine's /dev/null into a regular file (an output written
    by renaming a temporary file onto `-o /dev/null` did)."""
    yield
    mode = os.stat(os.devnull).st_mode
    assert stat.S_ISCHR(mode), f"{os.devnull} is no longer a character device"
