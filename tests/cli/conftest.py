import os
import stat

import pytest

DEVICES = (os.devnull, "/dev/full")  # the devices CLI tests write to


@pytest.fixture(autouse=True)
def devices_stay_devices():
    """No CLI test may turn the machine's /dev/null or /dev/full into a regular file, or
    replace /dev/stdout (an output written by renaming a temporary file onto `-o /dev/null`
    did)."""
    yield
    for dev in DEVICES:
        assert stat.S_ISCHR(os.stat(dev).st_mode), f"{dev} is no longer a character device"
    assert os.path.islink("/dev/stdout"), "/dev/stdout is no longer a symbolic link"
