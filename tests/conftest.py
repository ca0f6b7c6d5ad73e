"""Session set-up shared by every test file."""

import os
import tempfile

# The prepared run set (cpcl_kit.prepared) lives in the user's cache; a test never reads the
# user's set, so every test process (and the notebook kernels it starts) points at an empty folder.
os.environ["CPCL_KIT_PREPARED"] = tempfile.mkdtemp(prefix="cpcl-prepared-test-")
